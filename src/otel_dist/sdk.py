"""SDK providers built from the settings: resource, sampler, exporters, processors, views.

Nothing here is global: ``build_providers`` returns the three providers and the caller decides to
install them. Exporters are wrapped so that secrets are scrubbed on the export thread, off the
request path.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import DropAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from otel_dist import __version__
from otel_dist.export_health import (
    ExportHealth,
    ReportingLogExporter,
    ReportingMetricExporter,
    ReportingSpanExporter,
    count_queue_drops,
)
from otel_dist.process import make_fork_safe
from otel_dist.scrub import Scrubber
from otel_dist.settings import BatchSettings, ConfigurationError, OtlpSettings, Settings, Signal

_log = logging.getLogger("otel_dist.internal")

# Instruments that cost a measurement per request and that no dashboard of ours reads.
_DROPPED_INSTRUMENTS = (
    "http.server.request.body.size",
    "http.server.response.body.size",
    "http.server.request.size",
    "http.server.response.size",
)
_PROMETHEUS_PORT_RANGE = 64
# The SDK counts dropped and failed telemetry in its own metrics only when this is "true".
SDK_SELF_METRICS_VARIABLE = "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"


@contextmanager
def _loss_counters(meter_provider: MeterProvider | None) -> Iterator[None]:
    """Build exporters and batch processors inside this to have the SDK count their losses.

    The SDK reads one switch for all its self-metrics, each time it builds a component. Set for
    the whole process, it would also count every span three times and every log record once,
    synchronously on the request path (about 100 µs per trivial request here), for instruments
    nobody reads. So it is set only while the export side is built. A user who sets the
    variable decides for every component, as with the plain SDK.
    """
    if meter_provider is None or SDK_SELF_METRICS_VARIABLE in os.environ:
        yield
        return
    os.environ[SDK_SELF_METRICS_VARIABLE] = "true"
    try:
        yield
    finally:
        os.environ.pop(SDK_SELF_METRICS_VARIABLE, None)


@dataclass
class Providers:
    """The SDK providers for the enabled signals (None when a signal is off)."""

    resource: Resource
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    logger_provider: LoggerProvider | None
    prometheus: PrometheusEndpoint | None = None
    export_health: ExportHealth | None = None


def process_identity() -> dict[str, Any]:
    """Attributes that tell this process apart from its sibling workers.

    Every worker of a multi-process server exports its own cumulative metrics; without a unique
    ``service.instance.id`` their series would collide in the backend and be miscounted.
    """
    return {"service.instance.id": uuid.uuid4().hex, "process.pid": os.getpid()}


def build_resource(settings: Settings) -> Resource:
    """Resource from the settings: OTEL_RESOURCE_ATTRIBUTES < service name < distro identity."""
    attributes: dict[str, Any] = {**process_identity(), **settings.resource_attributes}
    if settings.service_name:
        attributes["service.name"] = settings.service_name
    attributes.setdefault("telemetry.distro.name", "otel-dist")
    attributes.setdefault("telemetry.distro.version", __version__)
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES/OTEL_SERVICE_NAME; explicit values win.
    return Resource.create(attributes)


def build_sampler(settings: Settings) -> Sampler:
    """The head sampler named by the settings."""
    ratio = TraceIdRatioBased(settings.sampler_arg)
    return {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }[settings.sampler]


def _otlp_kwargs(otlp: OtlpSettings) -> dict[str, Any]:
    return {
        "endpoint": otlp.endpoint,
        "headers": dict(otlp.headers),
        "timeout": otlp.timeout_s,
    }


def _grpc_missing(signal: Signal) -> ConfigurationError:
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
            raise _grpc_missing(signal) from None
        raise
    if otlp.protocol == "grpc":
        compression = _grpc_compression(otlp)
    else:
        from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: PLC0415

        compression = Compression(otlp.compression)
    return exporter_class(
        **_otlp_kwargs(otlp), compression=compression, meter_provider=meter_provider
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


class ScrubbingSpanExporter(SpanExporter):
    """Redacts secrets from span and event attributes on the export thread, then delegates."""

    def __init__(self, inner: SpanExporter, scrubber: Scrubber) -> None:
        self._inner = inner
        self._scrubber = scrubber

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export scrubbed copies of the spans that carry a secret; the others unchanged."""
        scrubbed = [self._scrubbed(span) for span in spans]
        try:
            return self._inner.export(scrubbed)
        finally:
            _release(scrubbed)
            _release(spans)

    def _scrubbed(self, span: ReadableSpan) -> ReadableSpan:
        attributes = self._scrubber.attributes(span.attributes)
        events = [self._scrubbed_event(event) for event in span.events]
        if attributes is None and all(
            new is old for new, old in zip(events, span.events, strict=True)
        ):
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

    def _scrubbed_event(self, event: Any) -> Any:
        attributes = self._scrubber.attributes(event.attributes)
        if attributes is None:
            return event
        return type(event)(event.name, attributes, event.timestamp)

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the wrapped exporter."""
        return self._inner.force_flush(timeout_millis)


class ScrubbingLogExporter(LogRecordExporter):
    """Redacts secrets from log bodies and attributes on the export thread, then delegates."""

    def __init__(self, inner: LogRecordExporter, scrubber: Scrubber) -> None:
        self._inner = inner
        self._scrubber = scrubber

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        """Scrub each record in place (records belong to the batch processor now), export."""
        self._scrub(batch)
        try:
            return self._inner.export(batch)
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

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self._inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the wrapped exporter."""
        return self._inner.force_flush(timeout_millis)


