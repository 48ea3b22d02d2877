"""The exporter of each signal: the OTLP (or console) exporter, wrapped once to scrub and report.

One wrapper per signal sits between the SDK's batch processor (or metric reader) and the real
exporter. On the export thread, off the request path, it redacts secrets (spans and logs), tells
``ExportHealth`` how the batch went, and empties the batch once the call returns. Shutdown and
flush pass straight through (``_Delegating``).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    ConsoleLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from otel_dist.internal_log import internal_logger
from otel_dist.scrub import Scrubber
from otel_dist.sdk.export_health import (
    ExportHealth,
)
from otel_dist.settings import ConfigurationError, OtlpSettings, Settings, Signal

_log = internal_logger()
_Result = TypeVar("_Result")


def otlp_kwargs(otlp: OtlpSettings) -> dict[str, Any]:
    """Endpoint, headers and timeout as every OTLP exporter (and fastotel) takes them."""
    return {
        "endpoint": otlp.endpoint,
        "headers": dict(otlp.headers),
        "timeout": otlp.timeout_s,
    }


def grpc_exporter_missing(signal: Signal) -> ConfigurationError:
    """The error for an OTLP/gRPC export without the ``[grpc]`` extra installed."""
    return ConfigurationError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL=grpc (for {signal}) needs the gRPC exporter, which is not "
        "installed: pip install 'otel-dist[grpc]', or use http/protobuf"
    )


# Where each signal's OTLP exporter class lives, per protocol (module, class).
_OTLP_EXPORTERS: dict[Signal, dict[str, tuple[str, str]]] = {
    "traces": {
        "http/protobuf": (
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
            "OTLPSpanExporter",
        ),
        "grpc": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    },
    "metrics": {
        "http/protobuf": (
            "opentelemetry.exporter.otlp.proto.http.metric_exporter",
            "OTLPMetricExporter",
        ),
        "grpc": ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
    },
    "logs": {
        "http/protobuf": (
            "opentelemetry.exporter.otlp.proto.http._log_exporter",
            "OTLPLogExporter",
        ),
        "grpc": ("opentelemetry.exporter.otlp.proto.grpc._log_exporter", "OTLPLogExporter"),
    },
}


def otlp_exporter_available(settings: Settings, signal: Signal) -> bool:
    """True when the OTLP exporter of ``signal`` for the configured protocol is installed."""
    module_name, _ = _OTLP_EXPORTERS[signal][settings.otlp[signal].protocol]
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _otlp_exporter(
    settings: Settings, signal: Signal, meter_provider: MeterProvider | None = None
) -> Any:
    """The OTLP exporter for ``signal`` over the configured protocol (gRPC is an extra).

    ``meter_provider`` receives the exporter's own metrics (items exported or failed).
    """
    otlp = settings.otlp[signal]
    module_name, class_name = _OTLP_EXPORTERS[signal][otlp.protocol]
    try:
        exporter_class = getattr(importlib.import_module(module_name), class_name)
    except ImportError:
        if otlp.protocol == "grpc":
            raise grpc_exporter_missing(signal) from None
        raise
    if otlp.protocol == "grpc":
        return exporter_class(
            **otlp_kwargs(otlp),
            compression=_grpc_compression(otlp),
            meter_provider=meter_provider,
        )
    from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: PLC0415

    from otel_dist.sdk.http_session import session_for  # noqa: PLC0415 (requests: HTTP only)

    return exporter_class(
        **otlp_kwargs(otlp),
        compression=Compression(otlp.compression),
        meter_provider=meter_provider,
        session=session_for(signal),
    )


def _span_exporter(settings: Settings, meter_provider: MeterProvider | None) -> SpanExporter:
    if settings.traces_exporter == "console":
        return ConsoleSpanExporter()
    exporter: SpanExporter = _otlp_exporter(settings, "traces", meter_provider)
    return exporter


def _metric_exporter(settings: Settings) -> MetricExporter:
    if settings.metrics_exporter == "console":
        return ConsoleMetricExporter()
    exporter: MetricExporter = _otlp_exporter(settings, "metrics")
    return exporter


def _log_exporter(settings: Settings, meter_provider: MeterProvider | None) -> LogRecordExporter:
    if settings.logs_exporter == "console":
        return ConsoleLogRecordExporter()
    exporter: LogRecordExporter = _otlp_exporter(settings, "logs", meter_provider)
    return exporter


def _grpc_compression(otlp: OtlpSettings) -> Any:
    import grpc  # type: ignore[import-untyped]  # noqa: PLC0415

    return {
        "none": grpc.Compression.NoCompression,
        "gzip": grpc.Compression.Gzip,
        "deflate": grpc.Compression.Deflate,
    }[otlp.compression]


def _release(batch: Sequence[object]) -> None:
    """Empty a batch list once its export call has returned, so nothing else can keep its items.

    A failed OTLP export leaves a reference cycle behind: the exporter keeps the exception, and
    its traceback holds the frames of the whole export call, whose locals hold the batch. Python
    frees such a cycle only at a full collection, so during a collector outage every failed
    batch of spans or log records stayed in memory until one ran, and that collection, with
    tens of thousands of objects to free, paused the app for 150-210 ms instead of 70-100.
    The batch processors build a new list per export call and drop it after the call; tuples (a
    simple processor's one item) are left alone.
    """
    if isinstance(batch, list):
        batch.clear()


class _Wrapping:
    """What each signal's wrapper shares: the wrapped exporter, the scrubber, the health.

    Shutdown and flush go straight to the wrapped exporter; ``_report`` runs one export call
    and tells ``ExportHealth`` how it went.
    """

    _signal: Signal

    def __init__(self, inner: Any, scrubber: Scrubber, health: ExportHealth) -> None:
        self._inner: Any = inner  # SpanExporter, LogRecordExporter or MetricExporter
        self._scrubber = scrubber
        self._health = health

    def _report(self, items: int, export: Callable[[], _Result], success: _Result) -> _Result:
        started = self._health.started()
        result = export()
        self._health.exported(self._signal, items, result is success, started)
        return result

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        """Shut the wrapped exporter down."""
        self._inner.shutdown(*args, **kwargs)

    def force_flush(self, timeout_millis: float = 30_000) -> bool:
        """Flush the wrapped exporter."""
        return bool(self._inner.force_flush(timeout_millis))


class SpanExport(_Wrapping, SpanExporter):
    """Scrubs span and event attributes, exports, and reports the batch's outcome."""

    _signal = "traces"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export scrubbed copies of the spans that carry a secret; the others unchanged."""
        scrubbed = [self._scrubbed(span) for span in spans]
        try:
            return self._report(
                len(scrubbed), lambda: self._inner.export(scrubbed), SpanExportResult.SUCCESS
            )
        finally:
            _release(scrubbed)
            _release(spans)

    def _scrubbed(self, span: ReadableSpan) -> ReadableSpan:
        return scrubbed_span(self._scrubber, span)


def scrubbed_span(scrubber: Scrubber, span: ReadableSpan) -> ReadableSpan:
    """``span`` itself when no attribute of it or its events is secret; else a scrubbed copy."""
    if not scrubber.enabled:
        return span
    attributes = scrubber.attributes(span.attributes)
    original = span.events  # a new tuple each time, copied from the span under its lock
    events = [_scrubbed_event(scrubber, event) for event in original]
    if attributes is None and all(new is old for new, old in zip(events, original, strict=True)):
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes if attributes is not None else span.attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _scrubbed_event(scrubber: Scrubber, event: Any) -> Any:
    attributes = scrubber.attributes(event.attributes)
    if attributes is None:
        return event
    return type(event)(event.name, attributes, event.timestamp)


class LogExport(_Wrapping, LogRecordExporter):
    """Scrubs log bodies and attributes in place, exports, and reports the batch's outcome."""

    _signal = "logs"

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        """Scrub each record in place (records belong to the batch processor now), export."""
        self._scrub(batch)
        try:
            return self._report(
                len(batch), lambda: self._inner.export(batch), LogRecordExportResult.SUCCESS
            )
        finally:
            _release(batch)

    def _scrub(self, batch: Sequence[ReadableLogRecord]) -> None:
        # A function of its own: a loop variable in ``export`` would keep the last record.
        for record in batch:
            log_record = record.log_record
            attributes = self._scrubber.attributes(log_record.attributes)
            if attributes is not None:
                log_record.attributes = attributes
            if log_record.body is not None:
                log_record.body = self._scrubber.value(log_record.body)


class MetricExport(_Wrapping, MetricExporter):
    """Exports and reports the outcome (one item per export; metrics carry no free text)."""

    _signal = "metrics"

    def __init__(self, inner: MetricExporter, scrubber: Scrubber, health: ExportHealth) -> None:
        _Wrapping.__init__(self, inner, scrubber, health)
        # The reader asks the exporter for its temporality and aggregation: keep the inner's.
        MetricExporter.__init__(
            self,
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Export through the inner exporter and record the outcome."""
        return self._report(
            1,
            lambda: self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs),
            MetricExportResult.SUCCESS,
        )


def span_export(
    settings: Settings,
    scrubber: Scrubber,
    health: ExportHealth,
    meter_provider: MeterProvider | None,
) -> SpanExport:
    """The traces exporter the settings name, wrapped; ``ConfigurationError`` if unavailable."""
    return SpanExport(_span_exporter(settings, meter_provider), scrubber, health)


def log_export(
    settings: Settings,
    scrubber: Scrubber,
    health: ExportHealth,
    meter_provider: MeterProvider | None,
) -> LogExport:
    """The logs exporter the settings name, wrapped; ``ConfigurationError`` if unavailable."""
    return LogExport(_log_exporter(settings, meter_provider), scrubber, health)


def metric_export(settings: Settings, scrubber: Scrubber, health: ExportHealth) -> MetricExport:
    """The metrics exporter the settings name, wrapped; ``ConfigurationError`` if unavailable."""
    return MetricExport(_metric_exporter(settings), scrubber, health)
