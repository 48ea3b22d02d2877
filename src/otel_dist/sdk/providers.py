"""SDK providers built from the settings: resource, sampler, batch processors, views.

Nothing here is global: ``build_providers`` returns the three providers (and the problems that
kept a signal from exporting) and the caller decides to install them. The exporters themselves,
wrapped to scrub and report, come from ``exporters``; the Prometheus endpoint from ``prometheus``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import DropAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from otel_dist.internal_log import internal_logger
from otel_dist.process import make_fork_safe, process_identity
from otel_dist.scrub import Scrubber
from otel_dist.sdk.export_health import (
    ExportHealth,
    count_queue_drops,
)
from otel_dist.sdk.exporters import log_export, metric_export, span_export
from otel_dist.sdk.native import NativeSpanExport
from otel_dist.sdk.prometheus import PrometheusEndpoint, prometheus_reader
from otel_dist.settings import SIGNALS, BatchSettings, ConfigurationError, Settings, Signal
from otel_dist.version import __version__

_log = internal_logger()
_T = TypeVar("_T")
_P = TypeVar("_P")

# Instruments that cost a measurement per request and that no dashboard of ours reads.
_DROPPED_INSTRUMENTS = (
    "http.server.request.body.size",
    "http.server.response.body.size",
    "http.server.request.size",
    "http.server.response.size",
)
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
    """The SDK providers for the enabled signals (None when a signal is off).

    ``exporting`` names the signals whose export pipeline was built: the tracer provider exists
    without one (it still makes the span contexts).
    """

    resource: Resource
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    logger_provider: LoggerProvider | None
    prometheus: PrometheusEndpoint | None = None
    export_health: ExportHealth | None = None
    exporting: frozenset[Signal] = frozenset()
    native_spans: NativeSpanExport | None = None  # spans leave through fastotel

    def exports(self, signal: Signal) -> bool:
        """True when ``signal`` leaves the process."""
        return signal in self.exporting


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


@dataclass(frozen=True)
class _Pipeline:
    """What every signal's pipeline shares: the resource, scrubbing and loss accounting."""

    settings: Settings
    resource: Resource
    scrubber: Scrubber
    health: ExportHealth
    meter_provider: MeterProvider | None  # for the SDK's own metrics; None when metrics are off
    native: bool = False  # the plan chose fastotel for spans


def _tracer_provider(p: _Pipeline, export: bool) -> TracerProvider:
    """The tracer provider, with its export pipeline when ``export``.

    Built for every exporter: the sampler's span contexts are what requests continue, forward
    on outgoing calls and show in headers, logs and error bodies, exported or not. With nothing
    to export it has no processor (no queue, no export thread).
    """
    provider = TracerProvider(
        resource=p.resource, sampler=build_sampler(p.settings), shutdown_on_exit=False
    )
    if export:
        provider.add_span_processor(_native_span_processor(p) or _sdk_span_processor(p))
    return provider


def _sdk_span_processor(p: _Pipeline) -> BatchSpanProcessor:
    return _batch_processor(p, "traces", BatchSpanProcessor, span_export, p.settings.bsp)


def _native_span_processor(p: _Pipeline) -> NativeSpanExport | None:
    """The fastotel processor when the plan chose it; None (and why, once) if it cannot start."""
    if not p.native:
        return None
    try:
        return NativeSpanExport(
            p.settings, p.scrubber, p.health, p.meter_provider, lambda: _sdk_span_processor(p)
        )
    except Exception as exc:  # an import or a constructor error: the SDK path takes over
        _log.warning(
            "otel-dist: native span export could not start (%s: %s); spans are exported by the SDK",
            type(exc).__name__,
            exc,
        )
        return None


def _batch_processor(
    p: _Pipeline,
    signal: Signal,
    processor_class: Callable[..., _P],
    wrapped_export: Callable[..., Any],
    batch: BatchSettings,
) -> _P:
    """A batch processor around the signal's wrapped exporter, its losses counted."""
    with _loss_counters(p.meter_provider):
        processor = processor_class(
            wrapped_export(p.settings, p.scrubber, p.health, p.meter_provider),
            **batch.processor_kwargs(),
            meter_provider=p.meter_provider,
        )
    count_queue_drops(processor, signal, p.health)
    return processor


def _views() -> list[View]:
    return [
        View(instrument_name=name, aggregation=DropAggregation()) for name in _DROPPED_INSTRUMENTS
    ]


def _meter_provider(
    settings: Settings, resource: Resource, scrubber: Scrubber, health: ExportHealth
) -> tuple[MeterProvider, PrometheusEndpoint | None]:
    prometheus: PrometheusEndpoint | None = None
    reader: MetricReader
    if settings.metrics_exporter == "prometheus":
        reader, prometheus = prometheus_reader(settings)
    else:
        reader = PeriodicExportingMetricReader(
            metric_export(settings, scrubber, health),
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
    provider.add_log_record_processor(
        _batch_processor(p, "logs", BatchLogRecordProcessor, log_export, p.settings.blrp)
    )
    return provider


def build_providers(
    settings: Settings,
    scrubber: Scrubber,
    *,
    strict: bool,
    export: Collection[Signal] | None = None,
    native: bool = False,
) -> tuple[Providers, list[str]]:
    """Build one provider per exported signal (the tracer provider always); and the problems.

    ``export`` names the signals to export (default: those whose exporter is not ``none``; the
    plan passes the ones it decided to run). A signal whose pipeline cannot be built all the
    same (gRPC exporter missing, Prometheus host unusable) raises ``ConfigurationError`` when
    ``strict``; otherwise it is off and its problem is returned. Traces always get a provider
    (unless the SDK is disabled): with their export off it only makes the span contexts.
    ``native``: spans leave through fastotel (the plan's decision), or through the SDK if it
    cannot start.
    """
    wanted = set(
        export
        if export is not None
        else (signal for signal in SIGNALS if settings.exporter(signal) != "none")
    )
    resource = build_resource(settings)
    health = ExportHealth(settings.export_report_interval_s)
    problems: list[str] = []

    def attempt(signal: Signal, build: Callable[[], _T]) -> _T | None:
        if signal not in wanted:
            return None
        try:
            return build()
        except ConfigurationError as exc:
            if strict:
                raise
            problems.append(str(exc))
            wanted.discard(signal)
            return None

    # Metrics first: the span and log pipelines report their own losses through its provider.
    metrics = attempt("metrics", lambda: _meter_provider(settings, resource, scrubber, health))
    meter_provider, prometheus = metrics if metrics is not None else (None, None)
    pipeline = _Pipeline(settings, resource, scrubber, health, meter_provider, native)
    tracer_provider = attempt("traces", lambda: _tracer_provider(pipeline, export=True))
    if tracer_provider is None and not settings.sdk_disabled:
        # No export: the span contexts still come from the sampler.
        tracer_provider = _tracer_provider(pipeline, export=False)
    providers = Providers(
        resource=resource,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=attempt("logs", lambda: _logger_provider(pipeline)),
        prometheus=prometheus,
        export_health=health,
        exporting=frozenset(wanted),
        native_spans=_native_of(tracer_provider),
    )
    return providers, problems


def _native_of(tracer_provider: TracerProvider | None) -> NativeSpanExport | None:
    if tracer_provider is None:
        return None
    processors = tracer_provider._active_span_processor._span_processors
    return next((x for x in processors if isinstance(x, NativeSpanExport)), None)
