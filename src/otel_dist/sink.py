"""A local OTLP/HTTP receiver: what an app really sends, decoded into plain records.

``OtlpSink`` answers ``POST /v1/traces``, ``/v1/metrics`` and ``/v1/logs`` the way a collector
does (protobuf only, gzip/deflate bodies, an empty ``Export*ServiceResponse`` on success) and keeps
every item as a frozen dataclass. Integration tests point real exporters at it and assert on the
records; ``otel-dist sink`` runs it in the foreground and prints one line per item received.

Only the stdlib HTTP server and the ``opentelemetry-proto`` messages are used, so the sink checks
the wire format the SDK exporters produce rather than a re-implementation of it.
"""

from __future__ import annotations

import argparse
import contextlib
import email.message
import json
import logging
import signal
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, TextIO

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Exemplar,
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    SummaryDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

__all__ = [
    "SIGNALS",
    "LogRecordData",
    "MetricPoint",
    "OtlpSink",
    "SpanRecord",
    "decode_any_value",
    "decode_attributes",
    "main",
]

_logger = logging.getLogger(__name__)

SIGNALS = ("traces", "metrics", "logs")
"""The signal names used as keys of ``OtlpSink.requests_received`` and passed to ``on_receive``."""

# A collector's default max request size; above it the body is refused before it is read.
_MAX_BODY_BYTES = 64 * 1024 * 1024
_PROTOBUF = "application/x-protobuf"


# --- decoded records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SpanRecord:
    """One span as received: ids are lowercase hex, enums are short names ("SERVER", "ERROR")."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: str
    status_message: str
    events: list[dict[str, Any]]
    links: list[dict[str, Any]]
    resource: dict[str, Any]
    scope: str
    start_ns: int
    end_ns: int
    flags: int

    @property
    def duration_ms(self) -> float:
        """Wall time between start and end, in milliseconds."""
        return (self.end_ns - self.start_ns) / 1e6


@dataclass(frozen=True)
class LogRecordData:
    """One log record as received; ``trace_id``/``span_id`` are "" when it had no span context."""

    body: Any
    severity_text: str
    severity_number: int
    trace_id: str
    span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    event_name: str
    time_ns: int = 0


@dataclass(frozen=True)
class MetricPoint:
    """One data point of one metric.

    ``value`` is a number for "sum" and "gauge"; for "histogram" a dict with ``count``, ``sum``,
    ``bucket_counts``, ``explicit_bounds``, ``min`` and ``max``; for "exponential_histogram" a
    dict with ``count``, ``sum``, ``scale``, ``zero_count``, ``positive``, ``negative``, ``min``,
    ``max``; for "summary" a dict with ``count``, ``sum`` and ``quantile_values``.
    ``temporality`` is "CUMULATIVE" or "DELTA" for sums and histograms, "" otherwise.
    """

    name: str
    unit: str
    kind: str
    attributes: dict[str, Any]
    value: Any
    exemplars: list[dict[str, Any]]
    resource: dict[str, Any]
    scope: str
    time_ns: int
    temporality: str = ""


# --- protobuf → plain Python ---------------------------------------------------------------------


def decode_any_value(value: AnyValue) -> Any:
    """Convert an OTLP ``AnyValue`` to str, bool, int, float, bytes, list, dict or None."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [decode_any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return bytes(value.bytes_value)
    return getattr(value, which)


def decode_attributes(attributes: Sequence[KeyValue]) -> dict[str, Any]:
    """Convert OTLP key/value pairs to a dict, in the order they were sent."""
    return {item.key: decode_any_value(item.value) for item in attributes}


def _hex_id(raw: bytes) -> str:
    # Exporters send absent ids as empty bytes; all-zero ids are invalid ones, so read both as "".
    return raw.hex() if any(raw) else ""


def _short_enum_name(name_of: Callable[[int], str], number: int, prefix: str) -> str:
    try:
        return name_of(number).removeprefix(prefix)
    except ValueError:  # a value newer than our proto package: show the number
        return str(number)


def _scope_name(scope: InstrumentationScope) -> str:
    return str(scope.name)


def _resource(resource: Resource) -> dict[str, Any]:
    return decode_attributes(resource.attributes)


