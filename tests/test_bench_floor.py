"""The bench's floor is an honest reference: the signals otel_dist exports, and no more.

``bench.floor`` wires traces, metrics and logs by hand on the bare SDK; the bench prices otel_dist
as "added CPU / floor's added CPU". That ratio only means something if the floor produces the
same telemetry for a request: one SERVER span named by the route, the SQL span as its child, the
app's log line carrying the ids, and the request and query duration histograms — and not FastAPI's
own native spans on top.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from otel_dist.tools.sink import OtlpSink
from support.servers import ServerProcess, free_port, venv_bin

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def _serve_floor(
    server_factory: Callable[..., ServerProcess], sink: OtlpSink, tmp_path: Path
) -> ServerProcess:
    port = free_port()
    argv = [venv_bin("uvicorn"), "bench.serve:app", "--host", "127.0.0.1", "--port", str(port)]
    env = {
        "BENCH_TELEMETRY": "floor",
        "BENCH_DB_PATH": str(tmp_path / "floor.db"),
        "PYTHONPATH": str(ROOT),
        "OTEL_SERVICE_NAME": "bench-floor",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
    }
    return server_factory(argv, env=env, port=port, cwd=ROOT, ready_path="/ping")


def test_floor_exports_one_request_as_otel_dist_does(
    server_factory: Callable[..., ServerProcess], otlp_sink: OtlpSink, tmp_path: Path
) -> None:
    server = _serve_floor(server_factory, otlp_sink, tmp_path)
    otlp_sink.clear()
    assert httpx.get(f"{server.base_url}/items/42", timeout=10).status_code == 200

    def request_seen(sink: OtlpSink) -> bool:
        names = {point.name for point in sink.metrics()}
        return (
            any(s.name == "GET /items/{item_id}" for s in sink.spans())
            and any("item_read" in str(r.body) for r in sink.logs())
            and {"http.server.request.duration", "db.client.operation.duration"} <= names
        )

    assert otlp_sink.wait_for(request_seen, timeout=30), server.output()
    request = next(s for s in otlp_sink.spans() if s.name == "GET /items/{item_id}")
    assert request.kind == "SERVER"
    assert request.attributes["http.route"] == "/items/{item_id}"
    assert request.attributes["http.response.status_code"] == 200
    trace = [s for s in otlp_sink.spans() if s.trace_id == request.trace_id]
    others = [s for s in trace if s is not request]
    assert [(s.kind, s.name, s.parent_span_id) for s in others] == [
        ("CLIENT", "SELECT", request.span_id)
    ]
    assert others[0].attributes["db.system.name"] == "sqlite"
    log = next(r for r in otlp_sink.logs() if "item_read" in str(r.body))
    assert (log.trace_id, log.span_id) == (request.trace_id, request.span_id)
    assert f'"trace_id": "{request.trace_id}"' in str(log.body)
