"""Span export off the GIL through fastotel, the optional ``[native]`` extra.

Why and how measured: docs/native-export.md.

fastotel's ``OTLPSpanProcessor`` stands in for the SDK's ``BatchSpanProcessor`` and OTLP/HTTP
exporter: ``on_end`` copies the span into Rust, and a native thread batches, encodes and sends
without the GIL. ``NativeSpanExport`` wraps it so that everything else stays as on the SDK path:

- secrets are scrubbed in ``on_end``, before the span is handed over (the SDK path scrubs on its
  export thread); a span with nothing to scrub is handed over as it is;
- endpoint, headers, timeout, compression and batching come from our settings, as arguments
  (fastotel would otherwise read the environment itself);
- losses are counted: fastotel's counters of dropped, failed and rejected spans are polled and
  fed to ``ExportHealth`` (the same stderr lines) and to the same loss metrics as the SDK's;
- a forked child gets a processor of its own: fastotel's, inherited, accepts spans and flushes
  "successfully" but sends nothing from a child (its thread stayed in the parent). If a fresh
  one cannot be built there, the child exports through the SDK and says so.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from otel_dist.global_changes import CHANGES
from otel_dist.internal_log import internal_logger
from otel_dist.scrub import Scrubber
from otel_dist.sdk.export_health import ExportHealth
from otel_dist.sdk.exporters import otlp_kwargs, scrubbed_span
from otel_dist.settings import Settings

_log = internal_logger()

NATIVE_DIST = "fastotel"
# Pinned exactly: its loss counters are read from its native object, not yet a public API.
NATIVE_VERSION = "0.9.1"
INSTALL_HINT = "pip install 'otel-dist[native]'"
# How often the native loss counters are read (a few attribute reads, off the request path).
POLL_INTERVAL_S = 1.0
# The SDK turns its own metrics off when this is "false"; the native loss counters follow it.
_SDK_SELF_METRICS_VARIABLE = "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"
_COMPONENT = {"otel.component.type": "fastotel_span_processor"}


def native_unavailable() -> str | None:
    """Why fastotel cannot be used in this environment; None when it can (nothing imported)."""
    try:
        found = version(NATIVE_DIST)
    except PackageNotFoundError:
        return f"fastotel is not installed ({INSTALL_HINT})"
    if found != NATIVE_VERSION:
        return f"fastotel {found} is installed, otel-dist drives {NATIVE_VERSION} ({INSTALL_HINT})"
    return None


def _native_processor(settings: Settings) -> Any:
    """A fastotel processor configured from our settings (raises what fastotel raises)."""
    from fastotel import OTLPSpanProcessor  # noqa: PLC0415 - an optional extra

    otlp = settings.otlp["traces"]
    return OTLPSpanProcessor(
        **otlp_kwargs(otlp),
        compression=otlp.compression,
        **settings.bsp.processor_kwargs(),
    )


@dataclass
class _Counts:
    """fastotel's loss counters at one moment (each only grows in one processor's life)."""

    dropped: int = 0
    failed: int = 0
    rejected: int = 0
    retries: int = 0

    @staticmethod
    def of(processor: Any) -> _Counts:
        native = processor._native
        return _Counts(
            native.dropped_spans(), native.failed_spans(), native.rejected_spans(), native.retries()
        )


class NativeLosses:
    """Turns fastotel's counters into ``ExportHealth`` reports and loss metrics.

    fastotel counts what it loses but does not say when an export succeeds, which is what ends
    an incident in ``ExportHealth``. Exports count as healthy again after one whole export
    cycle (the batch delay plus the export timeout) in which spans kept coming and no batch was
    retried, failed or dropped: while the collector is down, every batch is retried within
    that time.
    """

    def __init__(self, health: ExportHealth, settings: Settings) -> None:
        self._health = health
        self._quiet_s = settings.bsp.schedule_delay_ms / 1000 + settings.otlp["traces"].timeout_s
        self._lock = threading.Lock()
        self._seen = _Counts()
        self.totals = _Counts()  # over the process's life, across processor rebuilds
        self.handed = 0  # spans handed to fastotel (counted without a lock: an estimate)
        self._trouble_at: float | None = None
        self._handed_at_trouble = 0

    def restart(self) -> None:
        """In a forked child: a new fastotel processor, whose counters start from zero.

        The lock is new too: the parent's poller may have held it at the fork.
        """
        self._lock = threading.Lock()
        self._seen = _Counts()

    def poll(self, processor: Any, now: float) -> None:
        """Read the counters and report what changed since the last poll."""
        counts = _Counts.of(processor)
        with self._lock:
            seen, self._seen = self._seen, counts
            dropped = counts.dropped - seen.dropped
            failed = counts.failed - seen.failed + counts.rejected - seen.rejected
            retried = counts.retries - seen.retries
            self.totals.dropped += dropped
            self.totals.failed += counts.failed - seen.failed
            self.totals.rejected += counts.rejected - seen.rejected
            if dropped or failed or retried:
                self._trouble_at, self._handed_at_trouble = now, self.handed
                recovered = False
            else:
                recovered = self._quiet_since_trouble(now)
        if dropped:
            self._health.queue_dropped("traces", dropped)
        if failed:
            self._health.exported("traces", failed, ok=False)
        if recovered:
            self._health.exported("traces", 0, ok=True)

    def _quiet_since_trouble(self, now: float) -> bool:
        if self._trouble_at is None or now - self._trouble_at < self._quiet_s:
            return False
        if self.handed <= self._handed_at_trouble:
            return False  # nothing was sent since: no evidence either way
        self._trouble_at = None
        return True

    def observe_processed(self, _options: CallbackOptions) -> Iterable[Observation]:
        """``otel.sdk.processor.span.processed``: spans a full queue dropped."""
        return [Observation(self.totals.dropped, {**_COMPONENT, "error.type": "queue_full"})]

    def observe_exported(self, _options: CallbackOptions) -> Iterable[Observation]:
        """``otel.sdk.exporter.span.exported``: spans that failed to export or were rejected."""
        return [
            Observation(self.totals.failed, {**_COMPONENT, "error.type": "export_failed"}),
            Observation(self.totals.rejected, {**_COMPONENT, "error.type": "rejected"}),
        ]


def _count_as_metrics(losses: NativeLosses, meter_provider: MeterProvider | None) -> None:
    """The SDK's loss counter names, so dashboards and alerts read one series either way."""
    if meter_provider is None:
        return
    if os.environ.get(_SDK_SELF_METRICS_VARIABLE, "true").strip().lower() != "true":
        return
    meter = meter_provider.get_meter("otel_dist.native")
    meter.create_observable_counter(
        "otel.sdk.processor.span.processed", [losses.observe_processed], unit="{span}"
    )
    meter.create_observable_counter(
        "otel.sdk.exporter.span.exported", [losses.observe_exported], unit="{span}"
    )


