"""A tiny app with no telemetry code: ``/hello`` answers, ``/fail`` raises and does not handle it.

Only FastAPI is imported, so the file also serves from a fresh virtualenv with no repo on the
path. ``TINY_APP_SILENCE_ERRORS=1`` turns the ``otel_dist.errors`` logger off, as an app may.
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI

if os.environ.get("TINY_APP_SILENCE_ERRORS") == "1":
    logging.getLogger("otel_dist.errors").setLevel(logging.CRITICAL)

app = FastAPI()


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/fail")
def fail() -> None:
    raise RuntimeError("tiny_app failed on purpose")
