"""The benchmark app: FastAPI + SQLAlchemy (SQLite) + structlog, with no telemetry code at all.

Every setup serves this same module (through ``bench.serve``); whatever telemetry it has comes
from the setup. Endpoints:

* ``GET /ping``: a small JSON body, nothing else (the trivial endpoint);
* ``GET /items/{item_id}``: one row read through a SQLAlchemy session plus one structlog line;
  an id with no row answers 404 through ``HTTPException`` (the 404 endpoint);
* ``GET /fail``: raises, so the app answers 500 (the 500 endpoint).

structlog goes through the standard library (``structlog.stdlib.LoggerFactory``) to one stdout
handler, as many services run it: that way the stock setup's OTLP logging handler sees the same
line otel_dist exports from structlog, and both setups export the same signals.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, HTTPException
from sqlalchemy import Integer, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

ITEM_COUNT = 100
MISSING_ITEM_ID = 999_999


def _database_path() -> Path:
    # One file per process: setups never share (or lock) a database.
    configured = os.environ.get("BENCH_DB_PATH")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"otel-dist-bench-{os.getpid()}.db"


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    # Added, not basicConfig(): basicConfig() does nothing once a launcher put a handler on root.
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    price_cents: Mapped[int] = mapped_column(Integer)


def _seed(session_factory: sessionmaker[Any]) -> None:
    with session_factory() as session:
        if session.scalar(select(func.count()).select_from(Item)):
            return
        session.add_all(
            Item(id=i, name=f"item-{i}", price_cents=100 * i) for i in range(1, ITEM_COUNT + 1)
        )
        session.commit()


_configure_logging()
log = structlog.get_logger("bench")
engine = create_engine(f"sqlite:///{_database_path()}")
Base.metadata.create_all(engine)
Session = sessionmaker(engine, expire_on_commit=False)
_seed(Session)

app = FastAPI(title="otel-dist bench", openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/items/{item_id}")
def read_item(item_id: int) -> dict[str, Any]:
    with Session() as session:
        item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(status_code=404, detail="item not found")
    log.info("item_read", item_id=item_id)
    return {"id": item.id, "name": item.name, "price_cents": item.price_cents}


@app.get("/fail")
async def fail() -> dict[str, str]:
    raise RuntimeError("bench: deliberate failure")
