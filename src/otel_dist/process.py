"""Process life: a bounded flush when the server stops, at exit and on SIGTERM, collector or not.

The SDK's own exit handlers can block for the exporter's full retry budget when the collector is
unreachable (opentelemetry-python #2284, #4813). We create the providers with
``shutdown_on_exit=False`` and shut them down here on a daemon thread that we wait for at most
``shutdown_timeout_s``; the SDK's batch threads are daemons, so the interpreter can then exit.
Every exit step of one process shares that one budget.

Exit hooks alone miss the commonest way servers stop. uvicorn (alone, as ``--workers`` or
``--reload`` children, and as gunicorn's worker class) handles SIGTERM and SIGINT itself: it
shuts the app down gracefully, puts back the handler it found, and raises the signal again. In a
worker or reload child, or a gunicorn worker, the handler it found is the default one, which
kills the process without running exit hooks. So when the server starts the app's lifespan (its
handlers are in place by then) we chain them: a stop signal is noted, passed on unchanged, and
the app's lifespan shutdown ends with a bounded flush of everything produced until then.
gunicorn stops its workers with SIGQUIT on SIGINT and kills them after its graceful timeout
without a lifespan shutdown: a SIGQUIT that the worker handles starts the flush at once.

Forked workers (gunicorn, and any master set up before it forks: zero-code or ``--preload``):
the SDK's batch processors and periodic reader re-create their threads in the child through
``os.register_at_fork``, and the exit hooks registered in the master are inherited. The SDK does
not re-create the locks its metric collection holds, though, so a worker forked while the
master was collecting would inherit them held by a thread it does not have, and hang on them
for good (at its first observable instrument, first new measurement, first collection or first
export). A fork therefore waits for a collection in progress to finish, and the child renews
those locks; a fork never waits for an export, which can take the exporter's whole timeout when
the collector hangs.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from types import FrameType
from typing import Any

from opentelemetry.sdk.metrics.export import MetricReader

from otel_dist.bounded import exit_worker, run_bounded
from otel_dist.global_changes import CHANGES
from otel_dist.internal_log import internal_logger

_log = internal_logger()

Handler = Callable[[int, FrameType | None], Any]
_CHAIN_MARK = "_otel_dist_chained"
# Signals a server handles to stop gracefully: the process ends once the app has shut down.
_GRACEFUL_STOP = (signal.SIGTERM, signal.SIGINT)
# gunicorn's "stop now" to its workers (not on Windows).
_QUICK_STOP = tuple(s for s in (getattr(signal, "SIGQUIT", None),) if s is not None)


class ExitHooks:
    """Flushes when the server stops, and shuts down at exit or on an unhandled SIGTERM.

    All of it within one budget of ``timeout_s`` per process, counted from the first of them.
    """

    def __init__(
        self, shutdown: Callable[[], Any], flush: Callable[[], Any], timeout_s: float
    ) -> None:
        self._shutdown = shutdown
        self._flush = flush
        self._timeout_s = timeout_s
        self._done = False
        self._deadline: float | None = None
        self._stop_signal: int | None = None
        self._installed_sigterm = False

    def install(self) -> None:
        """Register the atexit hook and, in the main thread, a SIGTERM handler if none exists."""
        exit_worker.start()
        atexit.register(self.shutdown_once)
        if threading.current_thread() is threading.main_thread():
            self._handle_sigterm_if_nobody_does()

    def uninstall(self) -> None:
        """Undo ``install`` (used by ``Telemetry.shutdown`` and tests)."""
        atexit.unregister(self.shutdown_once)
        if self._installed_sigterm and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._installed_sigterm = False
        self._done = True  # the chained handlers, if the server still has them, flush no more

    def watch_server_stop(self) -> None:
        """Chain the stop handlers the server has installed (call when its lifespan starts).

        Only the main thread can touch signal handlers; a lifespan run on another thread (a
        test client's) is not a server process stopping, so nothing is watched there.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        self._handle_sigterm_if_nobody_does()
        for signum in (*_GRACEFUL_STOP, *_QUICK_STOP):
            current = signal.getsignal(signum)
            if callable(current) and _is_a_server_handler(current, self._on_sigterm):
                # A handler the server installed since our last chain: chain that one now.
                CHANGES.undo(("signal handler", signum))
                CHANGES.register(("signal handler", signum), _chain(signum, self._chained(current)))

    async def flush_if_server_stops(self) -> None:
        """After the app's lifespan shutdown: flush if a stop signal is why it shut down."""
        if self._stop_signal is None or self._done:
            return
        import anyio.to_thread  # noqa: PLC0415 - anyio comes with Starlette, only ASGI needs it

        await anyio.to_thread.run_sync(self._flush_within_budget)

    def shutdown_once(self) -> None:
        """Flush and shut down within what is left of the budget; later calls do nothing."""
        if self._done:
            return
        self._done = True
        with _stop_signals_held_back(self._on_sigterm):
            self._within_budget(self._shutdown, "shutdown")

    def _flush_within_budget(self) -> None:
        # Part of the process's shutdown, and said so if it runs out of time: one line per exit.
        self._within_budget(self._flush, "shutdown")

    def _within_budget(self, work: Callable[[], Any], what: str) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self._timeout_s
        remaining = self._deadline - time.monotonic()
        # Spent: an earlier step is still stuck on the exporter and has said so already.
        if remaining > 0:
            run_bounded(work, remaining, what)

    def _handle_sigterm_if_nobody_does(self) -> None:
        # Servers (uvicorn, gunicorn) install their own graceful SIGTERM handling; we only
        # handle SIGTERM where it would kill the process outright.
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed_sigterm = True

    def _chained(self, previous: Handler) -> Handler:
        def note_then_pass_on(received: int, frame: FrameType | None) -> Any:
            if received in _GRACEFUL_STOP:
                self._stop_signal = received
            elif not self._done:
                # gunicorn's quick stop: no lifespan shutdown follows, a SIGKILL may.
                threading.Thread(
                    target=self._flush_within_budget, name="otel-dist-quit", daemon=True
                ).start()
            return previous(received, frame)

        setattr(note_then_pass_on, _CHAIN_MARK, True)
        return note_then_pass_on

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.shutdown_once()
        # Die of SIGTERM as the process would have without us (exit status 143 for the parent).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@contextmanager
def _stop_signals_held_back(ours: Handler) -> Iterator[None]:
    """Hold back a stop signal that would end the process until the exit flush ends.

    A gunicorn worker recycled by ``--max-requests`` flushes at exit with SIGTERM back at its
    default; the master stopping then sends it SIGTERM, which killed it in the middle of the
    flush and lost what it had not sent yet. The flush is bounded, so the signal is only
    delayed: it is delivered as it came once the flush ends, and the process dies of it as it
    would have. Our own SIGTERM handler is held back too: it would find the flush started and
    end the process at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = {
        signum: handler
        for signum in _GRACEFUL_STOP
        if (handler := signal.getsignal(signum)) == signal.SIG_DFL or handler == ours
    }
    for signum in held:
        signal.signal(signum, lambda got, _frame: received.append(got))
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
        if received:
            os.kill(os.getpid(), received[0])


def _chain(signum: int, chained: Handler) -> Callable[[], Callable[[], None]]:
    """The change that installs ``chained`` for ``signum``; its undo puts the server's back."""

    def make() -> Callable[[], None]:
        previous = signal.signal(signum, chained)

        def restore() -> None:
            if signal.getsignal(signum) is chained:
                signal.signal(signum, previous)

        return restore

    return make


def _is_a_server_handler(handler: Handler, ours: Handler) -> bool:
    # Python's own SIGINT handler is left alone: asyncio.run() looks for it by identity.
    return (
        handler is not signal.default_int_handler
        and handler != ours
        and not getattr(handler, _CHAIN_MARK, False)
    )


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_LIFESPAN_SHUTDOWN_DONE = frozenset({"lifespan.shutdown.complete", "lifespan.shutdown.failed"})


class FlushWhenServerStops:
    """ASGI wrapper (outermost): watches the server's stop signals and flushes at its stop."""

    def __init__(self, app: ASGIApp, hooks: ExitHooks) -> None:
        self.app = app
        self._hooks = hooks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass every call through; on a lifespan call, watch for the server's stop."""
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        try:
            self._hooks.watch_server_stop()
        except Exception:  # pragma: no cover - defensive: never fail the app's startup
            _log.exception("otel-dist: could not watch the server's stop signals")

        async def send_after_flush(message: Message) -> None:
            # The app's own shutdown code has run: what it produced is in this flush too.
            if message["type"] in _LIFESPAN_SHUTDOWN_DONE:
                try:
                    await self._hooks.flush_if_server_stops()
                except Exception:  # pragma: no cover - defensive: never fail the app's shutdown
                    _log.exception("otel-dist: could not flush at the server's stop")
            await send(message)

        await self.app(scope, receive, send_after_flush)


# Held while a metric reader collects; a fork waits for it (at most _FORK_WAIT_S, so that a
# callback stuck in a collection can delay a fork but never prevent it).
_collecting = threading.Lock()
_FORK_WAIT_S = 5.0
_gate_held_for_fork = False
_gate_registered = False


def _before_fork() -> None:
    global _gate_held_for_fork  # noqa: PLW0603
    _gate_held_for_fork = _collecting.acquire(timeout=_FORK_WAIT_S)


def _after_fork_in_parent() -> None:
    global _gate_held_for_fork  # noqa: PLW0603
    if _gate_held_for_fork:
        _gate_held_for_fork = False
        _collecting.release()


def _after_fork_in_child() -> None:
    global _collecting, _gate_held_for_fork  # noqa: PLW0603
    _collecting = threading.Lock()
    _gate_held_for_fork = False


def _register_fork_gate() -> None:
    global _gate_registered  # noqa: PLW0603
    if not _gate_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )
        _gate_registered = True


