"""Export failures: counted, said once per interval on stderr, and exported as SDK self-metrics."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import httpx
import pytest
from opentelemetry._logs import LogRecord
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from otel_dist.scrub import Scrubber
from otel_dist.sdk.export_health import (
    ExportHealth,
    count_queue_drops,
    fold_sdk_export_messages,
)
from otel_dist.sdk.exporters import SpanExport
from otel_dist.sdk.providers import build_providers
from otel_dist.settings import load_settings
from otel_dist.tools.sink import OtlpSink
from support.servers import PID_APP, REPO_ROOT, ServerProcess, free_port, pid_app_env, venv_bin

FAILING = "otel-dist: telemetry export failing"
RECOVERED = "otel-dist: telemetry export recovered"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _health(interval_s: float = 60) -> tuple[ExportHealth, FakeClock, list[str]]:
    clock = FakeClock()
    lines: list[str] = []
    return ExportHealth(interval_s, clock=clock, report=lines.append), clock, lines


def test_first_failure_is_reported_at_once_with_the_totals():
    health, _, lines = _health()
    health.sdk_complained("Failed to export span batch code: None, reason: refused")
    health.exported("traces", 512, ok=False)
    assert lines == [
        "otel-dist: telemetry export failing (Failed to export span batch code: None, reason: "
        "refused); dropped so far: 512 spans, 0 log records, 0 metric exports. Next report in "
        "60 s at the earliest; the app keeps serving."
    ]


def test_failures_within_the_interval_add_up_silently_then_report_again():
    health, clock, lines = _health(interval_s=60)
    health.exported("traces", 10, ok=False)
    clock.now += 30
    health.exported("logs", 4, ok=False)
    health.queue_dropped("traces", 3)
    health.exported("metrics", 1, ok=False)
    assert len(lines) == 1
    clock.now += 30
    health.exported("traces", 1, ok=False)
    assert len(lines) == 2
    assert "dropped so far: 14 spans, 4 log records, 1 metric exports" in lines[1]
    assert health.dropped == {"traces": 14, "logs": 4, "metrics": 1}


def test_recovery_is_reported_once_with_what_the_outage_cost():
    health, clock, lines = _health()
    health.exported("traces", 7, ok=True)
    assert lines == []  # nothing failed: nothing to say
    health.exported("traces", 5, ok=False)
    clock.now += 12.34
    health.exported("traces", 5, ok=True)
    health.exported("logs", 5, ok=True)
    assert lines[1:] == [
        "otel-dist: telemetry export recovered after 12.3 s; dropped during the failures: "
        "5 spans, 0 log records, 0 metric exports."
    ]
    health.exported("traces", 2, ok=False)  # a new outage reports at once, totals kept
    assert len(lines) == 3
    assert "dropped so far: 7 spans" in lines[2]


def test_recovery_waits_for_every_signal_that_lost_something():
    # After an outage the span exporter may still be in its retry backoff, its queue full and
    # dropping, when the log and metric exports already succeed: one incident, one pair of lines.
    health, clock, lines = _health()
    health.exported("traces", 512, ok=False)
    health.exported("logs", 512, ok=False)
    clock.now += 30
    health.exported("metrics", 1, ok=True)  # never failed: changes nothing
    health.exported("logs", 512, ok=True)
    health.queue_dropped("traces", 16)  # the span queue is still full
    health.exported("traces", 512, ok=True)
    assert [line.split(" ", 4)[3].rstrip(";") for line in lines] == ["failing", "recovered"]
    assert lines[1] == (
        "otel-dist: telemetry export recovered after 30.0 s; dropped during the failures: "
        "528 spans, 512 log records, 0 metric exports."
    )


def test_a_batch_retrying_since_the_outage_that_fails_after_recovery_says_nothing():
    health, clock, lines = _health()
    health.exported("traces", 5, ok=False, started=health.started())  # the outage begins
    retrying_since = health.started()  # a force_flush, retrying on another thread
    clock.now += 20
    health.exported("traces", 3, ok=True, started=health.started())  # the collector is back
    health.exported("traces", 512, ok=False, started=retrying_since)  # gave up just after
    assert [line.split(" ", 4)[3].rstrip(";") for line in lines] == ["failing", "recovered"]
    assert health.dropped["traces"] == 517  # counted all the same
    clock.now += 1
    health.exported("traces", 2, ok=False, started=health.started())  # a new outage is said
    assert len(lines) == 3


def test_sdk_per_batch_messages_are_folded_and_others_pass():
    health, _, _ = _health()
    remove = fold_sdk_export_messages(health)
    logger = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    queue_logger = logging.getLogger("opentelemetry.sdk._shared_internal")
    # "Queue full" is logged per dropped item on the request path: not even a record is built.
    assert not queue_logger.isEnabledFor(logging.WARNING)
    try:
        logger.warning("Transient error %s encountered while exporting span batch", "refused")
        logger.error("Failed to export span batch code: %s, reason: %s", 503, "unavailable")
        logger.error("Failed to encode span batch: boom")
    finally:
        remove()
    assert queue_logger.isEnabledFor(logging.WARNING)
    logger.warning("Transient error after removal")
    logger.removeHandler(handler)
    assert seen == ["Failed to encode span batch: boom", "Transient error after removal"]
    assert health.last_reason == "Failed to export span batch code: 503, reason: unavailable"


def test_failed_exports_leave_no_span_or_log_record_for_a_full_collection():
    # A failed OTLP export keeps its exception, whose traceback holds the frames of the call and
    # so the batch: unless released, every batch that failed in an outage stays in memory until
    # a full collection, which then pauses the app twice as long.
    settings = load_settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # nothing there
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
            "OTEL_METRICS_EXPORTER": "none",
        }
    )
    providers, _ = build_providers(settings, Scrubber(), strict=True)
    assert providers.tracer_provider is not None
    assert providers.logger_provider is not None
    tracer = providers.tracer_provider.get_tracer("test")
    logger = providers.logger_provider.get_logger("test")
    gc.collect()
    gc.disable()  # as if the cycles had reached the oldest generation
    try:
        for number in range(50):
            with tracer.start_as_current_span(f"span {number}"):
                logger.emit(LogRecord(body=f"line {number}"))
        providers.tracer_provider.force_flush()  # fails, after the exporter's retries
        providers.logger_provider.force_flush()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        garbage = Counter(type(item).__name__ for item in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        providers.tracer_provider.shutdown()
        providers.logger_provider.shutdown()
    assert garbage["traceback"] > 0, "the exports did not fail and leave their cycles"
    assert garbage["ReadableSpan"] == 0
    assert garbage["ReadableLogRecord"] == 0


class _StuckExporter(SpanExporter):
    """Takes the first batch and holds the export thread, as a hanging collector does."""

    def __init__(self) -> None:
        self.received = 0
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.received += len(spans)
        self.release.wait(10)
        return SpanExportResult.FAILURE


def test_spans_a_full_queue_turns_away_are_counted():
    health, _, lines = _health()
    stuck = _StuckExporter()
    processor = BatchSpanProcessor(
        SpanExport(stuck, Scrubber(), health), max_queue_size=4, max_export_batch_size=2
    )
    assert count_queue_drops(processor, "traces", health)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for i in range(20):
        tracer.start_span(f"span {i}").end()
    deadline = time.monotonic() + 5
    while not stuck.received and time.monotonic() < deadline:
        time.sleep(0.01)
    # The export thread now holds one batch: the counts below no longer move.
    received, queued = stuck.received, len(processor._batch_processor._queue)
    dropped = health.dropped["traces"]
    stuck.release.set()
    provider.shutdown()
    assert received == 2
    assert dropped > 0
    # No span is lost uncounted. (The SDK may count one drop too many: its full-queue check
    # races the export thread's pop.)
    assert 20 <= received + queued + dropped <= 21
    assert lines
    assert lines[0].startswith(FAILING)


@pytest.mark.integration
def test_collector_outage_one_line_then_recovery_and_self_metrics(
    server_factory: Callable[..., ServerProcess],
):
    app_port = free_port()
    sink = OtlpSink().start()
    sink_port = sink.port
    server = server_factory(
        [venv_bin("uvicorn"), PID_APP, "--host", "127.0.0.1", "--port", str(app_port)],
        env=pid_app_env(
            sink.endpoint,
            PID_APP_MODE="configure",
            OTEL_EXPORTER_OTLP_TIMEOUT="1",
            OTEL_METRIC_EXPORT_INTERVAL="500",
        ),
        port=app_port,
        cwd=REPO_ROOT,
    )
    sink.stop()  # the collector goes away
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        statuses = [client.get("/pid").status_code for _ in range(30)]
        assert statuses == [200] * 30  # requests never wait for, nor fail with, the exporter
        deadline = time.monotonic() + 15
        while FAILING not in server.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # more failed batches and retries: still one line
        output = server.output()
        assert output.count(FAILING) == 1, output
        sdk_lines = [line for line in output.splitlines() if FAILING not in line]
        assert not [line for line in sdk_lines if "Transient error" in line]
        assert not [line for line in sdk_lines if "Failed to export" in line]

        back = OtlpSink(port=sink_port).start()  # the collector returns on the same address
        try:
            client.get("/pid")
            assert back.wait_for(lambda s: any(p.kind == "SERVER" for p in s.spans()), 20)
            assert back.wait_for(lambda _: RECOVERED in server.output(), 10), server.output()

            def failed_exports_counted(s: OtlpSink) -> bool:
                return any(
                    p.name == "otel.sdk.exporter.span.exported" and "error.type" in p.attributes
                    for p in s.metrics()
                )

            assert back.wait_for(failed_exports_counted, 15), {p.name for p in back.metrics()}
            # Only the loss counters: the SDK's per-span counting stays off the request path.
            names = {p.name for p in back.metrics()}
            assert "otel.sdk.processor.span.processed" in names
            assert not {"otel.sdk.span.started", "otel.sdk.span.live"} & names
        finally:
            back.stop()
