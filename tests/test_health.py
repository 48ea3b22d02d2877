"""otel_dist.health's own logic in-process: argument checks with the exact messages a user sees,
how a check's return value reads, caching, one run at a time, and the JSON of each endpoint.

What leaves a real server (a real database going down, export failing, probe telemetry) is in
test_health_integration.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from otel_dist.health import HealthCheck, health_router


def _ok() -> None:
    return None


def _get_all(router: Any, *paths: str) -> list[httpx.Response]:
    app = FastAPI()
    app.include_router(router)

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(run())


def _components(response: httpx.Response) -> dict[str, Any]:
    components: dict[str, Any] = response.json()["components"]
    return components


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"name": "", "check": _ok},
            ValueError,
            "HealthCheck: name must be a non-empty string without outer spaces, got ''",
        ),
        (
            {"name": " cache", "check": _ok},
            ValueError,
            "HealthCheck: name must be a non-empty string without outer spaces, got ' cache'",
        ),
        (
            {"name": "cache", "check": "redis://cache:6379"},
            TypeError,
            "HealthCheck 'cache': check must be a callable taking no arguments, got str",
        ),
        (
            {"name": "cache", "check": lambda connection: None},
            TypeError,
            "HealthCheck 'cache': check must be callable without arguments, "
            "but it takes (connection)",
        ),
        (
            {"name": "cache", "check": _ok, "timeout_s": 0},
            ValueError,
            "HealthCheck 'cache': timeout_s must be a number of seconds > 0, got 0",
        ),
        (
            {"name": "cache", "check": _ok, "timeout_s": float("inf")},
            ValueError,
            "HealthCheck 'cache': timeout_s must be a number of seconds > 0, got inf",
        ),
        (
            {"name": "cache", "check": _ok, "timeout_s": "2"},
            TypeError,
            "HealthCheck 'cache': timeout_s must be a number of seconds > 0, got '2'",
        ),
        (
            {"name": "cache", "check": _ok, "timeout_s": True},
            TypeError,
            "HealthCheck 'cache': timeout_s must be a number of seconds > 0, got True",
        ),
        (
            {"name": "cache", "check": _ok, "critical": "yes"},
            TypeError,
            "HealthCheck 'cache': critical must be True or False, got 'yes'",
        ),
    ],
)
def test_bad_health_check_is_refused_with_the_exact_message(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        HealthCheck(**kwargs)
    assert str(raised.value) == message


def ping_cache() -> None:
    return None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"timeout_s": -1},
            ValueError,
            "health_router: timeout_s must be a number of seconds > 0, got -1",
        ),
        (
            {"timeout_s": float("nan")},
            ValueError,
            "health_router: timeout_s must be a number of seconds > 0, got nan",
        ),
        (
            {"cache_s": -0.5},
            ValueError,
            "health_router: cache_s must be a number of seconds >= 0, got -0.5",
        ),
        (
            {"checks": [ping_cache]},
            TypeError,
            "health_router: checks must hold HealthCheck objects, got function ping_cache "
            "(wrap a function: HealthCheck('name', function))",
        ),
        (
            {"checks": ping_cache},
            TypeError,
            "health_router: checks must be a list of HealthCheck, got function",
        ),
        (
            {"checks": [HealthCheck("cache", _ok), HealthCheck("cache", ping_cache)]},
            ValueError,
            "health_router: check names must be unique; 'cache' is given twice",
        ),
        (
            {"checks": [HealthCheck("telemetry.export", _ok)]},
            ValueError,
            "health_router: check name 'telemetry.export' is reserved for the built-in checks",
        ),
        (
            {"checks": [HealthCheck("database:orders", _ok)]},
            ValueError,
            "health_router: check name 'database:orders' is reserved for the built-in checks",
        ),
        (
            {"engines": ["sqlite:///shop.db"]},
            TypeError,
            "health_router: engines must hold SQLAlchemy Engine or AsyncEngine objects, got str",
        ),
        (
            {"engines": "sqlite:///shop.db"},
            TypeError,
            "health_router: engines must be a list of SQLAlchemy engines, got str",
        ),
        (
            {"prefix": "health"},
            ValueError,
            "health_router: prefix must start with '/' and not end with '/', got 'health'",
        ),
        (
            {"prefix": "/health/"},
            ValueError,
            "health_router: prefix must start with '/' and not end with '/', got '/health/'",
        ),
    ],
)
def test_bad_router_argument_is_refused_with_the_exact_message(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        health_router(**kwargs)
    assert str(raised.value) == message


# --- what a check's outcome reads as -------------------------------------------------------------
@pytest.mark.parametrize(
    ("returned", "critical", "expected"),
    [
        (None, True, {"status": "healthy"}),
        (True, True, {"status": "healthy"}),
        (False, True, {"status": "unhealthy"}),
        (False, False, {"status": "degraded"}),
        ("degraded", True, {"status": "degraded"}),
        ("unhealthy", False, {"status": "degraded"}),
        (42, True, {"status": "unhealthy", "error": "otel_dist.health.InvalidCheckResultError"}),
        ("ok", True, {"status": "unhealthy", "error": "otel_dist.health.InvalidCheckResultError"}),
    ],
)
def test_return_value_reads_as_status(
    returned: object, critical: bool, expected: dict[str, str]
) -> None:
    check = HealthCheck("it", lambda: returned, critical=critical)
    router = health_router(checks=[check], engines=[], telemetry_export=False, cache_s=0)
    (ready,) = _get_all(router, "/health/ready")
    assert _components(ready) == {"it": expected}
    assert ready.status_code == (503 if expected["status"] == "unhealthy" else 200)


def test_invalid_return_value_is_logged_once_with_what_is_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = health_router(
        checks=[HealthCheck("it", lambda: 42)], engines=[], telemetry_export=False, cache_s=0
    )
    with caplog.at_level(logging.WARNING, logger="otel_dist.internal"):
        _get_all(router, "/health/ready")
    assert (
        "otel-dist: health check 'it' returned int; expected None, True, False or one of "
        "healthy, degraded, unhealthy" in caplog.messages
    )


class VaultSealedError(Exception):
    """A check's failure whose message must never reach a response."""


