"""The compose stack's routes, Tempo and Loki, proven at the protocol level without their servers.

Loki and Tempo are AGPL and never built or run here, yet docker-compose.yml sends to them with
the collector's default exporters, ``otlp_grpc/tempo`` and ``otlp_http/loki``. This test runs our
collector with exactly those exporters, pointed at stand-ins listening where the two servers
listen and speaking what they speak:

- "Tempo": an OTLP **gRPC** receiver (Tempo's distributor port 4317 in compose);
- "Loki": an OTLP **HTTP** receiver that takes logs only at ``/otlp/v1/logs`` (Loki's native OTLP
  path: the exporter's ``LOKI_OTLP_ENDPOINT`` is ``http://loki:3100/otlp``, ``/v1/logs`` is
  appended), so a request anywhere else would be answered 404 and counted as lost.

The stand-ins are a second instance of our collector build, receiving on those two routes only
and forwarding to the project's OTLP sink (``otel_dist.tools.sink``), which decodes every record.
The example shop sends to the collector under test. Every span and log record the collector accepted
must reach the sink through the right route, each with its request's trace id and the shop's
resource attributes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from otel_dist.tools.sink import OtlpSink
from support.load import TRACEPARENT
from support.servers import REPO_ROOT, ServerProcess, free_port, start_server
from support.stack import load_stack_module, require_toolchain, start_shop

pytestmark = pytest.mark.e2e

SERVICE = "shop-routes"
ENVIRONMENT = "routes"
READY_TIMEOUT_S = 60
# From the shop's exit (it flushes) to the stand-in: the collector's 500 ms batches, retries.
DELIVERY_TIMEOUT_S = 60
COLLECTOR_CONFIG = REPO_ROOT / "collector" / "config.yaml"

# Two receivers, one per backend route, each in the only pipeline of its signal: a span can only
# arrive over gRPC on Tempo's port, a log record only over HTTP at Loki's path.
STAND_IN_CONFIG = """\
extensions:
  health_check:
    endpoint: 127.0.0.1:{health}
    path: /
receivers:
  otlp/tempo:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{tempo}
  otlp/loki:
    protocols:
      http:
        endpoint: 127.0.0.1:{loki}
        logs_url_path: /otlp/v1/logs
exporters:
  otlp_http/sink:
    endpoint: {sink}
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp/tempo]
      exporters: [otlp_http/sink]
    logs:
      receivers: [otlp/loki]
      exporters: [otlp_http/sink]
  telemetry:
    metrics:
      level: none