def _spans_from(request: ExportTraceServiceRequest) -> list[SpanRecord]:
    records: list[SpanRecord] = []
    for resource_spans in request.resource_spans:
        resource = _resource(resource_spans.resource)
        for scope_spans in resource_spans.scope_spans:
            scope = _scope_name(scope_spans.scope)
            records.extend(_span_record(span, resource, scope) for span in scope_spans.spans)
    return records


def _span_record(span: Span, resource: dict[str, Any], scope: str) -> SpanRecord:
    return SpanRecord(
        name=span.name,
        kind=_short_enum_name(Span.SpanKind.Name, span.kind, "SPAN_KIND_"),
        trace_id=_hex_id(span.trace_id),
        span_id=_hex_id(span.span_id),
        parent_span_id=_hex_id(span.parent_span_id),
        attributes=decode_attributes(span.attributes),
        status_code=_short_enum_name(Status.StatusCode.Name, span.status.code, "STATUS_CODE_"),
        status_message=span.status.message,
        events=[
            {
                "name": event.name,
                "attributes": decode_attributes(event.attributes),
                "time_ns": event.time_unix_nano,
            }
            for event in span.events
        ],
        links=[
            {
                "trace_id": _hex_id(link.trace_id),
                "span_id": _hex_id(link.span_id),
                "attributes": decode_attributes(link.attributes),
            }
            for link in span.links
        ],
        resource=resource,
        scope=scope,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        flags=span.flags,
    )


def _logs_from(request: ExportLogsServiceRequest) -> list[LogRecordData]:
    records: list[LogRecordData] = []
    for resource_logs in request.resource_logs:
        resource = _resource(resource_logs.resource)
        for scope_logs in resource_logs.scope_logs:
            scope = _scope_name(scope_logs.scope)
            records.extend(
                LogRecordData(
                    body=decode_any_value(record.body),
                    severity_text=record.severity_text,
                    severity_number=int(record.severity_number),
                    trace_id=_hex_id(record.trace_id),
                    span_id=_hex_id(record.span_id),
                    attributes=decode_attributes(record.attributes),
                    resource=resource,
                    scope=scope,
                    event_name=record.event_name,
                    time_ns=record.time_unix_nano or record.observed_time_unix_nano,
                )
                for record in scope_logs.log_records
            )
    return records


def _metrics_from(request: ExportMetricsServiceRequest) -> list[MetricPoint]:
    points: list[MetricPoint] = []
    for resource_metrics in request.resource_metrics:
        resource = _resource(resource_metrics.resource)
        for scope_metrics in resource_metrics.scope_metrics:
            scope = _scope_name(scope_metrics.scope)
            for metric in scope_metrics.metrics:
                points.extend(_metric_points(metric, resource, scope))
    return points


def _metric_points(metric: Metric, resource: dict[str, Any], scope: str) -> list[MetricPoint]:
    kind = metric.WhichOneof("data")
    if kind is None or kind not in _POINT_VALUE:
        return []
    data = getattr(metric, kind)
    temporality = ""
    if kind not in {"gauge", "summary"}:
        temporality = _short_enum_name(
            AggregationTemporality.Name, data.aggregation_temporality, "AGGREGATION_TEMPORALITY_"
        )
    return [
        MetricPoint(
            name=metric.name,
            unit=metric.unit,
            kind=kind,
            attributes=decode_attributes(point.attributes),
            value=_POINT_VALUE[kind](point),
            exemplars=[_exemplar(exemplar) for exemplar in getattr(point, "exemplars", ())],
            resource=resource,
            scope=scope,
            time_ns=point.time_unix_nano,
            temporality=temporality,
        )
        for point in data.data_points
    ]


def _number(point: NumberDataPoint | Exemplar) -> float | int | None:
    which = point.WhichOneof("value")
    return None if which is None else getattr(point, which)


def _optional(point: Any, field: str) -> Any:
    return getattr(point, field) if point.HasField(field) else None


def _histogram(point: HistogramDataPoint) -> dict[str, Any]:
    return {
        "count": point.count,
        "sum": _optional(point, "sum"),
        "bucket_counts": list(point.bucket_counts),
        "explicit_bounds": list(point.explicit_bounds),
        "min": _optional(point, "min"),
        "max": _optional(point, "max"),
    }


