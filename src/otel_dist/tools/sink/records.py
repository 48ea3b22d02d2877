"""The OTLP records the sink keeps: protobuf export requests decoded into plain frozen dataclasses.

Only the ``opentelemetry-proto`` messages are used, so the sink checks the wire format the SDK
exporters produce rather than a re-implementation of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
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

SIGNALS = ("traces", "metrics", "logs")
"""The signal names used as keys of ``OtlpSink.requests_received`` and passed to ``on_receive``."""

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
