"""Work that must end within a time bound, even while the interpreter exits.

Flush and shutdown run on a daemon thread the caller stops waiting for after the bound, so a
collector that hangs can delay a process's exit but never prevent it. Python 3.12 and later
refuse to start a thread once the interpreter is finalizing, which is when atexit hooks run, so
a process that installs exit hooks also starts an idle worker beforehand to take that work.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from otel_dist.internal_log import internal_logger

_log = internal_logger()


class _ExitWorker:
    """A daemon thread started before the interpreter exits, to run exit work on.

    Python 3.12 and later refuse to start a thread once the interpreter is finalizing, and
    atexit hooks run then; a thread started earlier goes on running. So each process that
    installs exit hooks starts this one beforehand (a forked child, which has none of its
    parent's threads, gets its own), and ``run_bounded`` hands it the work when a new thread is
    refused. It waits on a queue and costs nothing until then.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._fork_hook_registered = False

    def start(self) -> None:
        """Start the thread if this process has none yet (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._serve, name="otel-dist-exit", daemon=True)
            self._thread.start()
            if not self._fork_hook_registered and hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=self._start_in_child)
                self._fork_hook_registered = True

    def submit(self, work: Callable[[], Any]) -> threading.Event | None:
        """Queue ``work``; the event is set when it ends. None if the thread is not running."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                return None
            done = threading.Event()
            self._jobs.put((work, done))
            return done

    def _serve(self) -> None:
        while True:
            work, done = self._jobs.get()
            try:
                work()
            except Exception:
                _log.exception("otel-dist: exit work failed")
            finally:
                done.set()

    def _start_in_child(self) -> None:
        # The parent's thread, queue and lock (possibly held at the fork) are not the child's.
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = None
        self.start()


exit_worker = _ExitWorker()


def _on_new_thread(work: Callable[[], Any], what: str) -> threading.Event | None:
    done = threading.Event()

    def run_then_signal() -> None:
        try:
            work()
        finally:
            done.set()

    try:
        threading.Thread(target=run_then_signal, name=f"otel-dist-{what}", daemon=True).start()
    except RuntimeError:  # the interpreter is finalizing (3.12+): no new thread may start
        return None
    return done


def run_bounded(work: Callable[[], Any], timeout_s: float, what: str) -> bool:
    """Run ``work`` on a daemon thread; give up waiting after ``timeout_s``. True if it ended.

    At interpreter exit, where Python 3.12+ starts no new thread, the work goes to the exit
    worker started by ``ExitHooks.install``; without one it runs here, unbounded.
    """
    done = _on_new_thread(work, what) or exit_worker.submit(work)
    if done is None:
        work()
        return True
    if not done.wait(timeout_s):
        _log.warning(
            "otel-dist: %s did not finish within %.1f s (collector unreachable?); "
            "unsent telemetry is dropped so the process can exit",
            what,
            timeout_s,
        )
        return False
    return True
