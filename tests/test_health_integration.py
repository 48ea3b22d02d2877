"""otel_dist.health against real servers: uvicorn serving tests/apps/health_app.py, a real
PostgreSQL started by stack/postgres.py, telemetry received by the OTLP sink.

What a Kubernetes probe or an on-call engineer sees: a database that goes down takes the service
out of rotation with the component named, a collector that goes down only degrades it, a check
that hangs answers within its bound, and the probes leave no trace in the request telemetry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from otel_dist.tools.sink import OtlpSink
from support.postgres import RunningPostgres, running_postgres
from support.servers import REPO_ROOT, ServerProcess, free_port, uvicorn_argv

pytestmark = pytest.mark.integration

APP = "tests.apps.health_app:app"
WAIT_S = 60.0
Factory = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def postgres() -> Iterator[RunningPostgres]:
    with running_postgres() as database:
        yield database


def _app_env(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "PYTHONPATH": str(REPO_ROOT),
        "OTEL_SERVICE_NAME": "health-app",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        **extra,
    }


def _db_env(postgres: RunningPostgres) -> dict[str, str]:
    return {
        "HEALTH_APP_DB_URL": postgres.url("postgresql+psycopg"),
        "HEALTH_APP_ASYNC_DB_URL": postgres.url("postgresql+psycopg_async"),
    }


def _start(server_factory: Factory, env: dict[str, str], prefix: str = "/health") -> ServerProcess:
    port = free_port()
    argv = uvicorn_argv(APP, port, zero_code=False)
    return server_factory(argv, env=env, port=port, ready_path=f"{prefix}/live")


def _get(server: ServerProcess, path: str) -> httpx.Response:
    return httpx.get(server.base_url + path, timeout=30)


def _until(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"{what}: not true after {timeout:g} s; last: {last!r}")


def _database_names(postgres: RunningPostgres) -> list[str]:
    where = f"127.0.0.1:{postgres.port}/health_app"
    return [
        f"database:postgresql+psycopg://{where}",
        f"database:postgresql+psycopg_async://{where}",
    ]


def test_database_down_makes_ready_503_naming_it_while_live_stays_200(
    postgres: RunningPostgres, otlp_sink: OtlpSink, server_factory: Factory
) -> None:
    server = _start(server_factory, _app_env(otlp_sink.endpoint, **_db_env(postgres)))
    sync_db, async_db = _database_names(postgres)

    ready = _get(server, "/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["components"][sync_db] == {"status": "healthy"}
    assert ready.json()["components"][async_db] == {"status": "healthy"}
    assert _get(server, "/work").json() == {"sync": 42, "async": 42}  # pooled connections now

    assert postgres.stop()
    try:
        ready = _get(server, "/health/ready")
        detailed = _get(server, "/health")
        live = _get(server, "/health/live")
    finally:
        postgres.start()

    assert ready.status_code == 503
    assert ready.json()["status"] == "unhealthy"
    for name in (sync_db, async_db):
        assert ready.json()["components"][name] == {
            "status": "unhealthy",
            "error": "sqlalchemy.exc.OperationalError",
        }
    assert detailed.status_code == 503
    assert detailed.json()["components"][sync_db]["critical"] is True
    assert live.status_code == 200
    assert live.json() == {"status": "healthy"}
    for body in (ready.text, detailed.text):
        assert postgres.app_password not in body
        assert "health_app:" not in body  # no user name either
    output = server.output()
    said = f"otel-dist: health check '{sync_db}' is unhealthy (sqlalchemy.exc.OperationalError)"
    assert output.count(said) == 1  # said once, at the change, not per probe

    # Back up: the first probe after the restart already says so (stale pooled connections are
    # retried once on a fresh one).
    ready = _get(server, "/health/ready")
    assert ready.status_code == 200, ready.text


def test_collector_down_is_degraded_while_ready_stays_200(
    otlp_sink: OtlpSink, server_factory: Factory
) -> None:
    env = _app_env(otlp_sink.endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="2")
    server = _start(server_factory, env)
    before = _get(server, "/health").json()
    assert before["status"] == "healthy"
    assert before["components"]["telemetry.export"]["details"]["failing_signals"] == []

    otlp_sink.stop()

    def export_degraded() -> dict[str, Any] | None:
        body = _get(server, "/health").json()
        return body if body["status"] == "degraded" else None

    body = _until(export_degraded, "/health says degraded once exports fail")
    export = body["components"]["telemetry.export"]
    assert export["status"] == "degraded"
    assert export["error"] == "ExportFailing"
    assert export["critical"] is False
    assert "metrics" in export["details"]["failing_signals"]
    assert export["details"]["dropped_total"]["metrics"] >= 1
    assert export["details"]["failing_for_s"] >= 0
    ready = _get(server, "/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["components"]["telemetry.export"] == {
        "status": "degraded",
        "error": "ExportFailing",
    }


def test_hanging_checks_time_out_into_their_status_within_the_bound(
    otlp_sink: OtlpSink, server_factory: Factory
) -> None:
    bound = 0.5
    env = _app_env(otlp_sink.endpoint, HEALTH_APP_HANG=str(bound), HEALTH_APP_FAILING_CHECK="1")
    server = _start(server_factory, env)
    for _ in range(3):
        started = time.monotonic()
        response = _get(server, "/health")
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        components = response.json()["components"]
        for name in ("hangs", "hangs-async", "ignores-cancellation"):
            assert components[name]["status"] == "unhealthy"
            assert components[name]["error"] == "TimeoutError"
            assert bound * 1000 <= components[name]["duration_ms"] < bound * 1000 + 2000
        # The bound plus scheduling on a busy machine; without the bound it would never return.
        assert elapsed < bound + 5
    # Each probe waited on the same stuck run: one thread, not one per probe.
    threads = _get(server, "/threads").json()
    assert threads.count("otel-dist-health hangs") == 1, threads
    assert components["payments"] == {
        "status": "degraded",
        "error": "tests.apps.health_app.PaymentsDownError",
        "critical": False,
        "duration_ms": components["payments"]["duration_ms"],
        "checked_at": components["payments"]["checked_at"],
    }
    assert "hunter2" not in response.text
    assert "payments.internal" not in response.text


def test_health_routes_make_no_server_span_or_request_metric_only_check_metrics(
    postgres: RunningPostgres, otlp_sink: OtlpSink, server_factory: Factory
) -> None:
    env = _app_env(otlp_sink.endpoint, HEALTH_APP_FAILING_CHECK="1", **_db_env(postgres))
    server = _start(server_factory, env)
    for path in ("/health/live", "/health/ready", "/health") * 3:
        _get(server, path)
    assert _get(server, "/work").status_code == 200  # the control: a traced, measured request
    sync_db, _ = _database_names(postgres)

    def has(sink: OtlpSink) -> bool:
        routes = {p.attributes.get("http.route") for p in sink.metrics()}
        checks = {p.attributes.get("health.check.name") for p in sink.metrics()}
        spans = {s.name for s in sink.spans()}
        return "/work" in routes and sync_db in checks and "GET /work" in spans

    assert otlp_sink.wait_for(has, timeout=WAIT_S), "no /work telemetry or health.check metric"

    server_spans = [s for s in otlp_sink.spans() if s.kind == "SERVER"]
    assert [s.name for s in server_spans] == ["GET /work"]
    statements = [s.attributes.get("db.query.text") for s in otlp_sink.spans()]
    assert "SELECT 1" not in statements  # the checks' own queries are not traced
    assert statements.count("SELECT 42") == 2
    request_routes = {
        p.attributes.get("http.route")
        for p in otlp_sink.metrics()
        if p.name == "http.server.request.duration"
    }
    assert request_routes == {"/work"}
    check_points = [p for p in otlp_sink.metrics() if p.name == "health.check.duration"]
    by_check = {p.attributes["health.check.name"]: p for p in check_points}
    assert by_check[sync_db].attributes["health.check.status"] == "healthy"
    assert by_check[sync_db].unit == "s"
    assert by_check[sync_db].value["count"] >= 6  # ready + detailed, 3 times, cache_s=0
    payments = by_check["payments"].attributes
    assert payments["error.type"] == "tests.apps.health_app.PaymentsDownError"
    assert "telemetry.export" in by_check


def test_routes_outside_the_excluded_urls_are_warned_about_at_mount(
    otlp_sink: OtlpSink, server_factory: Factory
) -> None:
    prefix = "/internal/health"
    env = _app_env(otlp_sink.endpoint, HEALTH_APP_PREFIX=prefix)
    traced = _start(server_factory, env, prefix)
    excluded = _start(
        server_factory, {**env, "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "^/internal/health"}, prefix
    )
    warning = (
        "otel-dist: health routes /internal/health/live, /internal/health/ready, "
        "/internal/health are not in OTEL_PYTHON_FASTAPI_EXCLUDED_URLS: every probe makes a "
        "span and counts in the request metrics"
    )
    assert warning in traced.output()
    assert "health routes" not in excluded.output()
    assert _get(traced, f"{prefix}/ready").json() == {
        "status": "healthy",
        "components": {"telemetry.export": {"status": "healthy"}},
    }