def _exponential_histogram(point: ExponentialHistogramDataPoint) -> dict[str, Any]:
    return {
        "count": point.count,
        "sum": _optional(point, "sum"),
        "scale": point.scale,
        "zero_count": point.zero_count,
        "positive": {
            "offset": point.positive.offset,
            "bucket_counts": list(point.positive.bucket_counts),
        },
        "negative": {
            "offset": point.negative.offset,
            "bucket_counts": list(point.negative.bucket_counts),
        },
        "min": _optional(point, "min"),
        "max": _optional(point, "max"),
    }


def _summary(point: SummaryDataPoint) -> dict[str, Any]:
    return {
        "count": point.count,
        "sum": point.sum,
        "quantile_values": [
            {"quantile": quantile.quantile, "value": quantile.value}
            for quantile in point.quantile_values
        ],
    }


_POINT_VALUE: dict[str, Callable[[Any], Any]] = {
    "sum": _number,
    "gauge": _number,
    "histogram": _histogram,
    "exponential_histogram": _exponential_histogram,
    "summary": _summary,
}


def _exemplar(exemplar: Exemplar) -> dict[str, Any]:
    return {
        "trace_id": _hex_id(exemplar.trace_id),
        "span_id": _hex_id(exemplar.span_id),
        "value": _number(exemplar),
        "attributes": decode_attributes(exemplar.filtered_attributes),
        "time_ns": exemplar.time_unix_nano,
    }


def _parse_traces(payload: bytes) -> list[SpanRecord]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(payload)
    return _spans_from(request)


def _parse_metrics(payload: bytes) -> list[MetricPoint]:
    request = ExportMetricsServiceRequest()
    request.ParseFromString(payload)
    return _metrics_from(request)


def _parse_logs(payload: bytes) -> list[LogRecordData]:
    request = ExportLogsServiceRequest()
    request.ParseFromString(payload)
    return _logs_from(request)


@dataclass(frozen=True)
class _Route:
    signal: str
    parse: Callable[[bytes], list[Any]]
    success_body: bytes


_ROUTES = {
    "/v1/traces": _Route("traces", _parse_traces, ExportTraceServiceResponse().SerializeToString()),
    "/v1/metrics": _Route(
        "metrics", _parse_metrics, ExportMetricsServiceResponse().SerializeToString()
    ),
    "/v1/logs": _Route("logs", _parse_logs, ExportLogsServiceResponse().SerializeToString()),
}


# --- HTTP ----------------------------------------------------------------------------------------


