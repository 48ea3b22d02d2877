"""The stock service, with no telemetry code: the shop's ``/checkout`` asks it over HTTP.

Run it zero-code: ``opentelemetry-instrument uvicorn examples.stock.service:app``; or see
``main.py`` for the same service set up with ``otel_dist.configure()``.

It holds no database: one in-memory count per item, so a request's work is the HTTP hop itself.
``?fail=true`` makes it fail (500), for error traces that span both services.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from fastapi import FastAPI, Query

log = logging.getLogger("stock")


def create_app() -> FastAPI:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s")
    app = FastAPI(title="stock")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stock/{item_id}")
    def stock(item_id: int, fail: bool = Query(False)) -> dict[str, Any]:
        if fail:
            log.error("stock lookup failed for item %s", item_id)
            raise RuntimeError(f"the stock service failed on purpose for item {item_id}")
        log.info("stock checked for item %s", item_id)
        return {"item_id": item_id, "available": 100 - item_id % 7}

    return app


app = create_app()