def _batch_kwargs(batch: BatchSettings) -> dict[str, Any]:
    """The SDK batch processors' keyword arguments (spans and logs take the same ones)."""
    return {
        "max_queue_size": batch.max_queue_size,
        "schedule_delay_millis": batch.schedule_delay_ms,
        "max_export_batch_size": batch.max_export_batch_size,
        "export_timeout_millis": batch.export_timeout_ms,
    }


@dataclass(frozen=True)
class _Pipeline:
    """What every signal's pipeline shares: the resource, scrubbing and loss accounting."""

    settings: Settings
    resource: Resource
    scrubber: Scrubber
    health: ExportHealth
    meter_provider: MeterProvider | None  # for the SDK's own metrics; None when metrics are off


def _tracer_provider(p: _Pipeline) -> TracerProvider:
    """The tracer provider, with its export pipeline unless the traces exporter is ``none``.

    Built for every exporter: the sampler's span contexts are what requests continue, forward
    on outgoing calls and show in headers, logs and error bodies, exported or not. With nothing
    to export it has no processor (no queue, no export thread).
    """
    provider = TracerProvider(
        resource=p.resource, sampler=build_sampler(p.settings), shutdown_on_exit=False
    )
    if p.settings.traces_exporter == "none":
        return provider
    with _loss_counters(p.meter_provider):
        exporter = ReportingSpanExporter(_span_exporter(p.settings, p.meter_provider), p.health)
        processor = BatchSpanProcessor(
            ScrubbingSpanExporter(exporter, p.scrubber),
            **_batch_kwargs(p.settings.bsp),
            meter_provider=p.meter_provider,
        )
    count_queue_drops(processor, "traces", p.health)
    provider.add_span_processor(processor)
    return provider


def _views() -> list[View]:
    return [
        View(instrument_name=name, aggregation=DropAggregation()) for name in _DROPPED_INSTRUMENTS
    ]


class PrometheusEndpoint:
    """The Prometheus scrape endpoint of one process, bound by ``serve`` on the first free port.

    The SDK exporter has no multiprocess mode, so each worker of ``uvicorn --workers N`` or
    gunicorn serves its own counters, on consecutive ports from the configured one (9464, 9465,
    ...), and Prometheus scrapes each: no series is double-counted or lost.

    Binding waits until the process serves an app: FastAPI apps call ``serve`` on their first
    ASGI call (lifespan startup or first request). Every Python process started under
    ``opentelemetry-instrument`` sets telemetry up, including those that never serve: uvicorn's
    ``--workers``/``--reload`` supervisor and multiprocessing's resource tracker. Bound at setup,
    they would hold 9464 and 9465 and push the workers further up; a gunicorn ``--preload``
    master would hold the only endpoint while its forked workers had none. A process that
    serves no FastAPI app calls ``serve`` itself.
    """

    def __init__(self, host: str, first_port: int) -> None:
        self.host = host
        self.first_port = first_port
        self.port: int | None = None
        self._bound_in_pid: int | None = None
        self._lock = threading.Lock()

    def serve(self) -> int | None:
        """Bind the endpoint, once per process; the port, or None if none was free (logged)."""
        with self._lock:
            if self._bound_in_pid != os.getpid():
                self._bound_in_pid = os.getpid()
                self.port = self._bind()
            return self.port

    def _bind(self) -> int | None:
        from prometheus_client import start_http_server  # noqa: PLC0415

        last = min(self.first_port + _PROMETHEUS_PORT_RANGE, 65536) - 1
        error: OSError | None = None
        for port in range(self.first_port, last + 1):
            try:
                start_http_server(port=port, addr=self.host)
            except OSError as exc:
                error = exc
                continue
            _log.info(
                "otel-dist: Prometheus metrics on http://%s:%d/metrics (pid %d)",
                self.host,
                port,
                os.getpid(),
            )
            return port
        # Raising here would fail the app's first request; the process serves, unscraped.
        _log.error(
            "otel-dist: OTEL_EXPORTER_PROMETHEUS_PORT=%d: no free port in %d-%d on %s (%s); "
            "the metrics of pid %d are not exposed",
            self.first_port,
            self.first_port,
            last,
            self.host,
            error,
            os.getpid(),
        )
        return None