class _RejectedError(Exception):
    """A request the sink answers with ``status`` instead of storing it."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        # HTTP "deflate" is zlib-wrapped; +32 also accepts a gzip header, as curl users send.
        wbits = 32 + zlib.MAX_WBITS
    else:
        raise _RejectedError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"unsupported Content-Encoding {encoding!r}"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        # Bounded, so a small compressed bomb cannot exhaust memory.
        payload = inflater.decompress(body, _MAX_BODY_BYTES + 1)
    except zlib.error as error:
        raise _RejectedError(HTTPStatus.BAD_REQUEST, f"bad {encoding} body: {error}") from None
    if len(payload) > _MAX_BODY_BYTES:
        raise _RejectedError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "decompressed body too large")
    if not inflater.eof:
        raise _RejectedError(HTTPStatus.BAD_REQUEST, f"truncated {encoding} body")
    return payload


class _Server(ThreadingHTTPServer):
    """The HTTP server of one sink; remembers open connections so ``stop`` can end them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], sink: OtlpSink) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sink = sink
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Hang up on idle keep-alive clients so their handler threads end now."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # exporters keep connections alive between batches
    timeout = 60  # a stalled or idle client does not pin a thread for longer
    server: _Server

    def do_POST(self) -> None:
        route = _ROUTES.get(self.path.split("?", 1)[0])
        try:
            body = self._read_body()
            if route is None:
                raise _RejectedError(HTTPStatus.NOT_FOUND, f"no OTLP endpoint at {self.path}")
            self.server.sink._handle(route, self.headers, body)
        except _RejectedError as rejection:
            self._reply(rejection.status, rejection.reason.encode(), "text/plain; charset=utf-8")
            return
        self._reply(HTTPStatus.OK, route.success_body, _PROTOBUF)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] in _ROUTES:
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, b"OTLP endpoints take POST", "text/plain")
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise _RejectedError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise _RejectedError(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        if length > _MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would be taken for the next request
            raise _RejectedError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        return self.rfile.read(length)

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("%s - " + format, self.address_string(), *args)


# --- the sink ------------------------------------------------------------------------------------


class OtlpSink:
    """An OTLP/HTTP receiver on a loopback port that keeps everything it is sent.

    Use it as a context manager, or call ``start``/``stop``. Storage is thread-safe; the
    accessors return copies. ``on_receive(signal, records)`` is called (on a server thread) after
    each accepted export with the signal name ("traces", "metrics" or "logs") and the list of
    decoded records of that request; an exception in it is logged and does not fail the export.
    With ``store=False`` nothing is kept (for long-running use with ``on_receive`` only).

    Counters (reset by ``clear``): ``requests_received[signal]`` counts every POST to that
    signal's path whatever the outcome, ``bytes_received[signal]`` the raw (possibly compressed)
    body bytes, ``bad_requests`` those answered 400, ``rejected_requests`` those answered with
    ``fail_with``. Set ``fail_with`` to an HTTP status (503, 429, 400...) to act as a broken
    collector: every export is then answered with it and not stored.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_receive: Callable[[str, Any], None] | None = None,
        store: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.on_receive = on_receive
        self.store = store
        self.fail_with: int | None = None
        self.requests_received: dict[str, int] = dict.fromkeys(SIGNALS, 0)
        self.bytes_received: dict[str, int] = dict.fromkeys(SIGNALS, 0)
        self.bad_requests = 0
        self.rejected_requests = 0
        self._spans: list[SpanRecord] = []
        self._logs: list[LogRecordData] = []
        self._metrics: list[MetricPoint] = []
        self._records: dict[str, list[Any]] = {
            "traces": self._spans,
            "metrics": self._metrics,
            "logs": self._logs,
        }
        # Reentrant so a wait_for predicate can call spans()/logs() while the condition is held.
        self._changed = threading.Condition(threading.RLock())
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> OtlpSink:
        """Bind the port and serve on a daemon thread; returns the sink for chaining."""
        if self._server is not None:
            msg = "OtlpSink already started"
            raise RuntimeError(msg)
        server = _Server((self.host, self.port), self)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"otlp-sink:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, hang up on open connections and release the port. Safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> OtlpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT``, e.g. ``http://127.0.0.1:4318``."""
        if self._server is None:
            msg = "OtlpSink is not started"
            raise RuntimeError(msg)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # received data

    def spans(self) -> list[SpanRecord]:
        """Every span received so far, in arrival order."""
        with self._changed:
            return list(self._spans)

    def logs(self) -> list[LogRecordData]:
        """Every log record received so far, in arrival order."""
        with self._changed:
            return list(self._logs)

    def metrics(self) -> list[MetricPoint]:
        """Every metric data point received so far, in arrival order."""
        with self._changed:
            return list(self._metrics)

    def wait_for(self, predicate: Callable[[OtlpSink], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(sink)`` is true; False if ``timeout`` seconds pass first.

        The predicate is re-checked after every export and at least every 0.1 s.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.1))
            return True

    def clear(self) -> None:
        """Forget everything received and reset the counters (the dicts are kept, zeroed)."""
        with self._changed:
            for records in self._records.values():
                records.clear()
            for counters in (self.requests_received, self.bytes_received):
                for signal_name in counters:
                    counters[signal_name] = 0
            self.bad_requests = 0
            self.rejected_requests = 0

    # called by the request handler

    def _handle(self, route: _Route, headers: email.message.Message, body: bytes) -> None:
        with self._changed:
            self.requests_received[route.signal] += 1
            self.bytes_received[route.signal] += len(body)
            if self.fail_with is not None:
                self.rejected_requests += 1
                raise _RejectedError(self.fail_with, "sink set to fail_with")
        content_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if content_type != _PROTOBUF:
            raise _RejectedError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"only {_PROTOBUF} is accepted, got {content_type or 'no Content-Type'!r}",
            )
        encoding = headers.get("Content-Encoding", "").strip().lower()
        try:
            records = route.parse(_decompress(body, encoding))
        except _RejectedError as rejection:
            if rejection.status == HTTPStatus.BAD_REQUEST:
                self._count_bad_request()
            raise
        # protobuf ships no type information, so its DecodeError cannot be named here without
        # an ignore; any failure to parse means the body is not an OTLP request.
        except Exception as error:
            self._count_bad_request()
            raise _RejectedError(HTTPStatus.BAD_REQUEST, f"undecodable body: {error}") from None
        self._store(route.signal, records)

    def _count_bad_request(self) -> None:
        with self._changed:
            self.bad_requests += 1

    def _store(self, signal_name: str, records: list[Any]) -> None:
        with self._changed:
            if self.store:
                self._records[signal_name].extend(records)
            self._changed.notify_all()
        if self.on_receive is not None:
            try:
                self.on_receive(signal_name, records)
            except Exception:
                _logger.exception("otel-dist sink: on_receive callback failed")


