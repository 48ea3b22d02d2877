"""The text of ``make demo``'s tour: each request with the telemetry it produced.

``examples/demo.py`` sends the requests and keeps what the shop exports in an ``OtlpSink``; this
module turns one response and the sink's records into lines: the response with its ids, the
request's spans as a tree (span id, parent, duration, status), its log records, and the metric
series it was counted in. The metrics as a whole are summarised once, at the end. Everything
received is untrusted text, so it is printed on one line each, without terminal escapes, and
never shortened: an id is always whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

# The demo's only import of the sink: the rest of examples/ goes through this module.
from otel_dist.tools.sink import LogRecordData, MetricPoint, OtlpSink, SpanRecord

__all__ = [
    "OtlpSink",
    "Step",
    "metric_summary_lines",
    "step_lines",
    "trace_ids_in_order",
    "trace_lines",
]

SHOWN_HEADERS = ("x-request-id", "traceresponse", "server-timing")
# Attributes that repeat what a line already says, or that are too long for one line.
HIDDEN_LOG_ATTRIBUTES = {"exception.stacktrace", "code.file.path", "code.function.name"}


@dataclass(frozen=True)
class Step:
    """One request of the tour and the response the shop gave."""

    number: int
    title: str
    response: httpx.Response

    @property
    def trace_id(self) -> str:
        """The trace id from the ``traceresponse`` header ("" if there is none)."""
        return self._traceresponse_field(1)

    @property
    def span_id(self) -> str:
        """The request (SERVER) span's id from the ``traceresponse`` header."""
        return self._traceresponse_field(2)

    @property
    def request_id(self) -> str:
        """The ``X-Request-ID`` the shop answered with."""
        return self.response.headers.get("x-request-id", "")

    def _traceresponse_field(self, index: int) -> str:
        fields = self.response.headers.get("traceresponse", "").split("-")
        return fields[index] if len(fields) == 4 else ""


def one_line(value: Any) -> str:
    """``value`` as one printable line: JSON for non-strings, escapes for control characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


# --- one step ------------------------------------------------------------------------------------


def step_lines(
    step: Step,
    spans: Sequence[SpanRecord],
    logs: Sequence[LogRecordData],
    metrics: Sequence[MetricPoint],
) -> list[str]:
    """The whole text of one step: the response, then the telemetry of its trace."""
    request = step.response.request
    lines = [
        f"Step {step.number}. {step.title}",
        f"  {request.method} {request.url.path} -> {step.response.status_code}",
        f"  ids: trace_id={step.trace_id or '-'} span_id={step.span_id or '-'} "
        f"request_id={one_line(step.request_id) or '-'}",
    ]
    lines += [
        f"  {name}: {one_line(step.response.headers[name])}"
        for name in SHOWN_HEADERS
        if name in step.response.headers
    ]
    lines.append(f"  body: {one_line(step.response.text)}")
    lines += trace_lines(step.trace_id, spans, logs)
    lines += step_metric_lines(step.trace_id, spans, metrics)
    return lines


def trace_lines(
    trace_id: str, spans: Sequence[SpanRecord], logs: Sequence[LogRecordData]
) -> list[str]:
    """The spans of one trace as a tree, then its log records in the order they were made."""
    own_spans = [span for span in spans if span.trace_id == trace_id]
    own_logs = sorted((log for log in logs if log.trace_id == trace_id), key=lambda r: r.time_ns)
    lines = [f"  spans of trace {trace_id} (span id, parent, duration, status):"]
    lines += [f"    {line}" for line in span_tree(own_spans)] or ["    (none received)"]
    lines.append(f"  log records of trace {trace_id}:")
    lines += [f"    {log_line(record)}" for record in own_logs] or ["    (none)"]
    return lines


def span_tree(spans: Sequence[SpanRecord]) -> list[str]:
    """One line per span, children under their parent, siblings in start order."""
    ids = {span.span_id for span in spans}
    children: dict[str, list[SpanRecord]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = span.parent_span_id if span.parent_span_id in ids else ""
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str, indent: str) -> None:
        siblings = children.get(parent, [])
        for index, span in enumerate(siblings):
            last = index == len(siblings) - 1
            branch = "" if not parent else ("└─ " if last else "├─ ")
            lines.append(f"{indent}{branch}{span_line(span)}")
            walk(span.span_id, indent + ("" if not parent else ("   " if last else "│  ")))

    walk("", "")
    return lines


def span_line(span: SpanRecord) -> str:
    """``name  KIND  span=<id>  parent=<id or ->  <ms> ms  STATUS[: message]``."""
    milliseconds = span.duration_ms
    duration = f"{milliseconds:.1f}" if milliseconds >= 1 else f"{milliseconds:.3f}"
    status = span.status_code
    if span.status_message:
        status += f": {one_line(span.status_message)}"
    return (
        f"{one_line(span.name)}  {span.kind}  span={span.span_id}  "
        f"parent={span.parent_span_id or '-'}  {duration} ms  {status}"
    )


def log_line(record: LogRecordData) -> str:
    """``SEVERITY  first line of the body  span=<id>  {attributes}``; a traceback is counted."""
    body = record.body if isinstance(record.body, str) else one_line(record.body)
    first, *rest = body.splitlines() or [""]
    line = f"{one_line(record.severity_text or record.severity_number)}  {one_line(first)}"
    line += f"  span={record.span_id or '-'}"
    shown = {k: v for k, v in record.attributes.items() if k not in HIDDEN_LOG_ATTRIBUTES}
    if shown:
        line += "  {" + ", ".join(f"{k}={one_line(v)}" for k, v in shown.items()) + "}"
    stacktrace = record.attributes.get("exception.stacktrace")
    if isinstance(stacktrace, str):
        line += f"  (traceback of {len(stacktrace.splitlines())} lines in exception.stacktrace)"
    elif rest:
        line += f"  (+{len(rest)} more lines)"
    return line


# For each metric a request is counted in: the span attributes that name its series.
SERIES_OF_SPAN = {
    "http.server.request.duration": (
        "http.request.method",
        "http.route",
        "http.response.status_code",
    ),
    "db.client.operation.duration": ("db.system.name", "db.operation.name", "db.collection.name"),
}


def step_metric_lines(
    trace_id: str, spans: Sequence[SpanRecord], metrics: Sequence[MetricPoint]
) -> list[str]:
    """The series the request's spans were counted in, as last exported; exemplars marked."""
    own_spans = [span for span in spans if span.trace_id == trace_id]
    exemplar_series = {
        series_key(point)
        for point in metrics
        if any(exemplar["trace_id"] == trace_id for exemplar in point.exemplars)
    }
    lines = ["  metric series this request was counted in (last export, cumulative):"]
    for point in latest_points(metrics):
        key = series_key(point)
        if key in exemplar_series or any(counted_in(span, point) for span in own_spans):
            mark = "  exemplar: this trace" if key in exemplar_series else ""
            lines.append(f"    {point_line(point)}{mark}")
    return lines if len(lines) > 1 else [*lines, "    (none)"]