def test_async_check_that_raises_shows_the_class_and_never_the_message() -> None:
    async def vault() -> None:
        raise VaultSealedError("token s.hunter2 rejected by https://vault.internal")

    router = health_router(checks=[HealthCheck("vault", vault)], engines=[], telemetry_export=False)
    ready, detailed = _get_all(router, "/health/ready", "/health")
    error = f"{__name__}.VaultSealedError"
    assert _components(ready) == {"vault": {"status": "unhealthy", "error": error}}
    assert ready.status_code == detailed.status_code == 503
    for response in (ready, detailed):
        assert "hunter2" not in response.text
        assert "vault.internal" not in response.text
        assert response.headers["cache-control"] == "no-store"


# --- caching and one run at a time ---------------------------------------------------------------
def _counting(delay_s: float = 0.0) -> tuple[list[int], Callable[[], None]]:
    runs: list[int] = []

    def check() -> None:
        runs.append(1)
        threading.Event().wait(delay_s)

    return runs, check


def test_results_are_reused_for_cache_s() -> None:
    runs, check = _counting()
    router = health_router(
        checks=[HealthCheck("c", check)], engines=[], telemetry_export=False, cache_s=600
    )
    _get_all(router, *["/health/ready", "/health"] * 5)
    assert len(runs) == 1

    runs, check = _counting()
    router = health_router(
        checks=[HealthCheck("c", check)], engines=[], telemetry_export=False, cache_s=0
    )
    _get_all(router, *["/health/ready"] * 5)
    assert len(runs) == 5


def test_concurrent_probes_share_one_run() -> None:
    release = threading.Event()
    runs: list[int] = []

    def slow() -> None:
        runs.append(1)
        release.wait()

    router = health_router(
        checks=[HealthCheck("slow", slow, timeout_s=60)],
        engines=[],
        telemetry_export=False,
        cache_s=0,
    )
    app = FastAPI()
    app.include_router(router)
    arrived: list[str] = []

    @app.middleware("http")
    async def count_arrivals(request: Any, call_next: Any) -> Any:
        arrived.append(request.url.path)
        return await call_next(request)

    async def probe_ten_at_once() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            probes = [asyncio.create_task(client.get("/health/ready")) for _ in range(10)]
            while len(arrived) < 10:  # every probe is in before the run may finish
                await asyncio.sleep(0.01)
            # Then let them reach the run: loop turns, not wall time (dispatch uses no thread).
            for _ in range(500):
                await asyncio.sleep(0)
            release.set()
            responses = await asyncio.gather(*probes)
        return [response.status_code for response in responses]

    assert asyncio.run(probe_ten_at_once()) == [200] * 10
    assert len(runs) == 1


def test_live_runs_no_check() -> None:
    runs, check = _counting()
    router = health_router(checks=[HealthCheck("c", check, critical=True)], engines=[])
    (live,) = _get_all(router, "/health/live")
    assert live.status_code == 200
    assert live.json() == {"status": "healthy"}
    assert runs == []


# --- the built-in database check -----------------------------------------------------------------
def test_sync_and_async_engines_answer_select_1(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    sync_engine = create_engine(f"sqlite:///{path}")
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    router = health_router(engines=[sync_engine, async_engine], telemetry_export=False)
    (detailed,) = _get_all(router, "/health")
    body = detailed.json()
    assert detailed.status_code == 200
    assert body["status"] == "healthy"
    assert list(body["components"]) == [
        f"database:sqlite:///{path}",
        f"database:sqlite+aiosqlite:///{path}",
    ]
    for component in body["components"].values():
        assert component["status"] == "healthy"
        assert component["critical"] is True
        assert component["duration_ms"] >= 0
        assert component["checked_at"].endswith("Z")
    assert body["checked_at"].endswith("Z")


def test_unreachable_database_is_unhealthy_by_class(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "shop.db"
    router = health_router(engines=[create_engine(f"sqlite:///{missing}")], telemetry_export=False)
    (ready,) = _get_all(router, "/health/ready")
    assert ready.status_code == 503
    assert _components(ready) == {
        f"database:sqlite:///{missing}": {
            "status": "unhealthy",
            "error": "sqlalchemy.exc.OperationalError",
        }
    }


def test_a_failure_inside_the_health_code_still_answers_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(_results: object) -> str:
        raise LookupError("internal detail")

    monkeypatch.setattr("otel_dist.health.router.overall_status", broken)
    router = health_router(checks=[HealthCheck("c", _ok)], engines=[], telemetry_export=False)
    (ready,) = _get_all(router, "/health/ready")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unhealthy", "error": "LookupError"}