# --- CLI -----------------------------------------------------------------------------------------


def _one_line(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=_json_default)
    # Received data is untrusted: no newlines or terminal escapes reach the console.
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _json_default(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else repr(value)


def _format_attributes(attributes: dict[str, Any]) -> str:
    if not attributes:
        return ""
    pairs = ", ".join(f"{key}={_one_line(value)}" for key, value in attributes.items())
    return f" {{{pairs}}}"


def _format_span(span: SpanRecord) -> str:
    status = span.status_code
    if span.status_message:
        status += f": {_one_line(span.status_message)}"
    milliseconds = span.duration_ms
    duration = f"{milliseconds:.1f}" if milliseconds >= 1 else f"{milliseconds:.3f}"
    return (
        f"span   {_one_line(span.name)}  {span.kind}  trace={span.trace_id}  "
        f"{duration} ms  status={status}"
    )


def _format_log(record: LogRecordData) -> str:
    severity = record.severity_text or _short_enum_name(
        SeverityNumber.Name, record.severity_number, "SEVERITY_NUMBER_"
    )
    line = f"log    {_one_line(severity)}  {_one_line(record.body)}"
    if record.event_name:
        line += f"  event={_one_line(record.event_name)}"
    if record.trace_id:
        line += f"  trace={record.trace_id}"
    return line


def _format_metric(points: list[MetricPoint]) -> str:
    first = points[0]
    if isinstance(first.value, dict):
        summary = f"count={first.value.get('count')} sum={first.value.get('sum')}"
    else:
        summary = f"value={first.value}"
    line = f"metric {_one_line(first.name)} {first.kind} {summary}"
    line += _format_attributes(first.attributes)
    if len(points) > 1:
        line += f" (+{len(points) - 1} more series)"
    return line


def _format_batch(signal_name: str, records: list[Any]) -> list[str]:
    if signal_name == "traces":
        return [_format_span(span) for span in records]
    if signal_name == "logs":
        return [_format_log(record) for record in records]
    by_name: dict[str, list[MetricPoint]] = {}
    for point in records:
        by_name.setdefault(point.name, []).append(point)
    return [_format_metric(points) for points in by_name.values()]


class _Printer:
    """``on_receive`` for the CLI: one line per item (per metric name), never interleaved."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def __call__(self, signal_name: str, records: Any) -> None:
        lines = _format_batch(signal_name, records)
        with self._lock:
            for line in lines:
                self._out.write(line + "\n")
            self._out.flush()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="otel-dist sink",
        description="Receive OTLP/HTTP (protobuf) and print one line per span, log and metric.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=4318, help="port to listen on (default 4318)")
    parser.add_argument("--duration", type=float, default=None, help="stop by itself after SECONDS")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run a sink in the foreground until SIGINT/SIGTERM or ``--duration``; returns exit code."""
    args = _parse_args(argv)
    stopping = threading.Event()
    sink = OtlpSink(args.host, args.port, on_receive=_Printer(sys.stdout), store=False)
    try:
        sink.start()
    except OSError as error:
        print(f"otel-dist sink: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = (
        {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
        if in_main_thread
        else {}
    )
    try:
        print(
            f"otel-dist sink listening on {sink.endpoint} (/v1/traces, /v1/metrics, /v1/logs)",
            flush=True,
        )
        deadline = None if args.duration is None else time.monotonic() + args.duration
        # Short waits keep the main thread responsive to signals on every platform.
        while not stopping.wait(0.2):
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        sink.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