def _prometheus_reader(settings: Settings) -> tuple[MetricReader, PrometheusEndpoint]:
    """A Prometheus reader and the endpoint that will serve it (see ``PrometheusEndpoint``).

    The host is checked now, so a bad ``OTEL_EXPORTER_PROMETHEUS_HOST`` fails at setup.
    """
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415

    host = settings.prometheus_host
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
    except OSError as exc:
        raise ConfigurationError(
            f"OTEL_EXPORTER_PROMETHEUS_HOST={host!r}: cannot listen on it ({exc})"
        ) from None
    return PrometheusMetricReader(), PrometheusEndpoint(host, settings.prometheus_port)


def _meter_provider(
    settings: Settings, resource: Resource, health: ExportHealth
) -> tuple[MeterProvider, PrometheusEndpoint | None]:
    prometheus: PrometheusEndpoint | None = None
    reader: MetricReader
    if settings.metrics_exporter == "prometheus":
        reader, prometheus = _prometheus_reader(settings)
    else:
        reader = PeriodicExportingMetricReader(
            ReportingMetricExporter(_metric_exporter(settings), health),
            export_interval_millis=settings.metric_export_interval_ms,
            export_timeout_millis=settings.metric_export_timeout_ms,
        )
    provider = MeterProvider(
        metric_readers=[reader], resource=resource, views=_views(), shutdown_on_exit=False
    )
    make_fork_safe(reader)
    return provider, prometheus


def _logger_provider(p: _Pipeline) -> LoggerProvider:
    provider = LoggerProvider(resource=p.resource, shutdown_on_exit=False)
    with _loss_counters(p.meter_provider):
        exporter = ReportingLogExporter(_log_exporter(p.settings, p.meter_provider), p.health)
        processor = BatchLogRecordProcessor(
            ScrubbingLogExporter(exporter, p.scrubber),
            **_batch_kwargs(p.settings.blrp),
            meter_provider=p.meter_provider,
        )
    count_queue_drops(processor, "logs", p.health)
    provider.add_log_record_processor(processor)
    return provider


def build_providers(
    settings: Settings, scrubber: Scrubber, *, strict: bool
) -> tuple[Providers, Settings]:
    """Build one provider per enabled signal.

    A signal whose pipeline cannot be built (gRPC exporter missing, Prometheus host unusable)
    raises ``ConfigurationError`` when ``strict``; otherwise it is logged once and switched off,
    and the returned settings say so. Traces always get a provider (unless the SDK is disabled):
    with their export off it only makes the span contexts.
    """
    resource = build_resource(settings)
    health = ExportHealth(settings.export_report_interval_s)
    # Metrics first: the span and log pipelines report their own losses through its provider.
    builders: dict[Signal, Callable[[], Any]] = {
        "metrics": lambda: _meter_provider(settings, resource, health),
        "traces": lambda: _tracer_provider(pipeline()),
        "logs": lambda: _logger_provider(pipeline()),
    }
    built: dict[str, Any] = {}

    def pipeline() -> _Pipeline:
        meter_provider = built["metrics"][0] if built["metrics"] is not None else None
        return _Pipeline(settings, resource, scrubber, health, meter_provider)

    problems = list(settings.problems)
    for signal, build in builders.items():
        built[signal] = None
        if settings.exporter(signal) != "none":
            try:
                built[signal] = build()
            except ConfigurationError as exc:
                if strict:
                    raise
                problems.append(str(exc))
                switched_off: dict[str, Any] = {f"{signal}_exporter": "none"}
                settings = replace(settings, **switched_off)
        if signal == "traces" and built[signal] is None and not settings.sdk_disabled:
            built[signal] = build()  # no export: the span contexts still come from the sampler
    meter_provider, prometheus = built["metrics"] if built["metrics"] is not None else (None, None)
    providers = Providers(
        resource=resource,
        tracer_provider=built["traces"],
        meter_provider=meter_provider,
        logger_provider=built["logs"],
        prometheus=prometheus,
        export_health=health,
    )
    return providers, replace(settings, problems=tuple(problems))


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on host:port (used by doctor)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
