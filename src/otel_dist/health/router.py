"""The FastAPI router: ``/health/live``, ``/health/ready`` and the detailed ``/health``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from otel_dist.health.checks import (
    DATABASE_PREFIX,
    EXPORT_CHECK_NAME,
    HealthCheck,
    check_positive_seconds,
    database_name,
    engine_check,
    error_name,
    export_check,
)
from otel_dist.health.runner import CheckRecorder, Component, ComponentResult, overall_status
from otel_dist.health.sources import INTERNAL_LOGGER, known_engines, traced_paths

_log = logging.getLogger(INTERNAL_LOGGER)
_NO_STORE = {"Cache-Control": "no-store"}
_OWNER = "health_router"


def health_router(
    *,
    checks: Iterable[HealthCheck] = (),
    engines: Iterable[Any] | None = None,
    telemetry_export: bool = True,
    timeout_s: float = 2.0,
    cache_s: float = 5.0,
    prefix: str = "/health",
) -> APIRouter:
    """Health endpoints to mount with ``app.include_router(health_router())``.

    ``GET {prefix}/live`` answers 200 while the process serves requests; ``GET {prefix}/ready``
    and ``GET {prefix}`` run the checks and answer 503 when a critical one is unhealthy, else
    200 (see README "Health endpoints" for the bodies). The checks: ``SELECT 1`` on each of
    ``engines`` (default: every engine otel-dist instruments), telemetry export (degraded at
    worst), and ``checks``. Each is bounded by its ``timeout_s`` and its result is reused for
    ``cache_s`` seconds. Raises TypeError/ValueError naming the bad argument.
    """
    health = _Health(
        checks=_checked_checks(checks),
        engines=None if engines is None else _checked_engines(engines),
        telemetry_export=telemetry_export,
        timeout_s=check_positive_seconds(_OWNER, "timeout_s", timeout_s, zero_ok=False),
        cache_s=check_positive_seconds(_OWNER, "cache_s", cache_s, zero_ok=True),
    )
    router = APIRouter(prefix=_checked_prefix(prefix), tags=["health"])
    router.add_api_route("/live", _answering(health.live), methods=["GET"], summary="Liveness")
    router.add_api_route("/ready", _answering(health.ready), methods=["GET"], summary="Readiness")
    router.add_api_route("", _answering(health.detailed), methods=["GET"], summary="Health")
    _warn_if_traced([f"{prefix}/live", f"{prefix}/ready", prefix])
    return router


def _checked_checks(checks: Iterable[HealthCheck]) -> list[HealthCheck]:
    if isinstance(checks, (str, bytes)) or not isinstance(checks, Iterable):
        msg = f"{_OWNER}: checks must be a list of HealthCheck, got {type(checks).__name__}"
        raise TypeError(msg)
    checked: list[HealthCheck] = []
    names: set[str] = set()
    for check in checks:
        if not isinstance(check, HealthCheck):
            msg = (
                f"{_OWNER}: checks must hold HealthCheck objects, got {type(check).__name__} "
                f"{getattr(check, '__name__', '')!s}".rstrip()
                + " (wrap a function: HealthCheck('name', function))"
            )
            raise TypeError(msg)
        if check.name == EXPORT_CHECK_NAME or check.name.startswith(DATABASE_PREFIX):
            msg = f"{_OWNER}: check name {check.name!r} is reserved for the built-in checks"
            raise ValueError(msg)
        if check.name in names:
            msg = f"{_OWNER}: check names must be unique; {check.name!r} is given twice"
            raise ValueError(msg)
        names.add(check.name)
        checked.append(check)
    return checked


def _checked_engines(engines: Iterable[Any]) -> list[Any]:
    if isinstance(engines, (str, bytes)) or not isinstance(engines, Iterable):
        msg = (
            f"{_OWNER}: engines must be a list of SQLAlchemy engines, got {type(engines).__name__}"
        )
        raise TypeError(msg)
    checked = list(engines)
    for engine in checked:
        if not isinstance(getattr(engine, "sync_engine", engine), Engine):
            msg = (
                f"{_OWNER}: engines must hold SQLAlchemy Engine or AsyncEngine objects, "
                f"got {type(engine).__name__}"
            )
            raise TypeError(msg)
    return checked


def _checked_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/"):
        msg = f"{_OWNER}: prefix must start with '/' and not end with '/', got {prefix!r}"
        raise ValueError(msg)
    return prefix


def _warn_if_traced(paths: list[str]) -> None:
    traced = traced_paths(paths)
    if traced:
        _log.warning(
            "otel-dist: health routes %s are not in OTEL_PYTHON_FASTAPI_EXCLUDED_URLS: every "
            "probe makes a span and counts in the request metrics",
            ", ".join(traced),
        )


def _answering(
    endpoint: Callable[[], Awaitable[JSONResponse]],
) -> Callable[[], Awaitable[JSONResponse]]:
    """The endpoint, answering 503 with a JSON body if it fails (a bug: checks never raise)."""

    async def answer() -> JSONResponse:
        try:
            return await endpoint()
        except Exception as error:
            _log.exception("otel-dist: the health endpoint failed")
            body = {"status": "unhealthy", "error": error_name(error)}
            return JSONResponse(body, status_code=503, headers=_NO_STORE)

    answer.__name__ = endpoint.__name__
    answer.__doc__ = endpoint.__doc__
    return answer


class _Health:
    """The components behind one router and the three endpoints' answers."""

    def __init__(
        self,
        *,
        checks: list[HealthCheck],
        engines: list[Any] | None,
        telemetry_export: bool,
        timeout_s: float,
        cache_s: float,
    ) -> None:
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._recorder = CheckRecorder()
        self._discover_engines = engines is None
        explicit = [engine_check(engine, hold=True) for engine in engines or ()]
        builtin = [export_check()] if telemetry_export else []
        self._fixed = [self._component(check) for check in [*explicit, *checks, *builtin]]
        self._discovered: dict[str, Component] = {}

    def _component(self, check: HealthCheck) -> Component:
        return Component(check, self._timeout_s, self._recorder)

    def _components(self) -> list[Component]:
        if not self._discover_engines:
            return self._fixed
        current: dict[str, Component] = {}
        for engine in known_engines():
            name = database_name(engine)
            if name not in current:
                current[name] = self._discovered.get(name) or self._component(
                    engine_check(engine, hold=False)
                )
        self._discovered = current  # engines the app dropped are forgotten
        return [*current.values(), *self._fixed]

    async def _results(self) -> list[ComponentResult]:
        components = self._components()
        return list(await asyncio.gather(*(c.result(self._cache_s) for c in components)))

    async def live(self) -> JSONResponse:
        """200 while the process serves requests; runs no check."""
        return JSONResponse({"status": "healthy"}, headers=_NO_STORE)

    async def ready(self) -> JSONResponse:
        """503 when a critical check is unhealthy, else 200; statuses and error classes."""
        results = await self._results()
        status = overall_status(results)
        body = {"status": status, "components": {r.name: _brief(r) for r in results}}
        return JSONResponse(body, status_code=_http_status(status), headers=_NO_STORE)

    async def detailed(self) -> JSONResponse:
        """As ready, with each check's timing, criticality, time of run and details."""
        results = await self._results()
        status = overall_status(results)
        body = {
            "status": status,
            "checked_at": _iso(max((r.checked_at for r in results), default=None)),
            "components": {r.name: _detailed(r) for r in results},
        }
        return JSONResponse(body, status_code=_http_status(status), headers=_NO_STORE)


def _http_status(status: str) -> int:
    return 503 if status == "unhealthy" else 200


def _brief(result: ComponentResult) -> dict[str, object]:
    body: dict[str, object] = {"status": result.status}
    if result.error is not None:
        body["error"] = result.error
    return body


def _detailed(result: ComponentResult) -> dict[str, object]:
    body = _brief(result)
    body["critical"] = result.critical
    body["duration_ms"] = round(result.duration_s * 1000, 1)
    body["checked_at"] = _iso(result.checked_at)
    if result.details is not None:
        body["details"] = result.details
    return body


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