def make_fork_safe(reader: MetricReader) -> None:
    """Let a process fork at any moment of ``reader``'s work (call once its MeterProvider exists).

    A fork waits while the reader collects, but never for the export that follows, so a slow or
    unreachable collector never delays a fork. Every lock of the reader and of the measurements
    it collects is renewed in the child: a parent thread may have held one at the fork (the
    export, or a measurement the exporter records about itself), and a child has no such thread.
    """
    collect = getattr(reader, "_collect", None)
    if collect is None:  # pragma: no cover - a future SDK: forks are then as safe as it makes them
        return
    _register_fork_gate()

    def collect_between_forks(*args: Any, **kwargs: Any) -> Any:
        with _collecting:
            return collect(*args, **kwargs)

    reader._collect = collect_between_forks
    if hasattr(os, "register_at_fork"):
        alive = weakref.ref(reader)
        # The SDK hands the reader a bound method of the object that holds every measurement.
        measurements = getattr(collect, "__self__", None)

        def renew_locks() -> None:
            if (still := alive()) is not None:
                _renew_lock(still, "_export_lock")
            _renew_measurement_locks(measurements)

        os.register_at_fork(after_in_child=renew_locks)


def _renew_measurement_locks(consumer: Any) -> None:
    # The SDK's metric state, consumer -> reader storages -> instrument matches -> aggregations
    # (and their exemplar reservoirs), each with a lock the SDK does not renew after a fork.
    _renew_lock(consumer, "_lock")
    for storage in dict(getattr(consumer, "_reader_storages", {})).values():
        _renew_lock(storage, "_lock")
        for matches in dict(getattr(storage, "_instrument_view_instrument_matches", {})).values():
            for match in matches:
                _renew_lock(match, "_lock")
                for aggregation in dict(getattr(match, "_attributes_aggregation", {})).values():
                    _renew_lock(aggregation, "_lock")
                    _renew_lock(getattr(aggregation, "_reservoir", None), "_lock")


