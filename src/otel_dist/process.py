"""Process life: a bounded flush at exit and on SIGTERM, even when the collector is down.

The SDK's own exit handlers can block for the exporter's full retry budget when the collector is
unreachable (opentelemetry-python #2284, #4813). We create the providers with
``shutdown_on_exit=False`` and shut them down here on a daemon thread that we wait for at most
``shutdown_timeout_s``; the SDK's batch threads are daemons, so the interpreter can then exit.
Forked workers (gunicorn) need nothing from us: the SDK's batch processors and periodic reader
re-create their threads in the child through ``os.register_at_fork``.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

_log = logging.getLogger("otel_dist.internal")


def run_bounded(work: Callable[[], Any], timeout_s: float, what: str) -> bool:
    """Run ``work`` on a daemon thread; give up waiting after ``timeout_s``. True if it ended."""
    thread = threading.Thread(target=work, name=f"otel-dist-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        _log.warning(
            "otel-dist: %s did not finish within %.1f s (collector unreachable?); "
            "unsent telemetry is dropped so the process can exit",
            what,
            timeout_s,
        )
        return False
    return True


class ExitHooks:
    """Registers the bounded shutdown at interpreter exit and, when nobody else does, SIGTERM."""

    def __init__(self, shutdown: Callable[[], Any], timeout_s: float) -> None:
        self._shutdown = shutdown
        self._timeout_s = timeout_s
        self._pid = os.getpid()
        self._done = False
        self._previous_sigterm: Any = None
        self._installed_sigterm = False

    def install(self) -> None:
        """Register the atexit hook and, in the main thread, a SIGTERM handler if none exists."""
        atexit.register(self.shutdown_once)
        if threading.current_thread() is not threading.main_thread():
            return
        current = signal.getsignal(signal.SIGTERM)
        # Servers (uvicorn, gunicorn) install their own graceful SIGTERM handling, and then exit
        # normally, which runs the atexit hook; we only handle SIGTERM where it would kill.
        if current in (signal.SIG_DFL, None):
            self._previous_sigterm = current
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed_sigterm = True

    def uninstall(self) -> None:
        """Undo ``install`` (used by ``Telemetry.shutdown`` and tests)."""
        atexit.unregister(self.shutdown_once)
        if self._installed_sigterm and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._installed_sigterm = False

    def shutdown_once(self) -> None:
        """Flush and shut down within the bound; later calls do nothing."""
        if self._done:
            return
        self._done = True
        run_bounded(self._shutdown, self._timeout_s, "shutdown")

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.shutdown_once()
        # Die of SIGTERM as the process would have without us (exit status 143 for the parent).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def refresh_identity_after_fork(providers: Iterable[Any]) -> None:
    """Give each forked child (gunicorn ``--preload`` workers) its own ``service.instance.id``.

    The SDK already re-creates its threads and merges process-dependent resource detectors after
    a fork through ``_update_resource``; we use the same hook so sibling workers never export
    colliding cumulative metric series.
    """
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

    from otel_dist.sdk import process_identity  # noqa: PLC0415

    targets = [p for p in providers if hasattr(p, "_update_resource")]

    def after_in_child() -> None:
        identity = Resource(process_identity())
        for provider in targets:
            try:
                provider._update_resource(identity)
            except Exception:  # pragma: no cover - defensive: never break a forked worker
                _log.exception("otel-dist: could not refresh the resource after fork")

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=after_in_child)
