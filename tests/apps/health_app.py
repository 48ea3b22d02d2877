"""An app mounting ``otel_dist.health`` on a sync and an async engine, for the health tests.

``HEALTH_APP_DB_URL`` / ``HEALTH_APP_ASYNC_DB_URL``: the engines' URLs (psycopg), both optional.
``HEALTH_APP_HANG=<seconds>``: adds checks that never return (a plain one, an async one, and
an async one that ignores cancellation), each with that timeout.
``HEALTH_APP_FAILING_CHECK=1``: adds a non-critical check that raises.
``HEALTH_APP_CACHE_S``: the router's cache_s (default 0: every probe runs the checks).
``HEALTH_APP_PREFIX``: the routes' prefix (default /health).
``/work`` runs ``SELECT 42`` on each engine, a traced request to compare the health routes with;
``/threads`` lists thread names.
"""

from __future__ import annotations

import asyncio
import os
import threading

from fastapi import FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from otel_dist import configure
from otel_dist.health import HealthCheck, health_router

SYNC_URL = os.environ.get("HEALTH_APP_DB_URL")
ASYNC_URL = os.environ.get("HEALTH_APP_ASYNC_DB_URL")
sync_engine = create_engine(SYNC_URL) if SYNC_URL else None
async_engine = create_async_engine(ASYNC_URL) if ASYNC_URL else None

app = FastAPI()
configure(app=app, engines=[e for e in (sync_engine, async_engine) if e is not None])

_never = threading.Event()


class PaymentsDownError(RuntimeError):
    """Raised by the payments check with a message that must never reach a response."""


def payments() -> None:
    raise PaymentsDownError("payments at https://admin:hunter2@payments.internal refused")


def hangs() -> None:
    _never.wait()


async def hangs_async() -> None:
    await asyncio.Event().wait()


async def ignores_cancellation() -> None:
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue


checks = []
if os.environ.get("HEALTH_APP_FAILING_CHECK") == "1":
    checks.append(HealthCheck("payments", payments, critical=False))
if "HEALTH_APP_HANG" in os.environ:
    bound = float(os.environ["HEALTH_APP_HANG"])
    checks += [
        HealthCheck("hangs", hangs, timeout_s=bound),
        HealthCheck("hangs-async", hangs_async, timeout_s=bound),
        HealthCheck("ignores-cancellation", ignores_cancellation, timeout_s=bound),
    ]
app.include_router(
    health_router(
        checks=checks,
        cache_s=float(os.environ.get("HEALTH_APP_CACHE_S", "0")),
        prefix=os.environ.get("HEALTH_APP_PREFIX", "/health"),
    )
)


@app.get("/work")
async def work() -> dict[str, int]:
    answers = {}
    if sync_engine is not None:
        with sync_engine.connect() as connection:
            answers["sync"] = connection.execute(text("SELECT 42")).scalar_one()
    if async_engine is not None:
        async with async_engine.connect() as connection:
            answers["async"] = (await connection.execute(text("SELECT 42"))).scalar_one()
    return answers


@app.get("/threads")
def threads() -> list[str]:
    return [thread.name for thread in threading.enumerate()]
