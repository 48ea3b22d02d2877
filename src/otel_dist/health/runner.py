"""Running checks: each bounded by its timeout, one run at a time, its result kept for a while.

A plain check runs on a daemon thread of its own, so a check that never returns can neither
block the event loop nor keep the process from exiting; while it hangs, later probes wait on that
same run (up to the timeout) instead of starting another thread. An async check runs as a task
on the serving loop and is cancelled at its timeout (the probe does not wait for it to obey).
Checks run with instrumentation suppressed: a probe's ``SELECT 1`` makes no span.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import Histogram, MeterProvider

from otel_dist.health.checks import STATUSES, HealthCheck, Outcome, Status, error_name, read_outcome
from otel_dist.health.sources import INTERNAL_LOGGER, meter_provider

_log = logging.getLogger(INTERNAL_LOGGER)


@dataclass(frozen=True)
class ComponentResult:
    """One check's latest verdict, as the endpoints show it."""

    name: str
    status: Status
    critical: bool
    duration_s: float
    checked_at: float  # wall-clock seconds, shown in responses
    finished: float  # monotonic seconds, for the cache
    error: str | None = None
    details: Any = None


class Component:
    """One check with its cached result and its run in flight."""

    def __init__(self, check: HealthCheck, timeout_s: float, recorder: CheckRecorder) -> None:
        self.check = check
        self._timeout_s = check.timeout_s if check.timeout_s is not None else timeout_s
        self._recorder = recorder
        self._last: ComponentResult | None = None
        self._refresh: asyncio.Task[ComponentResult] | None = None
        self._thread_run: concurrent.futures.Future[object] | None = None
        self._task_run: asyncio.Task[object] | None = None

    async def result(self, cache_s: float) -> ComponentResult:
        """The cached result if younger than ``cache_s``, else a fresh one (shared by callers)."""
        last = self._last
        if last is not None and time.monotonic() - last.finished < cache_s:
            return last
        loop = asyncio.get_running_loop()
        refresh = self._refresh
        if refresh is None or refresh.done() or refresh.get_loop() is not loop:
            refresh = self._refresh = loop.create_task(self._run())
        # A probe that disconnects must not cancel the run other probes wait for.
        return await asyncio.shield(refresh)

    async def _run(self) -> ComponentResult:
        started = time.perf_counter()
        outcome = await self._bounded_outcome()
        status = outcome.status
        if status == "unhealthy" and not self.check.critical:
            status = "degraded"
        result = ComponentResult(
            name=self.check.name,
            status=status,
            critical=self.check.critical,
            duration_s=time.perf_counter() - started,
            checked_at=time.time(),
            finished=time.monotonic(),
            error=outcome.error,
            details=outcome.details,
        )
        self._report_change(result)
        self._last = result
        self._recorder.record(result)
        return result

    async def _bounded_outcome(self) -> Outcome:
        running = self._running()
        done, _ = await asyncio.wait({running}, timeout=self._timeout_s)
        if not done:
            running.cancel()  # a task is asked to stop; a thread is left to finish on its own
            return Outcome("unhealthy", "TimeoutError")
        if running.cancelled():
            return Outcome("unhealthy", error_name(asyncio.CancelledError()))
        error = running.exception()
        if error is not None:
            return Outcome("unhealthy", error_name(error))
        value = running.result()
        outcome = read_outcome(value)
        if outcome.error is not None:
            self._warn_invalid_result(value)
        return outcome

    def _running(self) -> asyncio.Future[object]:
        """The run in flight, or a new one."""
        loop = asyncio.get_running_loop()
        if self.check.is_async:
            task = self._task_run
            if task is None or task.done() or task.get_loop() is not loop:
                with suppress_instrumentation():  # the task copies this context when created
                    task = self._task_run = loop.create_task(_awaited(self.check.check))
            return task
        thread_run = self._thread_run
        if thread_run is None or thread_run.done():
            thread_run = self._thread_run = _on_daemon_thread(self.check.check, self.check.name)
        return asyncio.wrap_future(thread_run)

    def _warn_invalid_result(self, value: object) -> None:
        hint = " (a plain function returned an awaitable: declare it async def)"
        if asyncio.iscoroutine(value):
            value.close()
        elif not hasattr(value, "__await__"):
            hint = ""
        _log.warning(
            "otel-dist: health check %r returned %s; expected None, True, False or one of %s%s",
            self.check.name,
            type(value).__name__,
            ", ".join(STATUSES),
            hint,
        )

    def _report_change(self, result: ComponentResult) -> None:
        # One line per change, not per probe: a down database says so once.
        before = self._last.status if self._last is not None else "healthy"
        if result.status == before:
            return
        if result.status == "healthy":
            _log.info("otel-dist: health check %r is healthy again", result.name)
            return
        error = f" ({result.error})" if result.error else ""
        _log.warning("otel-dist: health check %r is %s%s", result.name, result.status, error)


async def _awaited(check: Callable[[], object]) -> object:
    awaitable = check()
    assert isinstance(awaitable, Awaitable)
    return await awaitable


def _on_daemon_thread(check: Callable[[], object], name: str) -> concurrent.futures.Future[object]:
    future: concurrent.futures.Future[object] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            with suppress_instrumentation():
                value = check()
        except BaseException as error:  # any failure, even SystemExit, is the check's status
            future.set_exception(error)
        else:
            future.set_result(value)

    threading.Thread(target=run, name=f"otel-dist-health {name}", daemon=True).start()
    return future


def overall_status(results: Iterable[ComponentResult]) -> Status:
    """Unhealthy if a critical component is; degraded if any component is not healthy."""
    statuses = {result.status for result in results}
    if "unhealthy" in statuses:
        return "unhealthy"
    return "degraded" if "degraded" in statuses else "healthy"


class CheckRecorder:
    """Records ``health.check.duration`` per run, on the meter provider configured now."""

    def __init__(self) -> None:
        self._provider: MeterProvider | None = None
        self._histogram: Histogram | None = None

    def record(self, result: ComponentResult) -> None:
        """One measurement: the run's duration by check name, status and error class."""
        attributes = {"health.check.name": result.name, "health.check.status": result.status}
        if result.error is not None:
            attributes["error.type"] = result.error
        try:
            self._instrument().record(result.duration_s, attributes)
        except Exception:
            _log.exception("otel-dist: health.check.duration could not be recorded")

    def _instrument(self) -> Histogram:
        provider = meter_provider()
        if self._histogram is None or provider is not self._provider:
            meter = provider.get_meter("otel_dist.health")
            self._histogram = meter.create_histogram(
                "health.check.duration",
                unit="s",
                description="Duration of health check runs (cached answers are not runs).",
            )
            self._provider = provider
        return self._histogram
