"""The sink against the real SDK OTLP/HTTP exporters, raw HTTP, and its CLI in a subprocess."""

from __future__ import annotations

import gzip
import signal
import sys
import zlib
from collections.abc import Callable

import httpx
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider, TraceBasedExemplarFilter
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from otel_dist.tools.sink import OtlpSink, SpanRecord, decode_any_value
from support.servers import ServerProcess, free_port

RESOURCE = Resource.create({"service.name": "sink-test", "deployment.environment.name": "test"})
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _finished_spans(name: str = "work") -> tuple[ReadableSpan, ...]:
    """Spans ended by a throwaway provider, to hand to an exporter's ``export`` directly."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("test").start_as_current_span(name):
        pass
    provider.shutdown()
    return memory.get_finished_spans()


@pytest.mark.parametrize(
    "compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate]
)
def test_exported_spans_decode_with_parent_attributes_event_link_and_status(
    otlp_sink: OtlpSink, compression: Compression
) -> None:
    provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    exporter = OTLPSpanExporter(endpoint=f"{otlp_sink.endpoint}/v1/traces", compression=compression)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("sink.tests", "1.2.3")
    with tracer.start_as_current_span("GET /items/{item_id}", kind=SpanKind.SERVER) as parent:
        link_context = parent.get_span_context()
        with tracer.start_as_current_span(
            "SELECT items",
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": "sqlite", "db.rows": 3, "ok": True, "tags": ["a", "b"]},
            links=[Link(link_context, {"link.kind": "self"})],
        ) as child:
            child.add_event("cache.miss", {"cache.key": "item:7"})
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()

    spans = {span.name: span for span in otlp_sink.spans()}
    assert set(spans) == {"GET /items/{item_id}", "SELECT items"}
    server, client = spans["GET /items/{item_id}"], spans["SELECT items"]

    assert server.kind == "SERVER"
    assert server.parent_span_id == ""
    assert server.status_code == "UNSET"
    assert server.trace_id == f"{link_context.trace_id:032x}"
    assert server.span_id == f"{link_context.span_id:016x}"

    assert client.kind == "CLIENT"
    assert client.trace_id == server.trace_id
    assert client.parent_span_id == server.span_id
    assert len(client.span_id) == 16
    assert client.attributes == {
        "db.system.name": "sqlite",
        "db.rows": 3,
        "ok": True,
        "tags": ["a", "b"],
    }
    assert client.status_code == "ERROR"
    assert client.status_message == "boom"
    assert [(e["name"], e["attributes"]) for e in client.events] == [
        ("cache.miss", {"cache.key": "item:7"})
    ]
    assert client.links == [
        {
            "trace_id": server.trace_id,
            "span_id": server.span_id,
            "attributes": {"link.kind": "self"},
        }
    ]
    assert client.resource["service.name"] == "sink-test"
    assert client.scope == "sink.tests"
    assert client.flags & 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE: the field is passed through
    assert 0 < client.start_ns <= client.end_ns
    assert otlp_sink.requests_received["traces"] == 2
    assert otlp_sink.bytes_received["traces"] > 0


def test_histogram_exemplar_points_at_the_span_it_was_recorded_in(otlp_sink: OtlpSink) -> None:
    tracer_provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{otlp_sink.endpoint}/v1/metrics"),
        export_interval_millis=3_600_000,
    )
    meter_provider = MeterProvider(
        metric_readers=[reader],
        resource=RESOURCE,
        exemplar_filter=TraceBasedExemplarFilter(),
        shutdown_on_exit=False,
    )
    meter = meter_provider.get_meter("sink.tests")
    duration = meter.create_histogram("http.server.request.duration", unit="s")
    requests = meter.create_counter("app.requests", unit="{request}")
    route = {"http.route": "/items/{item_id}"}

    with tracer_provider.get_tracer("sink.tests").start_as_current_span("request") as span:
        duration.record(0.25, route)
        requests.add(2, route)
    duration.record(0.5, route)
    meter_provider.shutdown()  # collects and exports once
    tracer_provider.shutdown()

    points = {point.name: point for point in otlp_sink.metrics()}
    assert len(otlp_sink.metrics()) == 2
    histogram = points["http.server.request.duration"]
    assert histogram.kind == "histogram"
    assert histogram.unit == "s"
    assert histogram.attributes == route
    assert histogram.temporality == "CUMULATIVE"
    assert histogram.value["count"] == 2
    assert histogram.value["sum"] == pytest.approx(0.75)
    assert histogram.value["min"] == pytest.approx(0.25)
    assert sum(histogram.value["bucket_counts"]) == 2
    assert len(histogram.value["bucket_counts"]) == len(histogram.value["explicit_bounds"]) + 1
    assert histogram.resource["service.name"] == "sink-test"
    assert histogram.scope == "sink.tests"
    assert histogram.time_ns > 0

    context = span.get_span_context()
    assert [(e["trace_id"], e["span_id"], e["value"]) for e in histogram.exemplars] == [
        (f"{context.trace_id:032x}", f"{context.span_id:016x}", 0.25)
    ]

    counter = points["app.requests"]
    assert (counter.kind, counter.value, counter.attributes) == ("sum", 2, route)


def test_log_record_carries_trace_context_and_structured_body(otlp_sink: OtlpSink) -> None:
    tracer_provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    logger_provider = LoggerProvider(resource=RESOURCE, shutdown_on_exit=False)
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{otlp_sink.endpoint}/v1/logs"))
    )
    logger = logger_provider.get_logger("sink.tests.logs")

    with tracer_provider.get_tracer("sink.tests").start_as_current_span("request") as span:
        logger.emit(
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            body="item fetched",
            attributes={"item.id": 7},
            event_name="item.fetched",
        )
    logger.emit(
        severity_number=SeverityNumber.WARN,
        body={"nested": [1, "two", 3.5, False], "raw": b"\x00\x01"},
    )
    logger_provider.shutdown()
    tracer_provider.shutdown()

    first, second = otlp_sink.logs()
    context = span.get_span_context()
    assert first.body == "item fetched"
    assert (first.severity_text, first.severity_number) == ("INFO", 9)
    assert first.trace_id == f"{context.trace_id:032x}"
    assert first.span_id == f"{context.span_id:016x}"
    assert first.attributes == {"item.id": 7}
    assert first.event_name == "item.fetched"
    assert first.resource["service.name"] == "sink-test"
    assert first.scope == "sink.tests.logs"
    assert first.time_ns > 0

    assert second.body == {"nested": [1, "two", 3.5, False], "raw": b"\x00\x01"}
    assert second.severity_number == 13
    assert (second.trace_id, second.span_id) == ("", "")


def test_fail_with_503_makes_the_exporter_report_failure(otlp_sink: OtlpSink) -> None:
    spans = _finished_spans()
    # A short timeout: 503 is retryable and the first backoff (~1 s) would exceed it.
    exporter = OTLPSpanExporter(endpoint=f"{otlp_sink.endpoint}/v1/traces", timeout=0.5)

    otlp_sink.fail_with = 503
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert otlp_sink.rejected_requests >= 1
    assert otlp_sink.spans() == []

    otlp_sink.fail_with = None
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert [span.name for span in otlp_sink.spans()] == ["work"]
    exporter.shutdown()


def _trace_request_bytes() -> bytes:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.name = "raw"
    span.trace_id = bytes(range(1, 17))
    span.span_id = bytes(range(1, 9))
    return bytes(request.SerializeToString())


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", lambda body: body)],
)
def test_success_reply_is_an_empty_protobuf_response(
    otlp_sink: OtlpSink, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    response = httpx.post(
        f"{otlp_sink.endpoint}/v1/traces",
        content=compress(_trace_request_bytes()),
        headers={**PROTOBUF, "Content-Encoding": encoding},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    parsed = ExportTraceServiceResponse()
    parsed.ParseFromString(response.content)
    assert parsed == ExportTraceServiceResponse()
    [span] = otlp_sink.spans()
    assert (span.name, span.trace_id, span.span_id) == (
        "raw",
        bytes(range(1, 17)).hex(),
        "0102030405060708",
    )


def test_unknown_paths_are_404(otlp_sink: OtlpSink) -> None:
    assert (
        httpx.post(f"{otlp_sink.endpoint}/v1/profiles", content=b"", headers=PROTOBUF).status_code
        == 404
    )
    assert httpx.get(f"{otlp_sink.endpoint}/").status_code == 404
    assert httpx.get(f"{otlp_sink.endpoint}/v1/traces").status_code == 405


def test_json_body_is_415(otlp_sink: OtlpSink) -> None:
    response = httpx.post(f"{otlp_sink.endpoint}/v1/logs", json={"resourceLogs": []})
    assert response.status_code == 415
    response = httpx.post(
        f"{otlp_sink.endpoint}/v1/logs", content=b"", headers={**PROTOBUF, "Content-Encoding": "br"}
    )
    assert response.status_code == 415
    assert otlp_sink.logs() == []


def test_undecodable_body_is_400_and_counted(otlp_sink: OtlpSink) -> None:
    url = f"{otlp_sink.endpoint}/v1/metrics"
    assert httpx.post(url, content=b"\xff\xff\xff garbage", headers=PROTOBUF).status_code == 400
    bad_gzip = {**PROTOBUF, "Content-Encoding": "gzip"}
    assert httpx.post(url, content=b"not gzip", headers=bad_gzip).status_code == 400
    assert otlp_sink.bad_requests == 2
    assert otlp_sink.requests_received["metrics"] == 2
    assert otlp_sink.metrics() == []


def test_on_receive_gets_each_batch_and_wait_for_times_out() -> None:
    batches: list[tuple[str, list[SpanRecord]]] = []
    with OtlpSink(
        on_receive=lambda signal_name, records: batches.append((signal_name, records))
    ) as sink:
        exporter = OTLPSpanExporter(endpoint=f"{sink.endpoint}/v1/traces")
        assert exporter.export(_finished_spans("one")) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert sink.wait_for(lambda s: len(s.spans()) == 1, timeout=1)
        assert not sink.wait_for(lambda s: len(s.spans()) == 2, timeout=0.2)
        sink.clear()
        assert sink.spans() == []
        assert sink.requests_received == {"traces": 0, "metrics": 0, "logs": 0}
    assert [(name, [r.name for r in records]) for name, records in batches] == [("traces", ["one"])]


def test_decode_any_value_handles_every_kind() -> None:
    value = AnyValue(
        kvlist_value=KeyValueList(
            values=[
                KeyValue(key="s", value=AnyValue(string_value="x")),
                KeyValue(key="i", value=AnyValue(int_value=-3)),
                KeyValue(key="d", value=AnyValue(double_value=0.5)),
                KeyValue(key="b", value=AnyValue(bool_value=False)),
                KeyValue(key="y", value=AnyValue(bytes_value=b"\xff")),
                KeyValue(
                    key="a",
                    value=AnyValue(
                        array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue()])
                    ),
                ),
            ]
        )
    )
    assert decode_any_value(value) == {
        "s": "x",
        "i": -3,
        "d": 0.5,
        "b": False,
        "y": b"\xff",
        "a": [1, None],
    }


def _start_sink_cli(server_factory: Callable[..., ServerProcess], *extra: str) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "otel_dist.tools.sink", "--port", str(port), *extra]
    # Any HTTP answer (a 404 here) means the sink is listening.
    return server_factory(argv, env={}, port=port, ready_path="/")


@pytest.mark.integration
def test_cli_prints_one_line_per_span_log_and_metric_name_then_stops_after_duration(
    server_factory: Callable[..., ServerProcess],
) -> None:
    cli = _start_sink_cli(server_factory, "--duration", "2")
    endpoint = cli.base_url

    tracer_provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
    )
    logger_provider = LoggerProvider(resource=RESOURCE, shutdown_on_exit=False)
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{endpoint}/v1/logs"))
    )
    meter_provider = MeterProvider(
        metric_readers=[
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"),
                export_interval_millis=3_600_000,
            )
        ],
        resource=RESOURCE,
        shutdown_on_exit=False,
    )
    histogram = meter_provider.get_meter("cli").create_histogram(
        "http.server.request.duration", unit="s"
    )

    with tracer_provider.get_tracer("cli").start_as_current_span(
        "GET /items/{item_id}", kind=SpanKind.SERVER
    ) as span:
        logger_provider.get_logger("cli").emit(
            severity_number=SeverityNumber.INFO, severity_text="INFO", body="item fetched\n\x1b[31m"
        )
        for route in ("/items/{item_id}", "/items/{item_id}", "/healthz"):
            histogram.record(0.01, {"http.route": route})
    for provider in (tracer_provider, logger_provider, meter_provider):
        provider.shutdown()

    assert cli.process.wait(timeout=10) == 0
    lines = cli.output().splitlines()
    trace_id = f"{span.get_span_context().trace_id:032x}"
    [span_line] = [line for line in lines if line.startswith("span ")]
    assert "GET /items/{item_id}  SERVER" in span_line
    assert f"trace={trace_id}" in span_line
    assert span_line.endswith("status=UNSET")
    [log_line] = [line for line in lines if line.startswith("log ")]
    assert "INFO  item fetched\\n\\x1b[31m" in log_line  # control characters escaped
    assert f"trace={trace_id}" in log_line
    [metric_line] = [line for line in lines if line.startswith("metric ")]
    assert metric_line.startswith("metric http.server.request.duration histogram count=")
    assert "(+1 more series)" in metric_line


@pytest.mark.integration
def test_cli_exits_cleanly_on_sigterm(server_factory: Callable[..., ServerProcess]) -> None:
    cli = _start_sink_cli(server_factory)
    assert cli.stop(signal.SIGTERM, timeout=5) == 0
    assert "listening on http://127.0.0.1:" in cli.output()
