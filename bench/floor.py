"""The floor: the telemetry otel_dist produces for the bench app, wired by hand on the bare SDK.

This is the reference otel_dist must beat, so it is kept as small as a careful engineer would
write it and no smaller: the SDK's own batch span and log processors and periodic metric reader
with the OTLP/HTTP exporters (configured from the same ``OTEL_*`` variables, sampler included),
one pure-ASGI middleware making the SERVER span and the request-duration histogram, two engine
listeners making the SQL span and the operation-duration histogram, one structlog processor adding
the ids, and the SDK's logging handler exporting the app's log lines. No scrubbing, no request
ids, no response headers, no export-health accounting, no fork or exit handling: what otel_dist
adds on top of this is what the bench's "vs floor" rows price. FastAPI's own native telemetry is
switched off so the middleware is the only HTTP instrumentation, as under otel_dist.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog
from fastapi import FastAPI
from opentelemetry import _logs, metrics, propagate, trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import event
from sqlalchemy.engine import Engine

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

_SQL_SPAN = "_bench_floor_span"
_SQL_START = "_bench_floor_start"


def install(app: FastAPI, engine: Engine) -> None:
    """Wire traces, metrics and logs for ``app`` and ``engine`` by hand."""
    resource = Resource.create()  # service.name from OTEL_SERVICE_NAME, as every setup
    tracer_provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    _logs.set_logger_provider(logger_provider)
    logging.getLogger().addHandler(LoggingHandler(logger_provider=logger_provider))
    _add_ids_to_structlog()
    _listen_to_engine(engine)
    _switch_off_native_telemetry(app)
    app.add_middleware(_ServerSpan)


def _switch_off_native_telemetry(app: FastAPI) -> None:
    # FastAPI 0.165+ traces every request by itself once a global provider is set (plus spans for
    # dependencies, the endpoint and serialisation). The floor's one middleware is the only HTTP
    # instrumentation, as otel_dist drives exactly one per request; the app was built without a
    # ``telemetry=`` argument, so its config is switched off where FastAPI keeps it.
    config = vars(app).get("_telemetry")
    if isinstance(config, dict):
        config.update(tracing=False, metrics=False, logs=False, operation_spans=False)


class _ServerSpan:
    """The SERVER span and ``http.server.request.duration`` for every HTTP request."""

    def __init__(self, app: Asgi) -> None:
        self.app = app
        self.tracer = trace.get_tracer("bench.floor")
        self.duration = metrics.get_meter("bench.floor").create_histogram(
            "http.server.request.duration", unit="s"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        headers = scope["headers"]
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        with self.tracer.start_as_current_span(
            method,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as span:
            try:
                await self.app(scope, receive, send_noting_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                attributes: dict[str, Any] = {
                    "http.request.method": method,
                    "http.response.status_code": status,
                }
                if route is not None:
                    attributes["http.route"] = route
                    span.update_name(f"{method} {route}")
                span.set_attributes(attributes)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                self.duration.record(time.perf_counter() - start, attributes)


def _listen_to_engine(engine: Engine) -> None:
    tracer = trace.get_tracer("bench.floor")
    duration = metrics.get_meter("bench.floor").create_histogram(
        "db.client.operation.duration", unit="s"
    )
    system = {"db.system.name": engine.dialect.name}

    @event.listens_for(engine, "before_cursor_execute")
    def _start(
        _conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        operation = statement.split(None, 1)[0].upper()
        span = tracer.start_span(
            operation, kind=SpanKind.CLIENT, attributes={**system, "db.query.text": statement}
        )
        setattr(context, _SQL_SPAN, span)
        setattr(context, _SQL_START, time.perf_counter())

    @event.listens_for(engine, "after_cursor_execute")
    def _end(
        _conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        duration.record(time.perf_counter() - getattr(context, _SQL_START), system)
        getattr(context, _SQL_SPAN).end()

    @event.listens_for(engine, "handle_error")
    def _fail(error: Any) -> None:
        span = getattr(error.execution_context, _SQL_SPAN, None)
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, type(error.original_exception).__name__))
            span.end()


def _add_ids_to_structlog() -> None:
    def add_ids(
        _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event_dict["trace_id"] = format(context.trace_id, "032x")
            event_dict["span_id"] = format(context.span_id, "016x")
        return event_dict

    processors = list(structlog.get_config()["processors"])
    structlog.configure(processors=[add_ids, *processors])
