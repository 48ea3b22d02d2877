"""The server spans and HTTP metrics otel-dist emits are the ones FastAPI's native telemetry emits.

otel-dist replaces FastAPI's native telemetry wrapper with its own middleware (``http_server``).
Each test drives the same requests through two apps in-process, one with FastAPI's own wrapper
(configured as otel-dist configured it before: no log events, no operation spans) and one
instrumented by otel-dist, each with private providers, and compares what was exported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException, WebSocket
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from otel_dist.fastapi.instrument import FastAPIInstrumentation
from otel_dist.sdk.providers import Providers
from otel_dist.settings import load_settings

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Item(BaseModel):
    name: str


def _routes(app: FastAPI) -> FastAPI:
    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.post("/items")
    async def create_item(item: Item) -> Item:
        return item

    @app.get("/fail")
    async def fail() -> None:
        raise RuntimeError("failed on purpose")

    @app.get("/unavailable")
    async def unavailable() -> None:
        raise HTTPException(503, "try later")

    @app.websocket("/ws/{room}")
    async def chat(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        await websocket.send_text(room)
        await websocket.close()

    router = APIRouter()

    @router.get("/orders/{order_id}")
    async def read_order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    app.include_router(router, prefix="/v1")
    sub_app = FastAPI()

    @sub_app.get("/things/{thing_id}")
    async def read_thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    app.mount("/v2", sub_app)
    return app


@dataclass
class Exported:
    """What one app exported for the scenario."""

    spans: list[ReadableSpan]
    metrics: dict[str, list[Any]]


def _scenario(app: FastAPI) -> None:
    async def http() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            await client.get("/items/7")
            await client.get("/items/7?sig=CANARY&page=2&empty=")
            await client.get("/items/7", headers={"traceparent": TRACEPARENT})
            await client.post("/items", json={"name": "teapot"})
            await client.post("/items", json={})
            await client.get("/missing")
            await client.get("/fail")
            await client.get("/unavailable")
            await client.request("PURGE", "/items/7")
            await client.get("/v1/orders/3")
            await client.get("/v2/things/4")

    asyncio.run(http())
    sent = asyncio.run(_websocket(app, "/ws/lobby"))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]


async def _websocket(app: FastAPI, path: str) -> list[Any]:
    """One WebSocket connection as a raw ASGI call: connect, then the client goes away."""
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "subprotocols": [],
    }
    incoming: list[dict[str, Any]] = [{"type": "websocket.connect"}]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.fixture
def run() -> Iterator[Any]:
    shutdown: list[Any] = []

    def _run(*, ours: bool) -> Exported:
        spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[reader])
        shutdown.extend([tracer_provider, meter_provider])
        if ours:
            app = _routes(FastAPI())
            providers = Providers(Resource.create({}), tracer_provider, meter_provider, None)
            FastAPIInstrumentation(load_settings({}, {}), providers, "native").instrument_app(app)
        else:
            app = _routes(
                FastAPI(
                    telemetry={
                        "tracer_provider": tracer_provider,
                        "meter_provider": meter_provider,
                        "logs": False,
                        "operation_spans": False,
                    }
                )
            )
        _scenario(app)
        data = reader.get_metrics_data()
        assert data is not None
        metrics: dict[str, list[Any]] = {}
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    metrics.setdefault(metric.name, []).extend(metric.data.data_points)
        return Exported(list(spans.get_finished_spans()), metrics)

    yield _run
    for provider in shutdown:
        provider.shutdown()


def _server_spans(exported: Exported) -> list[tuple[Any, ...]]:
    """Each SERVER span as (name, status, parent, attributes without our request id)."""
    described = []
    for span in exported.spans:
        assert span.kind is SpanKind.SERVER, span.name
        attributes = {k: v for k, v in (span.attributes or {}).items() if k != "http.request.id"}
        parent = (span.parent.trace_id, span.parent.span_id) if span.parent else None
        described.append((span.name, span.status.status_code, parent, attributes))
    return described


def _points(exported: Exported, name: str, field: str) -> list[tuple[Any, ...]]:
    return sorted(
        (sorted(point.attributes.items()), getattr(point, field))
        for point in exported.metrics[name]
    )


def test_server_spans_match_fastapi_native_telemetry(run):
    native, ours = run(ours=False), run(ours=True)
    assert len(ours.spans) == 12  # 11 requests, 1 WebSocket connection
    assert _server_spans(ours) == _server_spans(native)


def test_http_metrics_match_fastapi_native_telemetry(run):
    native, ours = run(ours=False), run(ours=True)
    duration = "http.server.request.duration"
    assert _points(ours, duration, "count") == _points(native, duration, "count")
    active = "http.server.active_requests"
    assert _points(ours, active, "value") == _points(native, active, "value")
    assert {point.value for point in ours.metrics[active]} == {0}


def test_duration_exemplars_point_at_the_server_spans(run):
    ours = run(ours=True)
    span_ids = {span.context.span_id for span in ours.spans}
    exemplars = [e for p in ours.metrics["http.server.request.duration"] for e in p.exemplars]
    assert exemplars
    assert {e.span_id for e in exemplars} <= span_ids


def test_every_request_span_carries_its_request_id(run):
    ours = run(ours=True)
    http_spans = [s for s in ours.spans if not s.name.startswith("WS")]
    assert all((s.attributes or {}).get("http.request.id") for s in http_spans)


def test_app_mounted_in_an_app_traced_by_fastapi_itself_gets_one_server_span():
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    outer = FastAPI(
        telemetry={"tracer_provider": tracer_provider, "meter_provider": meter_provider}
    )
    inner = _routes(FastAPI())
    providers = Providers(Resource.create({}), tracer_provider, meter_provider, None)
    FastAPIInstrumentation(load_settings({}, {}), providers, "native").instrument_app(inner)
    outer.mount("/api", inner)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get("/api/items/7")

    try:
        response = asyncio.run(get())
        [span] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
        assert span.name == "GET /api/items/{item_id}"
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "fastapi"
        assert span.context is not None
        assert response.headers["traceresponse"].split("-")[2] == f"{span.context.span_id:016x}"
        assert (span.attributes or {})["http.request.id"] == response.headers["x-request-id"]
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
