"""A local OTLP/HTTP receiver: what an app really sends, decoded into plain records.

``OtlpSink`` (``receiver``) answers the three OTLP/HTTP paths the way a collector does and keeps
every item as a record (``records``); ``otel-dist sink`` (``printer``) runs one in the
foreground and prints a line per item. A tool for tests, the demo and the benchmark: the runtime
never imports it.
"""

from __future__ import annotations

from otel_dist.tools.sink.printer import main
from otel_dist.tools.sink.receiver import OtlpSink
from otel_dist.tools.sink.records import (
    SIGNALS,
    LogRecordData,
    MetricPoint,
    SpanRecord,
    decode_any_value,
    decode_attributes,
)

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
