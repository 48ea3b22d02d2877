"""What failed to export, counted and said once: the app's view of a collector outage.

When the collector is down, the SDK's exporters retry each batch, give up, and log a warning per
attempt and an error per batch, on every export thread: dozens of lines a minute that bury the
app's own output, yet never say how much was lost in all. Here each exporter is wrapped to count
the items of every batch that failed for good, the SDK's per-batch lines are folded into that
count (their text becomes the reported reason), and ``otel_dist.internal`` says on stderr:

- ``otel-dist: telemetry export failing ...`` at the first failure, then at most once per
  ``OTEL_DIST_EXPORT_REPORT_INTERVAL`` seconds while failures go on, with the totals so far;
- ``otel-dist: telemetry export recovered ...`` once, when every signal that lost something
  has exported successfully again.

Recovery waits for every such signal because, after an outage, one signal's exporter may still
be waiting out its retry backoff while its queue is full and drops, when another's succeeds: a
recovery at that first success would be followed by a new "failing" line, and so on for every
signal, a pair of lines per catch-up instead of one incident.

The same losses are counted as metrics by the SDK itself (its ``otel.sdk.exporter.*.exported``
and ``otel.sdk.processor.*.processed`` instruments, with ``error.type``), which ``providers``
switches on; this module does not duplicate them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from otel_dist.global_changes import CHANGES
from otel_dist.internal_log import internal_logger
from otel_dist.settings import Signal

_log = internal_logger()

# The SDK loggers whose per-batch export complaints this module replaces with its summary.
SDK_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.metrics._internal.export",
)
# The batch processors' logger: its only warning is "Queue full", once per dropped item.
_QUEUE_LOGGER = "opentelemetry.sdk._shared_internal"
# Prefixes of the SDK messages that describe one failed attempt or batch (not a misconfiguration).
_PER_BATCH_MESSAGES = (
    "Transient error",
    "Failed to export",
    "Queue full",
    "Exception while exporting metrics",
    "Shutdown in progress, aborting retry",
)
_FOLDING = ("fold SDK export messages",)
_UNITS: dict[Signal, str] = {"traces": "spans", "logs": "log records", "metrics": "metric exports"}


@dataclass(frozen=True)
class ExportStatus:
    """Export health at one moment: the signals failing now and what was lost since start."""

    failing: tuple[Signal, ...]
    dropped: dict[Signal, int]
    failing_for_s: float | None


class ExportHealth:
    """Counts items lost per signal and reports failing/recovered on stderr, rate-limited."""

    def __init__(
        self,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        report: Callable[[str], None] = _log.warning,
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._report = report
        self._lock = threading.Lock()
        _new_lock_in_forked_children(self)
        self.dropped: dict[Signal, int] = {"traces": 0, "logs": 0, "metrics": 0}
        self._outage_dropped: dict[Signal, int] = dict(self.dropped)
        self._failing_since: float | None = None
        self._failing: set[Signal] = set()  # signals that lost something and have not succeeded
        self._last_report: float | None = None
        self._recovered_at: float | None = None
        self.last_reason = ""

    def status(self) -> ExportStatus:
        """The signals that lost items and have not exported successfully since, and totals."""
        with self._lock:
            since = self._failing_since
            return ExportStatus(
                failing=tuple(sorted(self._failing)),
                dropped=dict(self.dropped),
                failing_for_s=None if since is None else self._clock() - since,
            )

    def started(self) -> float:
        """The time an export call starts, to pass back to ``exported``."""
        return self._clock()

    def exported(self, signal: Signal, items: int, ok: bool, started: float | None = None) -> None:
        """Record one export call's outcome (called on the export threads).

        A call that began before the last recovery, retrying all along, and failed after it
        belongs to the outage already reported: its items are counted, nothing is said.
        """
        with self._lock:
            if ok:
                self._record_success(signal)
            elif self._began_before_recovery(started):
                self.dropped[signal] += items
            else:
                self._record_loss(signal, items)

    def _began_before_recovery(self, started: float | None) -> bool:
        recovered = self._recovered_at
        return started is not None and recovered is not None and started < recovered

    def queue_dropped(self, signal: Signal, items: int) -> None:
        """Record items a full batch queue turned away (they never reached an exporter)."""
        with self._lock:
            self._record_loss(signal, items)

    def sdk_complained(self, message: str) -> None:
        """Keep the SDK's last per-batch message as the reason shown in the next report."""
        self.last_reason = message

    def _record_loss(self, signal: Signal, items: int) -> None:
        self.dropped[signal] += items
        self._outage_dropped[signal] += items
        self._failing.add(signal)
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        if self._last_report is None or now - self._last_report >= self.interval_s:
            self._last_report = now
            reason = f" ({self.last_reason})" if self.last_reason else ""
            self._report(
                f"otel-dist: telemetry export failing{reason}; dropped so far: "
                f"{_totals(self.dropped)}. Next report in {self.interval_s:g} s at the earliest; "
                "the app keeps serving."
            )

    def _record_success(self, signal: Signal) -> None:
        self._failing.discard(signal)
        if self._failing_since is None or self._failing:
            return
        lasted = self._clock() - self._failing_since
        self._report(
            f"otel-dist: telemetry export recovered after {lasted:.1f} s; dropped during the "
            f"failures: {_totals(self._outage_dropped)}."
        )
        self._failing_since = None
        self._last_report = None
        self._recovered_at = self._clock()
        self._outage_dropped = {"traces": 0, "logs": 0, "metrics": 0}
        self.last_reason = ""


