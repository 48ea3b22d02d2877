"""The shop service, with no telemetry code at all.

Run it zero-code: ``opentelemetry-instrument uvicorn examples.shop.service:app``; or see
``main.py`` for the same service set up with ``otel_dist.configure()``.

Items CRUD over SQLAlchemy (SQLite file by default, ``DATABASE_URL`` for Postgres), a slow query,
an endpoint that fails, an outgoing HTTP call, a checkout that asks the stock service
(examples/stock, ``STOCK_URL``), structlog logging and health endpoints.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import structlog
from fastapi import Depends, FastAPI, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import Engine, Integer, String, create_engine, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///./shop.db")
# The async side of the same database (aiosqlite / asyncpg), used by the /async routes.
ASYNC_DATABASE_URL = os.environ.get(
    "ASYNC_DATABASE_URL",
    DATABASE_URL.replace("sqlite://", "sqlite+aiosqlite://", 1).replace(
        "postgresql+psycopg://", "postgresql+asyncpg://", 1
    ),
)
UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "")
# The stock service (examples/stock) that /checkout asks.
STOCK_URL = os.environ.get("STOCK_URL", "http://127.0.0.1:8001")


def _configure_logging() -> None:
    # The app's own logging setup, as a team would write it; otel-dist adds trace ids to it.
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(levelname)s %(name)s trace_id=%(trace_id)s %(message)s"
        if os.environ.get("SHOP_STDLIB_TRACE_FORMAT")
        else "%(levelname)s %(name)s %(message)s",
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    price_cents: Mapped[int] = mapped_column(Integer)


class ItemIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    price_cents: int = Field(ge=0)


class ItemOut(ItemIn):
    id: int


class Login(BaseModel):
    username: str
    password: str


class Charge(BaseModel):
    item_id: int
    card_token: str


def make_engine(url: str = DATABASE_URL) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    try:
        Base.metadata.create_all(engine)
    except OperationalError:
        # Workers started together (gunicorn -w 4) race to create the table: one wins, the
        # others find it there on the second look.
        Base.metadata.create_all(engine)
    return engine


engine = make_engine()
SessionLocal = sessionmaker(engine, expire_on_commit=False)
async_engine = create_async_engine(ASYNC_DATABASE_URL)
AsyncSessionLocal = async_sessionmaker(async_engine, expire_on_commit=False)
log = structlog.get_logger("shop")


def get_session() -> Iterator[Session]:
    with SessionLocal() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def create_app() -> FastAPI:
    _configure_logging()
    app = FastAPI(title="shop")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/items", response_model=list[ItemOut])
    def list_items(session: SessionDep, limit: int = Query(100, le=1000)) -> Any:
        return session.scalars(select(Item).order_by(Item.id).limit(limit)).all()

    @app.post("/items", response_model=ItemOut, status_code=201)
    def create_item(item: ItemIn, session: SessionDep) -> Any:
        row = Item(name=item.name, price_cents=item.price_cents)
        session.add(row)
        session.commit()
        log.info("item created", item_id=row.id)
        return row

    @app.get("/items/{item_id}", response_model=ItemOut)
    def read_item(item_id: int, session: SessionDep) -> Any:
        row = session.get(Item, item_id)
        if row is None:
            log.warning("item not found", item_id=item_id)
            raise HTTPException(status_code=404, detail="Item not found")
        log.info("item fetched", item_id=item_id)
        return row

    @app.delete("/items/{item_id}", status_code=204)
    def delete_item(item_id: int, session: SessionDep) -> None:
        row = session.get(Item, item_id)
        if row is None:
            raise HTTPException(status_code=404, detail="Item not found")
        session.delete(row)
        session.commit()

    @app.get("/async/items/{item_id}", response_model=ItemOut)
    async def read_item_async(item_id: int) -> Any:
        async with AsyncSessionLocal() as session:
            row = await session.get(Item, item_id)
        if row is None:
            raise HTTPException(status_code=404, detail="Item not found")
        await log.ainfo("item fetched (async)", item_id=item_id)
        return row

    @app.post("/login")
    def login(body: Login, session: SessionDep) -> dict[str, str]:
        # Careless on purpose, as real code sometimes is: the password is logged and sent to the
        # database as a parameter. otel-dist must keep it out of every log line and export.
        log.info("login attempt", username=body.username, password=body.password)
        matches = session.execute(
            text("SELECT count(*) FROM items WHERE name = :username AND :password <> ''"),
            {"username": body.username, "password": body.password},
        ).scalar_one()
        if not matches:
            raise HTTPException(status_code=401, detail="Invalid credentials")
        return {"status": "welcome"}

    @app.post("/charge")
    def charge(body: Charge, session: SessionDep) -> dict[str, str]:
        # Careless on purpose, as payment code sometimes is: the gateway's refusal is raised
        # with the card token in its message. The exception message reaches the span's exception
        # event, the error log line and the traceback; otel-dist must keep the token out of all.
        if session.get(Item, body.item_id) is None:
            raise HTTPException(status_code=404, detail="Item not found")
        raise RuntimeError(
            f"payment gateway declined item {body.item_id}: card_token={body.card_token}"
        )

    @app.get("/slow")
    def slow(session: SessionDep, n: int = Query(300_000, le=5_000_000)) -> dict[str, int]:
        # A deliberately slow query: a recursive CTE counting to n.
        total = session.execute(
            text(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n) "
                "SELECT count(*) FROM c"
            ),
            {"n": n},
        ).scalar_one()
        log.info("slow query done", rows=total)
        return {"rows": int(total)}

    @app.get("/fail")
    def fail(session: SessionDep) -> None:
        session.execute(select(Item).limit(1)).all()
        log.error("about to fail", reason="demo")
        raise RuntimeError("the shop failed on purpose")

    @app.get("/outgoing")
    async def outgoing() -> dict[str, Any]:
        url = UPSTREAM_URL or os.environ.get("SHOP_SELF_URL", "http://127.0.0.1:8000") + "/healthz"
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(url)
        log.info("upstream called", status=response.status_code)
        return {
            "upstream_status": response.status_code,
            "traceparent_sent": response.request.headers.get("traceparent"),
        }

    _add_checkout(app)
    return app


def _add_checkout(app: FastAPI) -> None:
    @app.get("/checkout/{item_id}")
    async def checkout(item_id: int, fail: bool = Query(False)) -> dict[str, Any]:
        # One trace over two services: this request, the HTTP call and the stock service's
        # own request. With fail=true the stock service fails, and so does this request.
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(
                f"{STOCK_URL}/stock/{item_id}", params={"fail": "true"} if fail else None
            )
        response.raise_for_status()
        log.info("checkout done", item_id=item_id)
        return {"item_id": item_id, "stock": response.json()}


app = create_app()
