"""A minimal app for process tests: tells which worker served a request, in the span too.

``PID_APP_MODE=configure`` calls ``otel_dist.configure()`` at import (gunicorn ``--preload`` then
configures in the master, before the fork); otherwise it has no telemetry code (zero-code).
"""

from __future__ import annotations

import os

import structlog
from fastapi import FastAPI
from opentelemetry import trace

if os.environ.get("PID_APP_MODE") == "configure":
    from otel_dist import configure

    configure()

app = FastAPI()
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
