"""An app with its own error contract and an outgoing call, served by uvicorn in the tests.

``CONTRACT_APP_WAY=configure`` calls ``otel_dist.configure()`` at import (with
``error_body_ids`` from ``CONTRACT_APP_ERROR_BODY_IDS`` when set, as a keyword); otherwise the
app has no telemetry code (zero-code under ``opentelemetry-instrument``, or none at all).
``/forward/{case}`` calls ``DOWNSTREAM_URL/{case}`` with httpx. Every request that logs writes
one structlog JSON line and one standard-library line to stdout, each with the ids it sees.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import httpx
import structlog
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

if os.environ.get("CONTRACT_APP_WAY") == "configure":
    from otel_dist import configure

    configure(error_body_ids=os.environ.get("CONTRACT_APP_ERROR_BODY_IDS"))

structlog.configure(
    processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
    logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
)
stdlib_log = logging.getLogger("contract_app")
_handler = logging.StreamHandler(sys.stdout)
_handler.setFormatter(
    logging.Formatter(
        "stdlib trace_id=%(trace_id)s request_id=%(request_id)s %(message)s",
        defaults={"trace_id": "-", "request_id": "-"},
    )
)
stdlib_log.addHandler(_handler)
stdlib_log.setLevel(logging.INFO)
log = structlog.get_logger("contract_app")

app = FastAPI()
DOWNSTREAM_URL = os.environ.get("DOWNSTREAM_URL", "")


class NewUser(BaseModel):
    email: str = Field(min_length=3)
    age: int


class TeapotError(Exception):
    """Raised by /teapot; the app's own handler answers it."""


@app.exception_handler(TeapotError)
async def teapot_handler(request: Request, exc: TeapotError) -> JSONResponse:
    return JSONResponse({"error": "short and stout"}, status_code=418)


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/users/{user_id}")
def read_user(user_id: int) -> dict[str, int]:
    raise HTTPException(status_code=404, detail="User not found")


@app.get("/admin")
def admin() -> None:
    raise HTTPException(status_code=403, detail="The user doesn't have enough privileges")


@app.get("/conflict")
def conflict() -> None:
    raise StarletteHTTPException(409, "Email already registered", headers={"X-Reason": "dup"})


@app.post("/users")
def create_user(user: NewUser) -> dict[str, str]:
    return {"email": user.email}


@app.get("/teapot")
def teapot() -> None:
    raise TeapotError


@app.get("/fail")
def fail() -> None:
    log.info("about to fail")
    stdlib_log.info("about to fail")
    raise RuntimeError("the app failed on purpose CANARY-7f3e")


@app.get("/forward/{case}")
async def forward(case: str) -> dict[str, int]:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{DOWNSTREAM_URL}/{case}", timeout=10)
    log.info("forwarded", case=case)
    stdlib_log.info("forwarded %s", case)
    return {"downstream_status": answer.status_code}


@app.get("/threads")
def threads() -> list[str]:
    return sorted(thread.name for thread in threading.enumerate())
