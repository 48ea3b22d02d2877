"""A minimal app for process tests: tells which worker served a request, in the span too.

``PID_APP_MODE=configure`` calls ``otel_dist.configure()`` at import (gunicorn ``--preload`` then
configures in the master, before the fork), and ``PID_APP_SPAN_BEFORE_FORK=1`` also ends and
exports a span there; otherwise it has no telemetry code (zero-code).
Its lifespan prints one line per process at startup and at shutdown, so tests can check that
the server's graceful shutdown still runs the app's own shutdown code.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from opentelemetry import trace

if os.environ.get("PID_APP_MODE") == "configure":
    from otel_dist import configure

    telemetry = configure()
    if os.environ.get("PID_APP_SPAN_BEFORE_FORK"):
        # A master that traced something before forking (a startup query, say): an exporter
        # thread started here is not in the workers.
        with trace.get_tracer("pid_app").start_as_current_span("startup in the master"):
            pass
        telemetry.force_flush()


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    print(f"pid_app: lifespan startup {os.getpid()}", flush=True)
    yield
    print(f"pid_app: lifespan shutdown {os.getpid()}", flush=True)


app = FastAPI(lifespan=lifespan)
log = structlog.get_logger("pid_app")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/pid")
def pid() -> dict[str, int]:
    # Test-only: mark the span with the worker's pid so the test can tell workers apart.
    trace.get_current_span().set_attribute("test.pid", os.getpid())
    log.info("pid served", pid=os.getpid())
    return {"pid": os.getpid()}