def counted_in(span: SpanRecord, point: MetricPoint) -> bool:
    """Whether ``point``'s series is one ``span``'s measurement went to."""
    keys = SERIES_OF_SPAN.get(point.name)
    if keys is None or keys[1] not in span.attributes:
        return False
    return all(point.attributes.get(key) == span.attributes.get(key) for key in keys)


# --- metrics -------------------------------------------------------------------------------------


def series_key(point: MetricPoint) -> tuple[str, str, str]:
    """Metric name, attributes and the exporting process: one time series."""
    instance = str(point.resource.get("service.instance.id", ""))
    return point.name, json.dumps(point.attributes, sort_keys=True, default=repr), instance


def latest_points(metrics: Iterable[MetricPoint]) -> list[MetricPoint]:
    """The last point received of each series, in first-seen order."""
    latest: dict[tuple[str, str, str], MetricPoint] = {}
    for point in metrics:
        key = series_key(point)
        if key not in latest or point.time_ns >= latest[key].time_ns:
            latest[key] = point
    return list(latest.values())


def point_line(point: MetricPoint) -> str:
    """``name {attributes} count=.. sum=..`` for histograms, ``name {attributes} value=..``."""
    attributes = ", ".join(f"{k}={one_line(v)}" for k, v in point.attributes.items())
    unit = _unit(point.unit)
    if isinstance(point.value, dict):
        value = f"count={point.value.get('count')} sum={_number(point.value.get('sum'))}{unit}"
    else:
        value = f"value={_number(point.value)}{unit}"
    return f"{one_line(point.name)} {{{attributes}}} {value}"


def metric_summary_lines(metrics: Sequence[MetricPoint]) -> list[str]:
    """One line per metric name over its last exported points: series count and totals."""
    by_name: dict[str, list[MetricPoint]] = {}
    for point in latest_points(metrics):
        by_name.setdefault(point.name, []).append(point)
    lines = [f"Metrics: {len(by_name)} names, as last exported (summed over their series)"]
    width = max((len(name) for name in by_name), default=0)
    for name, points in by_name.items():
        first = points[0]
        unit = _unit(first.unit)
        if isinstance(first.value, dict):
            count = sum(int(p.value.get("count") or 0) for p in points)
            total = sum(p.value.get("sum") or 0 for p in points)
            value = f"count={count} sum={_number(total)}{unit}"
        else:
            value = f"value={_number(sum(p.value or 0 for p in points))}{unit}"
        series = f"{len(points)} series" if len(points) > 1 else "1 series"
        lines.append(f"  {one_line(name):<{width}}  {first.kind:<9}  {series:<9}  {value}")
    return lines


def _unit(unit: str) -> str:
    # "1" is UCUM's dimensionless unit: nothing worth printing.
    return f" {one_line(unit)}" if unit and unit != "1" else ""


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def trace_ids_in_order(spans: Sequence[SpanRecord]) -> list[str]:
    """The trace ids of the root spans received, in the order the requests started."""
    roots = sorted((s for s in spans if not s.parent_span_id), key=lambda s: s.start_ns)
    return list(dict.fromkeys(span.trace_id for span in roots))
