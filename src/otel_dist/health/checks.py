"""What a health check is, how its outcome is read, and the built-in checks.

A check is a callable taking no arguments, plain or ``async``. Its return value says the status:
``None`` or ``True`` is healthy, ``False`` unhealthy, or one of the status strings. An exception,
a timeout or any other return value makes the component unhealthy, reported with the error's
class name only (the exception's text may carry hosts, user names or values). A check that is
not ``critical`` is at worst degraded: it never takes the service out of rotation.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from otel_dist.health.sources import export_status

Status = Literal["healthy", "degraded", "unhealthy"]
STATUSES: tuple[Status, ...] = ("healthy", "degraded", "unhealthy")
EXPORT_CHECK_NAME = "telemetry.export"
DATABASE_PREFIX = "database:"


class InvalidCheckResultError(TypeError):
    """A check returned something other than None, a bool or a status string."""


InvalidCheckResultError.__module__ = "otel_dist.health"  # its public home, shown in responses


def error_name(error: BaseException) -> str:
    """The error's class as shown in a response: ``TimeoutError``, ``sqlalchemy.exc.X``."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def check_positive_seconds(owner: str, option: str, value: object, *, zero_ok: bool) -> float:
    """``value`` as seconds, or ValueError/TypeError naming ``owner`` and ``option``."""
    bound = ">= 0" if zero_ok else "> 0"
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok_type:
        msg = f"{owner}: {option} must be a number of seconds {bound}, got {value!r}"
        raise TypeError(msg)
    seconds = float(value)  # type: ignore[arg-type]
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
        msg = f"{owner}: {option} must be a number of seconds {bound}, got {value!r}"
        raise ValueError(msg)
    return seconds


@dataclass(frozen=True)
class HealthCheck:
    """A named check: ``check()``, plain or async, bounded by ``timeout_s``.

    ``timeout_s`` defaults to the router's. A non-``critical`` check is at worst degraded.
    """

    name: str
    check: Callable[[], object]
    critical: bool = True
    timeout_s: float | None = None
    is_async: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            msg = f"HealthCheck: name must be a non-empty string without outer spaces, got {name!r}"
            raise ValueError(msg)
        owner = f"HealthCheck {self.name!r}"
        _require_no_argument_callable(owner, self.check)
        if not isinstance(self.critical, bool):
            msg = f"{owner}: critical must be True or False, got {self.critical!r}"
            raise TypeError(msg)
        if self.timeout_s is not None:
            check_positive_seconds(owner, "timeout_s", self.timeout_s, zero_ok=False)
        object.__setattr__(self, "is_async", _is_async(self.check))


def _require_no_argument_callable(owner: str, check: object) -> None:
    if not callable(check):
        msg = f"{owner}: check must be a callable taking no arguments, got {type(check).__name__}"
        raise TypeError(msg)
    try:
        signature = inspect.signature(check)
    except (TypeError, ValueError):  # some builtins have none: let them be
        return
    try:
        signature.bind()
    except TypeError:
        msg = f"{owner}: check must be callable without arguments, but it takes {signature}"
        raise TypeError(msg) from None


def _is_async(check: Callable[[], object]) -> bool:
    call = getattr(check, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(check) or inspect.iscoroutinefunction(call)


@dataclass(frozen=True)
class Outcome:
    """A check's verdict before the runner adds timing: status, error class, details."""

    status: Status
    error: str | None = None
    details: Mapping[str, object] | None = None


def read_outcome(value: object) -> Outcome:
    """The outcome a check's return value stands for (see the module's docstring)."""
    if isinstance(value, Outcome):
        return value
    if value is None or value is True:
        return Outcome("healthy")
    if value is False:
        return Outcome("unhealthy")
    if isinstance(value, str) and value in STATUSES:
        return Outcome(value)
    return Outcome("unhealthy", error_name(InvalidCheckResultError()))


# --- built-in checks -----------------------------------------------------------------------------
def export_check() -> HealthCheck:
    """Degraded while telemetry export fails: telemetry must not take a service out of rotation."""

    async def telemetry_export() -> Outcome:
        status = export_status()
        if status is None or not status.failing:
            return Outcome("healthy", details=_export_details(status))
        return Outcome("degraded", "ExportFailing", _export_details(status))

    return HealthCheck(EXPORT_CHECK_NAME, telemetry_export, critical=False)


def _export_details(status: Any) -> dict[str, object] | None:
    if status is None:
        return None
    details: dict[str, object] = {"failing_signals": list(status.failing)}
    details["dropped_total"] = dict(status.dropped)
    if status.failing_for_s is not None:
        details["failing_for_s"] = round(status.failing_for_s, 1)
    return details


def database_name(engine: Engine) -> str:
    """``database:<dialect+driver>://<host>:<port>/<database>``: never the user or password."""
    url = engine.url
    port = f":{url.port}" if url.port is not None else ""
    return f"{DATABASE_PREFIX}{url.drivername}://{url.host or ''}{port}/{url.database or ''}"


def engine_check(engine: Any, *, hold: bool) -> HealthCheck:
    """``SELECT 1`` on ``engine`` (sync, async, or the sync engine behind an async one).

    With ``hold=False`` the check keeps the engine weakly, so a check never keeps alive an
    engine the app dropped; it then reports healthy, and the router forgets it.
    """
    sync_engine: Engine = getattr(engine, "sync_engine", engine)
    name = database_name(sync_engine)
    if sync_engine.dialect.is_async:
        return HealthCheck(name, _async_select_one(engine, hold))
    return HealthCheck(name, _select_one(sync_engine, hold))


def _referent(target: Any, hold: bool) -> Callable[[], Any]:
    if hold:
        return lambda: target
    return weakref.ref(target)


def _select_one(engine: Engine, hold: bool) -> Callable[[], None]:
    engine_ref = _referent(engine, hold)

    def select_one() -> None:
        # A pooled connection the server closed (a restart) fails once, invalidating the pool:
        # one retry on a fresh connection tells a restarted database from a down one.
        for attempt in (1, 2):
            engine = engine_ref()
            if engine is None:
                return
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
            except DBAPIError as error:
                if not error.connection_invalidated or attempt == 2:
                    raise
            else:
                return

    return select_one


def _async_select_one(engine: Any, hold: bool) -> Callable[[], Awaitable[None]]:
    from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: PLC0415 - only apps with async engines

    engine_ref = _referent(getattr(engine, "sync_engine", engine), hold)

    async def select_one() -> None:
        for attempt in (1, 2):
            sync_engine = engine_ref()
            if sync_engine is None:
                return
            try:
                # A proxy costs nothing: it shares the sync engine's pool.
                async with AsyncEngine(sync_engine).connect() as connection:
                    await connection.execute(text("SELECT 1"))
            except DBAPIError as error:
                if not error.connection_invalidated or attempt == 2:
                    raise
            else:
                return

    return select_one
