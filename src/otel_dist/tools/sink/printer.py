"""``otel-dist sink``: a sink in the foreground that prints one line per item it receives."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, TextIO

from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber

from otel_dist.tools.sink.receiver import OtlpSink
from otel_dist.tools.sink.records import LogRecordData, MetricPoint, SpanRecord, _short_enum_name


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