_RLOCK_TYPE = type(threading.RLock())


def _renew_lock(owner: Any, name: str) -> None:
    old = getattr(owner, name, None)
    if old is None or not hasattr(old, "acquire"):
        return
    setattr(owner, name, threading.RLock() if isinstance(old, _RLOCK_TYPE) else threading.Lock())


def process_identity() -> dict[str, Any]:
    """Attributes that tell this process apart from its sibling workers.

    Every worker of a multi-process server exports its own cumulative metrics; without a unique
    ``service.instance.id`` their series would collide in the backend and be miscounted.
    """
    return {"service.instance.id": uuid.uuid4().hex, "process.pid": os.getpid()}


def refresh_identity_after_fork(providers: Iterable[Any]) -> None:
    """Give each forked child (gunicorn ``--preload`` workers) its own ``service.instance.id``.

    The SDK already re-creates its threads and merges process-dependent resource detectors after
    a fork through ``_update_resource``; we use the same hook so sibling workers never export
    colliding cumulative metric series.
    """
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

    targets = [p for p in providers if hasattr(p, "_update_resource")]

    def after_in_child() -> None:
        identity = Resource(process_identity())
        for provider in targets:
            try:
                provider._update_resource(identity)
            except Exception:  # pragma: no cover - defensive: never break a forked worker
                _log.exception("otel-dist: could not refresh the resource after fork")

    CHANGES.at_fork("refresh the resource identity", after_in_child)
