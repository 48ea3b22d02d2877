"""Black-box: the example shop served by a real uvicorn, telemetry received by a real OTLP sink.

Three ways in, same assertions: zero-code (``opentelemetry-instrument``, no telemetry code in the
app), ``configure()``, and ``configure()`` forced onto the contrib FastAPI middleware. One module
fixture per way starts the sink and the server, drives a fixed scenario and collects what left
the process: responses, stdout, and the decoded OTLP spans, logs and metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from otel_dist.tools.sink import MetricPoint, OtlpSink, SpanRecord
from support.servers import ServerProcess, free_port, start_server, venv_bin

ROOT = Path(__file__).resolve().parent.parent
CANARY_QUERY = "CANARYQ9d81"
CANARY_HEADER = "CANARYH2f77"
CANARY_COOKIE = "CANARYC6e05"
CANARY_PASSWORD = "CANARYP4b13"
CANARIES = (CANARY_QUERY, CANARY_HEADER, CANARY_COOKIE, CANARY_PASSWORD)
UNSAFE_REQUEST_IDS = ('quote"<script>', "x" * 10_000)
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

pytestmark = pytest.mark.integration

WAYS = {
    "zero-code": (
        [venv_bin("opentelemetry-instrument"), venv_bin("uvicorn"), "examples.shop.service:app"],
        {},
    ),
    "configure": ([venv_bin("uvicorn"), "examples.shop.main:app"], {}),
    "configure-contrib": (
        [venv_bin("uvicorn"), "examples.shop.main:app"],
        {"OTEL_DIST_HTTP_INSTRUMENTATION": "contrib"},
    ),
}


@dataclass
class Run:
    """What one scenario produced."""

    server: ServerProcess
    sink: OtlpSink
    responses: dict[str, httpx.Response] = field(default_factory=dict)
    unsafe_id_responses: list[httpx.Response] = field(default_factory=list)
    stdout: str = ""

    def trace_of(self, name: str) -> tuple[str, str]:
        """(trace_id, span_id) announced by the traceresponse header of a scenario response."""
        match = TRACEPARENT.fullmatch(self.responses[name].headers["traceresponse"])
        assert match, self.responses[name].headers
        return match.group(1), match.group(2)

    def server_spans(self, trace_id: str) -> list[SpanRecord]:
        return [s for s in self.sink.spans() if s.trace_id == trace_id and s.kind == "SERVER"]

    def metric(self, name: str) -> list[MetricPoint]:
        return [p for p in self.sink.metrics() if p.name == name]


def _drive(base: str, run: Run) -> None:
    r = run.responses
    with httpx.Client(base_url=base, timeout=10) as client:
        r["create"] = client.post("/items", json={"name": "teapot", "price_cents": 100})
        item = r["create"].json()["id"]
        r["read"] = client.get(f"/items/{item}", headers={"X-Request-ID": "client-req-42"})
        r["read_async"] = client.get(f"/async/items/{item}")
        r["missing"] = client.get("/items/999999")
        r["invalid"] = client.post("/items", json={"name": "", "price_cents": -1})
        r["health"] = client.get("/healthz")
        r["secrets"] = client.get(
            f"/items?limit=5&password={CANARY_QUERY}",
            headers={
                "Authorization": f"Bearer {CANARY_HEADER}",
                "Cookie": f"session={CANARY_COOKIE}",
            },
        )
        r["login"] = client.post("/login", json={"username": "x", "password": CANARY_PASSWORD})
        r["outgoing"] = client.get("/outgoing")
        for unsafe in UNSAFE_REQUEST_IDS:
            run.unsafe_id_responses.append(
                client.get(f"/items/{item}", headers={"X-Request-ID": unsafe})
            )
    # uvicorn closes the connection after an unhandled exception: use a connection of its own.
    r["fail"] = httpx.get(f"{base}/fail", timeout=10)


def _complete(run: Run) -> bool:
    """Everything the scenario produced has arrived (exports are batched and periodic)."""
    sink = run.sink
    traced = {
        r.headers["traceresponse"].split("-")[1]
        for r in run.responses.values()
        if "traceresponse" in r.headers
    }
    servers = {s.trace_id for s in sink.spans() if s.kind == "SERVER"}
    routes = {
        p.attributes.get("http.route")
        for p in sink.metrics()
        if p.name == "http.server.request.duration"
    }
    names = {p.name for p in sink.metrics()}
    errors = [rec for rec in sink.logs() if rec.attributes.get("exception.type")]
    return (
        traced <= servers
        and bool(errors)
        and {"/fail", "/items/{item_id}"} <= routes
        and {"db.client.operation.duration", "db.client.connection.count", "process.cpu.time"}
        <= names
    )


@pytest.fixture(scope="module", params=list(WAYS))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    argv, extra_env = WAYS[request.param]
    workdir = tmp_path_factory.mktemp(request.param)
    port = free_port()
    with OtlpSink() as sink:
        env = {
            "PYTHONPATH": str(ROOT),
            "OTEL_SERVICE_NAME": "shop",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "DATABASE_URL": f"sqlite:///{workdir / 'shop.db'}",
            "SHOP_SELF_URL": f"http://127.0.0.1:{port}",
            **extra_env,
        }
        server = start_server(
            [*argv, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            port=port,
            cwd=ROOT,
            output_dir=workdir,
        )
        try:
            result = Run(server, sink)
            _drive(server.base_url, result)
            assert sink.wait_for(lambda _: _complete(result), timeout=30), server.output()
            result.stdout = server.output()
            yield result
        finally:
            server.stop()


def test_exactly_one_server_span_per_request_named_by_route(run: Run):
    expected = {
        "create": "POST /items",
        "read": "GET /items/{item_id}",
        "read_async": "GET /async/items/{item_id}",
        "missing": "GET /items/{item_id}",
        "invalid": "POST /items",
        "fail": "GET /fail",
        "secrets": "GET /items",
        "login": "POST /login",
    }
    for key, name in expected.items():
        trace_id, span_id = run.trace_of(key)
        spans = run.server_spans(trace_id)
        assert [s.name for s in spans] == [name], key
        assert spans[0].span_id == span_id
        assert spans[0].attributes["http.route"] == name.split(" ", 1)[1]
    # No ASGI send/receive or FastAPI operation spans: every non-CLIENT span is a SERVER span.
    kinds = {s.kind for s in run.sink.spans()}
    assert kinds <= {"SERVER", "CLIENT"}, kinds


def test_excluded_health_route_has_no_span_but_gets_a_request_id(run: Run):
    health = run.responses["health"]
    assert health.status_code == 200
    assert "traceresponse" not in health.headers
    assert re.fullmatch(r"[0-9a-f]{32}", health.headers["x-request-id"])
    assert not [s for s in run.sink.spans() if s.attributes.get("http.route") == "/healthz"]


def test_db_spans_are_children_of_the_request_span_sync_and_async(run: Run):
    for key in ("read", "read_async"):
        trace_id, server_span_id = run.trace_of(key)
        db = [s for s in run.sink.spans() if s.trace_id == trace_id and s.kind == "CLIENT"]
        assert db, key
        assert {s.parent_span_id for s in db} == {server_span_id}
        select = db[0]
        assert select.name == "SELECT items"
        assert select.attributes["db.system.name"] == "sqlite"
        assert select.attributes["db.operation.name"] == "SELECT"
        assert "FROM items" in select.attributes["db.query.text"]


def test_server_span_attributes_follow_stable_http_semconv(run: Run):
    trace_id, _ = run.trace_of("read")
    span = run.server_spans(trace_id)[0]
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["url.path"].startswith("/items/")
    assert span.attributes["http.request.id"] == "client-req-42"
    assert span.resource["service.name"] == "shop"
    assert span.resource["telemetry.distro.name"] == "otel-dist"


def test_500_body_trace_id_matches_exported_span(run: Run):
    fail = run.responses["fail"]
    assert fail.status_code == 500
    body = fail.json()
    assert body["detail"] == "Internal Server Error"
    assert "failed on purpose" not in fail.text
    trace_id, _ = run.trace_of("fail")
    assert body["trace_id"] == trace_id
    assert body["request_id"] == fail.headers["x-request-id"]
    span = run.server_spans(trace_id)[0]
    assert span.status_code == "ERROR"
    assert span.attributes["http.response.status_code"] == 500


def test_http_exception_and_validation_bodies_are_fastapis_with_ids_in_headers(run: Run):
    missing = run.responses["missing"]
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json() == {"detail": "Item not found"}
    invalid = run.responses["invalid"]
    assert invalid.status_code == 422
    body = invalid.json()
    assert set(body) == {"detail"}
    assert [e["loc"] for e in body["detail"]] == [["body", "name"], ["body", "price_cents"]]
    # The ids are in the headers: they name the exported request spans.
    for name, status in (("missing", 404), ("invalid", 422)):
        trace_id, span_id = run.trace_of(name)
        [span] = run.server_spans(trace_id)
        assert (span.span_id, span.attributes["http.response.status_code"]) == (span_id, status)
        assert span.attributes["http.request.id"] == run.responses[name].headers["x-request-id"]


def test_response_headers_carry_trace_and_request_ids(run: Run):
    read = run.responses["read"]
    trace_id, span_id = run.trace_of("read")
    flags = TRACEPARENT.fullmatch(read.headers["traceresponse"]).group(3)
    assert int(flags, 16) & 1 == 1  # sampled, and the header says so
    assert read.headers["server-timing"] == (f'traceparent;desc="00-{trace_id}-{span_id}-{flags}"')
    assert read.headers["x-request-id"] == "client-req-42"
    exposed = read.headers["access-control-expose-headers"]
    assert {h.strip().lower() for h in exposed.split(",")} >= {
        "x-request-id",
        "traceresponse",
        "server-timing",
    }
    # The 500 built by Starlette's error middleware carries them too.
    assert run.responses["fail"].headers["traceresponse"]


def test_unsafe_request_ids_are_replaced_and_never_echoed(run: Run):
    for response, unsafe in zip(run.unsafe_id_responses, UNSAFE_REQUEST_IDS, strict=True):
        rid = response.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid)
        assert unsafe not in run.stdout
    exported = repr(run.sink.spans()) + repr(run.sink.logs())
    assert "<script>" not in exported
    assert "x" * 200 not in exported


def test_http_duration_metric_has_route_method_status_and_exemplars(run: Run):
    points = run.metric("http.server.request.duration")
    assert points[0].unit == "s"
    routes = {
        (
            p.attributes.get("http.route"),
            p.attributes.get("http.request.method"),
            p.attributes.get("http.response.status_code"),
        )
        for p in points
    }
    assert ("/items/{item_id}", "GET", 200) in routes
    assert ("/fail", "GET", 500) in routes
    traced = {s.trace_id for s in run.sink.spans() if s.kind == "SERVER"}
    exemplar_traces = {e["trace_id"] for p in points for e in p.exemplars}
    assert exemplar_traces
    assert exemplar_traces <= traced


def test_db_and_pool_and_runtime_metrics_exist(run: Run):
    db = run.metric("db.client.operation.duration")
    assert {p.attributes["db.operation.name"] for p in db} >= {"SELECT", "INSERT"}
    states = {
        p.attributes["db.client.connection.state"] for p in run.metric("db.client.connection.count")
    }
    assert states == {"used", "idle"}
    assert run.metric("db.client.connection.max")
    assert run.metric("db.client.connection.pending_requests")
    assert run.metric("process.cpu.time")


def test_otlp_logs_and_stdout_lines_share_the_request_trace_id(run: Run):
    trace_id, span_id = run.trace_of("read")
    exported = [rec for rec in run.sink.logs() if rec.body == "item fetched"]
    assert any(rec.trace_id == trace_id and rec.span_id == span_id for rec in exported)
    lines = [
        json.loads(line)
        for line in run.stdout.splitlines()
        if line.startswith("{") and '"item fetched"' in line
    ]
    mine = [line for line in lines if line.get("trace_id") == trace_id]
    assert mine, run.stdout[-2000:]
    assert mine[0]["span_id"] == span_id
    assert mine[0]["request_id"] == "client-req-42"
    assert mine[0]["service.name"] == "shop"
    assert re.fullmatch(r"[0-9a-f]{2}", mine[0]["trace_flags"])


def test_unhandled_exception_log_has_trace_id_and_stack_trace(run: Run):
    trace_id, _ = run.trace_of("fail")
    errors = [
        rec
        for rec in run.sink.logs()
        if rec.trace_id == trace_id and rec.attributes.get("exception.type")
    ]
    assert errors, [(r.body, r.trace_id) for r in run.sink.logs()]
    assert errors[0].severity_text == "ERROR"
    assert "the shop failed on purpose" in errors[0].attributes["exception.stacktrace"]


def test_canary_secrets_appear_in_no_export_and_no_stdout(run: Run):
    assert run.responses["login"].status_code == 401
    everything = "\n".join(
        [repr(run.sink.spans()), repr(run.sink.logs()), repr(run.sink.metrics()), run.stdout]
    )
    leaked = [c for c in CANARIES if c in everything]
    assert leaked == []
    # And the secret-bearing request itself was traced and logged, only redacted.
    trace_id, _ = run.trace_of("secrets")
    span = run.server_spans(trace_id)[0]
    assert "password=" in span.attributes.get("url.query", "")
    login = [r for r in run.sink.logs() if r.body == "login attempt"]
    assert login
    assert login[0].attributes["password"] == "[REDACTED]"


def test_no_sql_parameter_values_recorded(run: Run):
    trace_id, _ = run.trace_of("login")
    db = [s for s in run.sink.spans() if s.trace_id == trace_id and s.kind == "CLIENT"]
    assert db
    assert (
        ":password" in db[0].attributes["db.query.text"] or "?" in db[0].attributes["db.query.text"]
    )


def test_outgoing_httpx_call_propagates_the_trace(run: Run):
    outgoing = run.responses["outgoing"]
    assert outgoing.status_code == 200
    trace_id, server_span_id = run.trace_of("outgoing")
    sent = TRACEPARENT.fullmatch(outgoing.json()["traceparent_sent"])
    assert sent
    assert sent.group(1) == trace_id
    clients = [s for s in run.sink.spans() if s.trace_id == trace_id and s.kind == "CLIENT"]
    assert [s.name for s in clients] == ["GET"]
    assert clients[0].parent_span_id == server_span_id
    assert clients[0].span_id == sent.group(2)
