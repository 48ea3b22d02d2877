"""Error bodies and response headers, in-process, with private providers (no global state).

Default (``error_body_ids=unhandled``): the bodies the app wrote are FastAPI's, unchanged; only
the 500 of an unhandled exception carries the ids. ``all`` adds them to every error body.

Each test instruments a fresh FastAPI app with ``FastAPIInstrumentation(...).instrument_app`` and
drives it through ``httpx.ASGITransport`` (or a raw ASGI call where a client would refuse to send
the header). The ids in every body are checked against the SERVER span actually exported.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

import otel_dist
from otel_dist.fastapi.instrument import FastAPIInstrumentation
from otel_dist.sdk.providers import Providers
from otel_dist.settings import load_settings

MODES = ("native", "contrib")
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
FAILURE = "the app failed on purpose CANARYE71c"
PASSWORD = "CANARYP0a9d"


class Login(BaseModel):
    username: str = Field(min_length=3)
    password: str = Field(min_length=64)


def _routes(app: FastAPI) -> FastAPI:
    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        raise HTTPException(404, "Item not found")

    @app.get("/private")
    async def private() -> None:
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/empty/{status}")
    async def empty(status: int) -> None:
        raise HTTPException(status, headers={"ETag": '"v1"'})

    @app.post("/login")
    async def login(body: Login) -> dict[str, str]:
        return {"user": body.username}

    @app.get("/fail")
    async def fail() -> None:
        raise RuntimeError(FAILURE)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/own-request-id")
    async def own_request_id(request: Request) -> Response:
        return Response("x", headers={"X-Request-ID": request.state.request_id})

    @app.get("/timed")
    async def timed() -> Response:
        return Response("x", headers={"Server-Timing": "db;dur=12"})

    @app.get("/exposed")
    async def exposed() -> Response:
        response = Response("x")
        response.raw_headers.append((b"access-control-expose-headers", b"X-A"))
        response.raw_headers.append((b"access-control-expose-headers", b"X-B"))
        return response

    app.mount("/raw", _raw_asgi_app)
    return app


async def _raw_asgi_app(scope: Any, receive: Any, send: Any) -> None:
    """A plain ASGI app: "headers" is optional in http.response.start."""
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": b"raw"})


@dataclass
class Result:
    """One response and the spans its request exported."""

    response: httpx.Response
    spans: list[ReadableSpan]

    @property
    def server_span(self) -> ReadableSpan:
        servers = [s for s in self.spans if s.kind is SpanKind.SERVER]
        assert len(servers) == 1, [(s.name, s.kind) for s in self.spans]
        return servers[0]

    @property
    def trace_id(self) -> str:
        context = self.server_span.get_span_context()
        assert context is not None
        return format_trace_id(context.trace_id)

    @property
    def ids(self) -> dict[str, str]:
        """The members every error body must carry."""
        return {"trace_id": self.trace_id, "request_id": self.response.headers["x-request-id"]}

    def json(self) -> Any:
        return self.response.json()


@dataclass
class Harness:
    """An instrumented app and its private span exporter."""

    app: FastAPI
    spans: InMemorySpanExporter

    def call(self, method: str, path: str, **kwargs: Any) -> Result:
        self.spans.clear()
        response = _request(self.app, method, path, **kwargs)
        return Result(response, list(self.spans.get_finished_spans()))

    def get(self, path: str, **kwargs: Any) -> Result:
        return self.call("GET", path, **kwargs)


def _request(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def send() -> httpx.Response:
        # raise_app_exceptions=False: Starlette re-raises after sending the 500, as under uvicorn.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(send())


def _providers(exporter: InMemorySpanExporter) -> Providers:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Providers(
        resource=Resource.create({}),
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
        logger_provider=None,
    )


@pytest.fixture
def instrument() -> Iterator[Callable[..., Harness]]:
    """``instrument(mode, app=None, mounted=False, **settings)``: an app with the test routes,
    instrumented (and, with ``mounted``, an instrumented copy mounted at ``/v2``)."""
    providers: list[Providers] = []

    def factory(
        mode: str = "native", app: FastAPI | None = None, *, mounted: bool = False, **overrides: Any
    ) -> Harness:
        exporter = InMemorySpanExporter()
        provider_set = _providers(exporter)
        providers.append(provider_set)
        app = _routes(app or FastAPI())
        instrumentation = FastAPIInstrumentation(load_settings({}, overrides), provider_set, mode)
        if mounted:
            # As on the zero-code path, which instruments every FastAPI app it sees created.
            sub_app = _routes(FastAPI())
            app.mount("/v2", sub_app)
            instrumentation.instrument_app(sub_app)
        instrumentation.instrument_app(app)
        return Harness(app, exporter)

    yield factory
    for provider_set in providers:
        assert provider_set.tracer_provider is not None
        assert provider_set.meter_provider is not None
        provider_set.tracer_provider.shutdown()
        provider_set.meter_provider.shutdown()


# --- default: the app's bodies as FastAPI sends them; the ids in the headers ----------------


def _uninstrumented(method: str, path: str, **kwargs: Any) -> httpx.Response:
    return _request(_routes(FastAPI()), method, path, **kwargs)


def _app_headers(response: httpx.Response) -> list[tuple[str, str]]:
    """The response headers without the ones otel-dist adds to every response."""
    ours = {"x-request-id", "traceresponse", "server-timing", "access-control-expose-headers"}
    return [(k, v) for k, v in response.headers.multi_items() if k not in ours]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/items/7", None),
        ("GET", "/private", None),
        ("GET", "/items/seven", None),
        ("POST", "/login", {"username": "al", "password": "short"}),
    ],
)
def test_app_error_bodies_are_byte_for_byte_fastapis_by_default(
    instrument, mode, method, path, body
):
    expected = _uninstrumented(method, path, json=body)
    result = instrument(mode).call(method, path, json=body)
    assert expected.status_code in (401, 404, 422)
    assert result.response.status_code == expected.status_code
    assert result.response.content == expected.content
    assert _app_headers(result.response) == _app_headers(expected)
    # The ids reach the client in the headers.
    assert result.response.headers["x-request-id"] == result.ids["request_id"]
    assert result.response.headers["traceresponse"].split("-")[1] == result.trace_id


@pytest.mark.parametrize("mode", MODES)
def test_all_adds_the_ids_to_the_apps_bodies(instrument, mode):
    result = instrument(mode, error_body_ids="all").get("/items/7")
    assert result.response.status_code == 404
    assert result.response.headers["content-type"] == "application/json"
    assert result.json() == {"detail": "Item not found", **result.ids}
    assert GENERATED_ID.fullmatch(result.ids["request_id"])


def test_all_keeps_the_exception_headers(instrument):
    result = instrument(error_body_ids="all").get("/private")
    assert result.response.status_code == 401
    assert result.response.headers["www-authenticate"] == "Bearer"
    assert result.json() == {"detail": "Not authenticated", **result.ids}


@pytest.mark.parametrize("mode", MODES)
def test_none_leaves_every_body_as_without_otel_dist(instrument, mode):
    harness = instrument(mode, error_body_ids="none")
    for method, path, body in [
        ("GET", "/items/7", None),
        ("POST", "/login", {"username": "al"}),
        ("GET", "/fail", None),
    ]:
        expected = _uninstrumented(method, path, json=body)
        result = harness.call(method, path, json=body)
        assert (result.response.status_code, result.response.content) == (
            expected.status_code,
            expected.content,
        ), path
        assert _app_headers(result.response) == _app_headers(expected), path
    assert expected.status_code == 500
    assert expected.text == "Internal Server Error"


@pytest.mark.parametrize("status", [204, 304])
@pytest.mark.parametrize("error_format", ["detail", "problem"])
def test_http_exception_without_body_status_sends_no_body(instrument, status, error_format):
    result = instrument(error_format=error_format).get(f"/empty/{status}")
    assert result.response.status_code == status
    assert result.response.content == b""
    assert "content-type" not in result.response.headers
    assert result.response.headers["etag"] == '"v1"'
    assert result.response.headers["x-request-id"]


@pytest.mark.parametrize("mode", MODES)
def test_all_adds_the_ids_to_fastapis_validation_body(instrument, mode):
    result = instrument(mode, error_body_ids="all").call(
        "POST", "/login", json={"username": "al", "password": "short"}
    )
    assert result.response.status_code == 422
    assert result.response.headers["content-type"] == "application/json"
    body = result.json()
    assert set(body) == {"detail", "trace_id", "request_id"}
    assert {k: body[k] for k in ("trace_id", "request_id")} == result.ids
    assert [(e["loc"], e["type"], e["input"]) for e in body["detail"]] == [
        (["body", "username"], "string_too_short", "al"),
        (["body", "password"], "string_too_short", "short"),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_unhandled_exception_is_generic_500_with_ids_and_logged(instrument, caplog, mode):
    seen: list[str] = []

    class CurrentTrace(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.name == "otel_dist.errors":
                context = trace.get_current_span().get_span_context()
                seen.append(format_trace_id(context.trace_id))
            return True

    caplog.handler.addFilter(CurrentTrace())
    with caplog.at_level(logging.ERROR, logger="otel_dist.errors"):
        result = instrument(mode).get("/fail")
    assert result.response.status_code == 500
    assert result.response.headers["content-type"] == "application/json"
    assert result.json() == {"detail": "Internal Server Error", **result.ids}
    assert "CANARYE71c" not in result.response.text
    records = [r for r in caplog.records if r.name == "otel_dist.errors"]
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.ERROR
    span_id = result.response.headers["traceresponse"].split("-")[2]
    assert record.getMessage() == (
        f"unhandled exception: GET /fail trace_id={result.trace_id} span_id={span_id} "
        f"request_id={result.ids['request_id']}"
    )
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError
    assert str(record.exc_info[1]) == FAILURE
    # Logged while the request span is current, so log correlation can stamp its trace id.
    assert seen == [result.trace_id]


def test_unhandled_exception_log_names_no_ids_when_log_correlation_is_off(instrument, caplog):
    with caplog.at_level(logging.ERROR, logger="otel_dist.errors"):
        result = instrument(log_correlation=False).get("/fail")
    assert result.response.status_code == 500
    records = [r for r in caplog.records if r.name == "otel_dist.errors"]
    assert [r.getMessage() for r in records] == ["unhandled exception: GET /fail"]


# --- problem+json ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_problem_http_exception(instrument, mode):
    result = instrument(mode, error_format="problem").get("/items/7")
    assert result.response.status_code == 404
    assert result.response.headers["content-type"] == "application/problem+json"
    assert result.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "instance": "/items/7",
        "detail": "Item not found",
        **result.ids,
    }


def test_problem_http_exception_keeps_its_headers(instrument):
    result = instrument(error_format="problem").get("/private")
    assert result.response.status_code == 401
    assert result.response.headers["www-authenticate"] == "Bearer"
    assert result.response.headers["content-type"] == "application/problem+json"
    assert result.json()["detail"] == "Not authenticated"


@pytest.mark.parametrize("mode", MODES)
def test_problem_validation_error_lists_errors_without_echoing_input(instrument, mode):
    result = instrument(mode, error_format="problem").call(
        "POST", "/login", json={"username": "al", "password": PASSWORD}
    )
    assert result.response.status_code == 422
    assert result.response.headers["content-type"] == "application/problem+json"
    body = result.json()
    errors = body.pop("errors")
    assert body == {
        "type": "about:blank",
        "title": HTTPStatus(422).phrase,
        "status": 422,
        "instance": "/login",
        "detail": "Request validation failed",
        **result.ids,
    }
    assert [(e["loc"], e["type"]) for e in errors] == [
        (["body", "username"], "string_too_short"),
        (["body", "password"], "string_too_short"),
    ]
    assert all("input" not in e for e in errors)
    assert PASSWORD not in result.response.text


@pytest.mark.parametrize("mode", MODES)
def test_problem_500_is_generic(instrument, mode):
    result = instrument(mode, error_format="problem").get("/fail")
    assert result.response.status_code == 500
    assert result.response.headers["content-type"] == "application/problem+json"
    assert result.json() == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "instance": "/fail",
        "detail": "Internal Server Error",
        **result.ids,
    }
    assert "CANARYE71c" not in result.response.text


@pytest.mark.parametrize("path", ["/items/7", "/fail"])
def test_problem_bodies_keep_their_members_and_none_drops_only_the_ids(instrument, path):
    with_ids = instrument(error_format="problem").get(path)
    without = instrument(error_format="problem", error_body_ids="none").get(path)
    assert with_ids.json() == {**without.json(), **with_ids.ids}
    assert set(without.json()) == {"type", "title", "status", "instance", "detail"}
    assert without.response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("error_format", ["detail", "problem"])
def test_debug_errors_show_exception_and_traceback(instrument, error_format):
    result = instrument(error_format=error_format, debug_errors=True).get("/fail")
    assert result.response.status_code == 500
    body = result.json()
    assert body["exception"] == f"RuntimeError: {FAILURE}"
    assert isinstance(body["traceback"], list)
    traceback_text = "".join(body["traceback"])
    assert "in fail" in traceback_text
    assert traceback_text.rstrip().endswith(f"RuntimeError: {FAILURE}")
    assert body["detail"] == "Internal Server Error"
    assert body["trace_id"] == result.trace_id


# --- the app's own handlers --------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_app_handlers_stay_and_error_ids_gives_the_request_ids(instrument, mode):
    app = FastAPI()

    @app.exception_handler(HTTPException)
    async def own_http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": exc.detail, **otel_dist.error_ids()}, status_code=exc.status_code
        )

    # A sync handler runs in the thread pool: the ids must follow it there.
    @app.exception_handler(Exception)
    def own_500(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "own 500", **otel_dist.error_ids()}, status_code=500)

    harness = instrument(mode, app=app)
    missing = harness.get("/items/7", headers={"X-Request-ID": "req-404"})
    assert missing.response.status_code == 404
    assert missing.json() == {"error": "Item not found", **missing.ids}
    assert missing.ids["request_id"] == "req-404"

    failed = harness.get("/fail", headers={"X-Request-ID": "req-500"})
    assert failed.response.status_code == 500
    assert failed.json() == {"error": "own 500", **failed.ids}
    assert failed.ids["request_id"] == "req-500"

    # The handler the app left to FastAPI's default stays FastAPI's: its body unchanged.
    invalid = harness.call("POST", "/login", json={})
    assert invalid.response.status_code == 422
    assert invalid.response.content == _uninstrumented("POST", "/login", json={}).content


@pytest.mark.parametrize("mode", MODES)
def test_app_that_already_served_requests_gets_our_handlers(instrument, mode):
    app = FastAPI()
    assert _request(app, "GET", "/warm-up").status_code == 404
    assert app.middleware_stack is not None
    harness = instrument(mode, app=app, error_body_ids="all")
    missing = harness.get("/items/7")
    assert missing.json() == {"detail": "Item not found", **missing.ids}
    failed = harness.get("/fail")
    assert failed.json() == {"detail": "Internal Server Error", **failed.ids}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["/v2/items/7", "/v2/fail"])
def test_instrumented_mounted_app_shares_the_outer_request_id_and_headers(instrument, mode, path):
    result = instrument(mode, mounted=True, error_body_ids="all").get(path)
    headers = result.response.headers
    [rid] = headers.get_list("x-request-id")
    assert GENERATED_ID.fullmatch(rid)
    assert result.json()["request_id"] == rid
    assert result.json()["trace_id"] == result.trace_id
    assert len(headers.get_list("server-timing")) == 1
    assert headers.get_list("access-control-expose-headers") == [
        "X-Request-ID, traceresponse, Server-Timing"
    ]
    context = result.server_span.get_span_context()
    assert context is not None
    assert headers["traceresponse"].split("-")[2] == format_span_id(context.span_id)


# --- request id --------------------------------------------------------------------------------


def test_safe_incoming_request_id_is_echoed_and_used(instrument):
    result = instrument().get("/fail", headers={"X-Request-ID": "client-req-42"})
    assert result.response.headers["x-request-id"] == "client-req-42"
    assert result.json()["request_id"] == "client-req-42"
    assert result.server_span.attributes is not None
    assert result.server_span.attributes["http.request.id"] == "client-req-42"


@pytest.mark.parametrize("unsafe", ['quote"<script>', "x" * 10_240], ids=["quotes", "10KB"])
def test_unsafe_incoming_request_id_is_replaced(instrument, unsafe):
    result = instrument().get("/fail", headers={"X-Request-ID": unsafe})
    rid = result.response.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(rid)
    assert result.json()["request_id"] == rid
    for name, value in result.response.headers.multi_items():
        assert unsafe not in value, name


def _raw_asgi_get(app: FastAPI, path: str, headers: list[tuple[bytes, bytes]]) -> list[Any]:
    """Call the app directly: HTTP clients refuse to send control characters in a header."""
    messages: list[Any] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    return messages


@pytest.mark.parametrize("raw", [b"evil\r\nSet-Cookie: a=b", b"nul\x00id", b"\xff\xfe"])
def test_request_id_with_control_bytes_is_replaced_and_not_echoed(instrument, raw):
    harness = instrument()
    messages = _raw_asgi_get(harness.app, "/items/7", [(b"x-request-id", raw)])
    start = messages[0]
    assert start["status"] == 404
    headers = start["headers"]
    rids = [value for key, value in headers if key == b"x-request-id"]
    assert len(rids) == 1
    assert GENERATED_ID.fullmatch(rids[0].decode())
    assert all(raw not in value for _, value in headers)
    assert raw not in b"".join(m.get("body", b"") for m in messages[1:])


def test_custom_request_id_header(instrument):
    result = instrument(request_id_header="X-Correlation-ID").get(
        "/fail", headers={"X-Correlation-ID": "corr-1", "X-Request-ID": "ignored"}
    )
    assert result.response.headers["x-correlation-id"] == "corr-1"
    assert "x-request-id" not in result.response.headers
    assert result.json() == {
        "detail": "Internal Server Error",
        "trace_id": result.trace_id,
        "request_id": "corr-1",
    }
    assert result.response.headers["access-control-expose-headers"] == (
        "X-Correlation-ID, traceresponse, Server-Timing"
    )


def test_app_setting_the_request_id_header_does_not_duplicate_it(instrument):
    result = instrument().get("/own-request-id", headers={"X-Request-ID": "req-1"})
    assert result.response.headers.get_list("x-request-id") == ["req-1"]


# --- trace headers ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_trace_headers_name_the_exported_server_span(instrument, mode):
    result = instrument(mode).get("/items/7")
    context = result.server_span.get_span_context()
    assert context is not None
    trace_id, span_id = format_trace_id(context.trace_id), format_span_id(context.span_id)
    traceparent = f"00-{trace_id}-{span_id}-{context.trace_flags:02x}"
    assert context.trace_flags.sampled
    assert result.response.headers["traceresponse"] == traceparent
    assert result.response.headers.get_list("server-timing") == [
        f'traceparent;desc="{traceparent}"'
    ]
    assert result.response.headers["access-control-expose-headers"] == (
        "X-Request-ID, traceresponse, Server-Timing"
    )


def test_trace_headers_off_keeps_request_id(instrument):
    result = instrument(response_trace_headers=False).get("/fail")
    headers = result.response.headers
    assert "traceresponse" not in headers
    assert "server-timing" not in headers
    assert GENERATED_ID.fullmatch(headers["x-request-id"])
    assert headers["access-control-expose-headers"] == "X-Request-ID"
    assert result.json()["trace_id"] == result.trace_id


@pytest.mark.parametrize("mode", MODES)
def test_app_exposed_headers_are_merged_not_replaced(instrument, mode):
    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=["*"], expose_headers=["X-Custom"])
    result = instrument(mode, app=app).get("/items/7", headers={"Origin": "https://shop.example"})
    assert result.response.headers.get_list("access-control-expose-headers") == [
        "X-Custom, X-Request-ID, traceresponse, Server-Timing"
    ]


def test_every_exposed_headers_line_of_the_app_is_merged(instrument):
    result = instrument().get("/exposed")
    assert result.response.headers.get_list("access-control-expose-headers") == [
        "X-A, X-B, X-Request-ID, traceresponse, Server-Timing"
    ]


@pytest.mark.parametrize("mode", MODES)
def test_raw_asgi_response_without_headers_gets_ids(instrument, mode):
    result = instrument(mode).get("/raw/anything")
    assert result.response.status_code == 200
    assert result.response.text == "raw"
    assert GENERATED_ID.fullmatch(result.response.headers["x-request-id"])
    assert result.response.headers["traceresponse"].split("-")[1] == result.trace_id


def test_app_server_timing_is_kept_and_ours_appended(instrument):
    result = instrument().get("/timed")
    traceparent = result.response.headers["traceresponse"]
    assert TRACEPARENT.fullmatch(traceparent)
    assert result.response.headers.get_list("server-timing") == [
        "db;dur=12",
        f'traceparent;desc="{traceparent}"',
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["/healthz", "/healthz?probe=1"])
def test_excluded_url_has_no_span_and_no_trace_headers_but_a_request_id(instrument, mode, path):
    result = instrument(mode).get(path)
    assert result.response.status_code == 200
    assert result.spans == []
    assert "traceresponse" not in result.response.headers
    assert "server-timing" not in result.response.headers
    assert GENERATED_ID.fullmatch(result.response.headers["x-request-id"])


# --- spans -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_exactly_one_server_span_per_request_and_error_status_on_500(instrument, mode):
    harness = instrument(mode, error_body_ids="all")
    cases = {
        "/items/7": (404, "GET /items/{item_id}", StatusCode.UNSET),
        "/login": (422, "POST /login", StatusCode.UNSET),
        "/fail": (500, "GET /fail", StatusCode.ERROR),
    }
    for path, (status, name, span_status) in cases.items():
        method = "POST" if path == "/login" else "GET"
        result = harness.call(method, path, json={} if method == "POST" else None)
        assert result.response.status_code == status
        assert [(s.kind, s.name) for s in result.spans] == [(SpanKind.SERVER, name)], path
        span = result.server_span
        assert span.status.status_code is span_status, path
        attributes = dict(span.attributes or {})
        # Contrib keeps the old HTTP semconv names unless OTEL_SEMCONV_STABILITY_OPT_IN says so.
        assert attributes.get("http.response.status_code", attributes.get("http.status_code")) == (
            status
        )
        assert attributes["http.request.id"] == result.ids["request_id"]
        assert result.json()["trace_id"] == result.trace_id