def _new_lock_in_forked_children(health: ExportHealth) -> None:
    # Every export thread takes this lock; a worker forked while its master held it would find
    # it held for good, and its next export would hang.
    if not hasattr(os, "register_at_fork"):
        return
    alive = weakref.ref(health)

    def replace_lock() -> None:
        if (still := alive()) is not None:
            still._lock = threading.Lock()

    os.register_at_fork(after_in_child=replace_lock)


def _totals(counts: dict[Signal, int]) -> str:
    return ", ".join(f"{counts[signal]} {unit}" for signal, unit in _UNITS.items())


class FoldSdkExportMessages(logging.Filter):
    """Drops the SDK's per-attempt export messages, keeping the last as the reported reason."""

    def __init__(self, health: ExportHealth) -> None:
        super().__init__()
        self._health = health

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for a per-batch export message; every other record passes."""
        message = record.getMessage()
        if message.startswith(_PER_BATCH_MESSAGES):
            self._health.sdk_complained(message)
            return False
        return True


def fold_sdk_export_messages(health: ExportHealth) -> Callable[[], None]:
    """Install the filter on the SDK's export loggers; returns the function that removes it.

    The batch processor's "Queue full" warning is logged for every span or log record dropped,
    on the request path, when the collector has been down long enough. Its logger is raised to
    ERROR so those calls return before building a record; ``count_queue_drops`` counts them.
    """
    folding = FoldSdkExportMessages(health)

    def make() -> Callable[[], None]:
        loggers = [logging.getLogger(name) for name in SDK_EXPORT_LOGGERS]
        for logger in loggers:
            logger.addFilter(folding)
        queue_logger = logging.getLogger(_QUEUE_LOGGER)
        queue_level = queue_logger.level
        if queue_level == logging.NOTSET:
            queue_logger.setLevel(logging.ERROR)

        def remove() -> None:
            for logger in loggers:
                logger.removeFilter(folding)
            queue_logger.setLevel(queue_level)

        return remove

    CHANGES.register(_FOLDING, make)
    return lambda: CHANGES.undo(_FOLDING)


class _QueueDropCounter:
    """Stands in for a batch processor's SDK metrics object, adding its drops to the health."""

    def __init__(self, inner: Any, signal: Signal, health: ExportHealth) -> None:
        self._inner = inner
        self._signal = signal
        self._health = health

    def register_queue_size(self, get_queue_size: Callable[[], int]) -> None:
        self._inner.register_queue_size(get_queue_size)

    def finish_items(self, count: int) -> None:
        self._inner.finish_items(count)

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        self._inner.drop_items(count, error_type)
        self._health.queue_dropped(self._signal, count)


def count_queue_drops(processor: Any, signal: Signal, health: ExportHealth) -> bool:
    """Make ``health`` see the spans/logs a full batch queue drops; False if it cannot.

    The SDK counts those drops only in its own metric, on an object its batch processor keeps
    privately; the wrapper forwards every call to it. If a future SDK moves it, the drops are
    still in that metric, just not in our stderr summary.
    """
    batch = getattr(processor, "_batch_processor", None)
    inner = getattr(batch, "_metrics", None)
    if batch is None or inner is None or not hasattr(inner, "drop_items"):
        return False
    batch._metrics = _QueueDropCounter(inner, signal, health)
    return True