class NativeSpanExport(SpanProcessor):
    """The span processor of the native path: scrub, hand to fastotel, account for losses.

    ``sdk_fallback`` builds the SDK's batch processor for a forked child where fastotel cannot
    start again.
    """

    def __init__(
        self,
        settings: Settings,
        scrubber: Scrubber,
        health: ExportHealth,
        meter_provider: MeterProvider | None,
        sdk_fallback: Callable[[], SpanProcessor],
    ) -> None:
        self._settings = settings
        self._scrubber = scrubber
        self._sdk_fallback = sdk_fallback
        self._inner: Any = _native_processor(settings)
        self.native = True
        self.losses = NativeLosses(health, settings)
        _count_as_metrics(self.losses, meter_provider)
        self._stop = threading.Event()
        self._poller = self._start_poller()
        self._inherited: list[Any] = []
        CHANGES.at_fork(("native span export", id(self)), self._renew_in_child)

    def on_end(self, span: ReadableSpan) -> None:
        """Scrub the span if it carries a secret and hand it over (fastotel copies it)."""
        if not span.context.trace_flags.sampled:
            return
        self.losses.handed += 1
        self._inner.on_end(scrubbed_span(self._scrubber, span))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every span ended before the call; False if that took too long."""
        return bool(self._inner.force_flush(timeout_millis))

    def shutdown(self) -> None:
        """Export what is queued (within fastotel's export timeout), stop, count the last losses."""
        self._stop.set()
        try:
            self._inner.shutdown()
        finally:
            self._poll()
            CHANGES.undo(("native span export", id(self)))

    def _start_poller(self) -> threading.Thread:
        poller = threading.Thread(
            target=self._poll_until_stopped, name="otel-dist-native", daemon=True
        )
        poller.start()
        return poller

    def _poll_until_stopped(self) -> None:
        while not self._stop.wait(POLL_INTERVAL_S):
            self._poll()

    def _poll(self) -> None:
        if self.native:
            try:
                self.losses.poll(self._inner, time.monotonic())
            except Exception:  # pragma: no cover - a future fastotel: never kill the poller
                _log.exception("otel-dist: could not read fastotel's loss counters")

    def _renew_in_child(self) -> None:
        """In a forked child: a fastotel processor of its own, else the SDK's (said once)."""
        # The parent's processor stays referenced: its native half expects a thread that is
        # not in this process, and is never called again.
        self._inherited.append(self._inner)
        self._stop = threading.Event()
        self.losses.restart()
        try:
            self._inner = _native_processor(self._settings)
        except Exception as exc:
            self.native = False
            self._inner = self._sdk_fallback_or_nothing()
            _log.warning(
                "otel-dist: native span export could not start in forked process %d (%s: %s); "
                "its spans are exported by the SDK",
                os.getpid(),
                type(exc).__name__,
                exc,
            )
            return
        self._poller = self._start_poller()

    def _sdk_fallback_or_nothing(self) -> SpanProcessor:
        try:
            return self._sdk_fallback()
        except Exception:  # pragma: no cover - the SDK's processor failing too: say it loudly
            _log.exception(
                "otel-dist: no span exporter could start in forked process %d: its spans are lost",
                os.getpid(),
            )
            return SpanProcessor()