"""


@dataclass(frozen=True)
class Endpoint:
    """What ``start_shop`` needs of a stack: where to send OTLP/HTTP."""

    otlp_http_endpoint: str


@dataclass
class Routes:
    sink: OtlpSink
    collector: ServerProcess
    collector_metrics: str
    trace_ids: list[str]


def _start_stand_in(otelcol: Path, workdir: Path, sink: OtlpSink) -> tuple[ServerProcess, int, int]:
    """The Tempo and Loki stand-in; returns it and the Tempo gRPC and Loki HTTP ports."""
    tempo, loki, health = free_port(), free_port(), free_port()
    config = workdir / "stand-in.yaml"
    config.write_text(
        STAND_IN_CONFIG.format(tempo=tempo, loki=loki, health=health, sink=sink.endpoint)
    )
    process = start_server(
        [str(otelcol), f"--config={config}"],
        env={},
        port=health,
        ready_path="/",
        ready_timeout=READY_TIMEOUT_S,
        output_dir=workdir,
    )
    return process, tempo, loki


def _start_collector(
    otelcol: Path, workdir: Path, tempo: int, loki: int
) -> tuple[ServerProcess, str, str]:
    """Our collector with compose's exporters; returns it, its OTLP/HTTP URL and metrics URL.

    Addresses as the local stack sets them (stack/run.py), on free ports; then the routes of
    docker-compose.yml (the config's defaults, named here) pointed at the stand-in.
    """
    stack = load_stack_module()
    ports = stack.Ports.free()
    env = {
        **stack.collector_env_for(ports, workdir),
        "OTELCOL_TRACES_EXPORTERS": "[otlp_grpc/tempo]",
        "OTELCOL_LOGS_EXPORTERS": "[otlp_http/loki]",
        "OTELCOL_METRICS_EXPORTERS": "[nop]",
        "TEMPO_OTLP_ENDPOINT": f"127.0.0.1:{tempo}",
        "LOKI_OTLP_ENDPOINT": f"http://127.0.0.1:{loki}/otlp",
    }
    process = start_server(
        [str(otelcol), f"--config={COLLECTOR_CONFIG}"],
        env=env,
        port=ports.collector_health,
        ready_path="/",
        ready_timeout=READY_TIMEOUT_S,
        output_dir=workdir,
    )
    metrics = f"http://127.0.0.1:{ports.collector_metrics}/metrics"
    return process, f"http://127.0.0.1:{ports.otlp_http}", metrics


def _send_requests(shop: ServerProcess) -> list[str]:
    """A write, reads, a 404 and a 500: the trace id of each, from ``traceresponse``."""
    responses = []
    with httpx.Client(base_url=shop.base_url, timeout=10) as client:
        created = client.post("/items", json={"name": "kettle", "price_cents": 5})
        assert created.status_code == 201, created.text
        responses.append(created)
        for _ in range(5):
            responses.append(client.get(f"/items/{created.json()['id']}"))
        responses.append(client.get("/items/999999"))
    # uvicorn closes the connection after an unhandled exception: a connection of its own.
    failure = httpx.get(f"{shop.base_url}/fail", timeout=10)
    assert failure.status_code == 500
    responses.append(failure)
    trace_ids = []
    for response in responses:
        match = TRACEPARENT.fullmatch(response.headers.get("traceresponse", ""))
        assert match, response.headers
        trace_ids.append(match.group(1))
    return trace_ids


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routes]:
    require_toolchain()
    otelcol = load_stack_module().binary_paths()["otelcol"]
    workdir = tmp_path_factory.mktemp("routes")
    with OtlpSink() as sink:
        stand_in, tempo, loki = _start_stand_in(otelcol, workdir, sink)
        try:
            collector, endpoint, metrics = _start_collector(otelcol, workdir, tempo, loki)
            try:
                shop = start_shop(
                    Endpoint(endpoint),
                    workdir,
                    SERVICE,
                    environment=ENVIRONMENT,
                    OTEL_BSP_SCHEDULE_DELAY="200",
                    OTEL_BLRP_SCHEDULE_DELAY="200",
                )
                try:
                    trace_ids = _send_requests(shop)
                finally:
                    # Its exit flushes the last spans and log records.
                    shop.stop()
                yield Routes(sink, collector, metrics, trace_ids)
            finally:
                collector.stop()
        finally:
            stand_in.stop()


def _collector_counter(metrics_url: str, name: str, label: str) -> int:
    """The sum of a collector self-metric's series that carry ``label`` (e.g. an exporter)."""
    total = 0.0
    for line in httpx.get(metrics_url, timeout=5).text.splitlines():
        if line.startswith(f"{name}{{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return round(total)


def _delivered(routes: Routes) -> dict[str, tuple[int, int, int]]:
    """Per signal: (accepted from the shop, sent by the backend's exporter, at the sink)."""
    url = routes.collector_metrics
    receiver = 'receiver="otlp"'
    return {
        "spans": (
            _collector_counter(url, "otelcol_receiver_accepted_spans_total", receiver),
            _collector_counter(
                url, "otelcol_exporter_sent_spans_total", 'exporter="otlp_grpc/tempo"'
            ),
            len(routes.sink.spans()),
        ),
        "logs": (
            _collector_counter(url, "otelcol_receiver_accepted_log_records_total", receiver),
            _collector_counter(
                url, "otelcol_exporter_sent_log_records_total", 'exporter="otlp_http/loki"'
            ),
            len(routes.sink.logs()),
        ),
    }


def _complete(counts: dict[str, tuple[int, int, int]]) -> bool:
    return all(
        accepted > 0 and accepted == sent == sunk for accepted, sent, sunk in counts.values()
    )


def _all_through(routes: Routes, timeout: float = DELIVERY_TIMEOUT_S) -> dict[str, Any]:
    """The counts once every record the collector accepted is at the sink, or at ``timeout``."""
    deadline = time.monotonic() + timeout
    counts = _delivered(routes)
    while not _complete(counts) and time.monotonic() < deadline:
        time.sleep(0.5)
        counts = _delivered(routes)
    return counts


def test_every_accepted_span_and_log_record_arrives_through_the_tempo_and_loki_routes(
    routes: Routes,
) -> None:
    counts = _all_through(routes)
    assert _complete(counts), f"(accepted, sent by the exporter, at the stand-in): {counts}"
    # Settled: nothing more arrives later (a duplicate would show as a count above accepted).
    time.sleep(2)
    assert _delivered(routes) == counts
    spans, logs = counts["spans"][2], counts["logs"][2]
    assert spans >= 2 * len(routes.trace_ids), counts
    assert logs >= len(routes.trace_ids), counts


def _records_of(records: list[Any], trace_id: str) -> list[Any]:
    return [record for record in records if record.trace_id == trace_id]


def test_each_request_arrives_whole_with_its_trace_id(routes: Routes) -> None:
    assert _complete(_all_through(routes))
    spans, logs = routes.sink.spans(), routes.sink.logs()
    for trace_id in routes.trace_ids:
        request_spans = _records_of(spans, trace_id)
        kinds = sorted(span.kind for span in request_spans)
        assert "SERVER" in kinds, (trace_id, kinds)
        assert "CLIENT" in kinds, (trace_id, kinds)
        assert _records_of(logs, trace_id), f"no log record of {trace_id} through Loki's route"
    failure = routes.trace_ids[-1]
    messages = {str(record.body) for record in _records_of(logs, failure)}
    assert "about to fail" in messages, messages
    (error,) = [r for r in _records_of(logs, failure) if str(r.body).startswith("unhandled")]
    # The one error line of an unhandled exception names its ids in its text too.
    assert str(error.body).startswith(f"unhandled exception: GET /fail trace_id={failure} ")
    assert "the shop failed on purpose" in error.attributes["exception.stacktrace"]


def test_every_record_keeps_the_shops_resource_attributes(routes: Routes) -> None:
    assert _complete(_all_through(routes))
    records = [*routes.sink.spans(), *routes.sink.logs()]
    resources = {tuple(sorted(record.resource.items())) for record in records}
    # One process, one resource: every span and log record carries the same, whole.
    assert len(resources) == 1, resources
    resource = dict(next(iter(resources)))
    assert resource["service.name"] == SERVICE
    assert resource["deployment.environment.name"] == ENVIRONMENT
    assert resource["telemetry.sdk.language"] == "python"
    assert resource.get("service.instance.id"), resource
