"""The HTTP server span and metrics of each request, as FastAPI's native telemetry emits them.

FastAPI 0.165+ reports what only the framework knows into the object it finds at
``scope["fastapi.telemetry"]``: the router writes the matched route template (mounts and included
routers composed), and its ``ExceptionTelemetryMiddleware`` appends unhandled exceptions. FastAPI's
``NativeTelemetry`` wrapper puts that object there and, around the app, extracts the caller's
context, starts the span, counts active requests and records the duration. In-process it cost
more CPU per request than the whole budget of issue 4 (three context attaches, a walk of the
middleware stack, attributes cleaned twice, two synchronous counter updates), so otel-dist turns
the wrapper off and ``TelemetryMiddleware`` does the same work in one pass through
``ServerTelemetry``, keeping FastAPI's hooks and what leaves the process:

* one SERVER span named ``"{method} {route}"`` with the stable HTTP semconv attributes FastAPI
  sets (``url.scheme``, ``url.path``, ``url.query``, ``server.address``, ``server.port``,
  ``network.protocol.version``, ``http.request.method``, ``http.route``,
  ``http.response.status_code``, ``error.type``), status ERROR on 5xx and on unhandled errors,
  ended when the last body message is sent (background tasks are not part of the request);
* ``http.server.request.duration`` recorded in the span's context, so exemplars point at it;
* ``http.server.active_requests``, counted in process and observed when metrics are collected,
  instead of two synchronous measurements per request;
* WebSocket connections get their span (``WS {route}``) and no metrics, as with FastAPI.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
from opentelemetry.trace import Span, SpanKind, StatusCode, TracerProvider
from starlette.websockets import WebSocketDisconnect

from otel_dist.fastapi.incoming_context import RequestPropagation
from otel_dist.span_ids import traceparent
from otel_dist.version import __version__

if TYPE_CHECKING:
    # Only FastAPI 0.165+ has it, and only native mode (which needs that FastAPI) builds
    # ServerTelemetry: imported there, so this module imports with any FastAPI.
    from fastapi.telemetry._api import _RequestTelemetry

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# Where FastAPI looks for the request's telemetry object (``None``: observe nothing).
HOOK_KEY = "fastapi.telemetry"
# The semantic conventions version FastAPI 0.165 follows; ours are the same attributes.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_HTTP_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
# https://opentelemetry.io/docs/specs/semconv/http/http-spans/#http-server-span
_SENSITIVE_QUERY_PARAMETERS = frozenset(
    {"X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "sig", "X-Goog-Signature"}
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Per-process caches of values derived from client-controlled headers (Host): bounded.
_CACHE_LIMIT = 256


class _ActiveRequests:
    """``http.server.active_requests``: counted per (scheme, method), observed on collection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._attributes: dict[tuple[str, str], dict[str, str]] = {}

    def add(self, key: tuple[str, str], delta: int) -> None:
        with self._lock:
            count = self._counts.get(key)
            if count is None:
                self._attributes[key] = {"url.scheme": key[0], "http.request.method": key[1]}
                count = 0
            self._counts[key] = count + delta

    def observe(self, _options: CallbackOptions) -> list[Observation]:
        with self._lock:
            counts = list(self._counts.items())
        return [Observation(count, self._attributes[key]) for key, count in counts]


def _exception_type(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _normal_websocket_close(exc: BaseException) -> bool:
    return isinstance(exc, WebSocketDisconnect) and exc.code in (1000, 1001)


def _redacted_query(query_string: bytes) -> str:
    return urlencode(
        [
            (key, "REDACTED" if key in _SENSITIVE_QUERY_PARAMETERS else value)
            for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
        ]
    )


def _server_attributes(host: bytes | None, scope: Scope) -> dict[str, Any]:
    """``server.address``/``server.port`` from the Host header (else the ASGI server address)."""
    if host is not None:
        try:
            url = urlsplit("//" + host.decode("latin-1"))
            address, port = url.hostname, url.port
        except ValueError:
            return {}  # a malformed authority must not fail the request
        if url.username is not None or url.path or url.query or url.fragment:
            return {}
        if port is None:
            port = _DEFAULT_PORTS.get(scope.get("scheme", "http"))
    else:
        address, port = scope.get("server") or (None, None)
    if address is None:
        return {}
    attributes: dict[str, Any] = {"server.address": address}
    if port is not None:
        attributes["server.port"] = port
    return attributes


class ServerTelemetry:
    """The tracer, instruments and caches behind every request of the apps of one configuration.

    ``tracer_provider``/``meter_provider`` None switch spans/metrics off; ``excluded(scope)``
    True means neither for that request.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        excluded: Callable[[Scope], bool],
    ) -> None:
        self._tracer = (
            None
            if tracer_provider is None
            else tracer_provider.get_tracer(__name__, __version__, schema_url=SCHEMA_URL)
        )
        self._duration: Histogram | None = None
        self._active: _ActiveRequests | None = None
        if meter_provider is not None:
            meter = meter_provider.get_meter(__name__, __version__, schema_url=SCHEMA_URL)
            self._duration = meter.create_histogram(
                "http.server.request.duration",
                unit="s",
                description="Duration of HTTP server requests.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )
            self._active = _ActiveRequests()
            meter.create_observable_up_down_counter(
                "http.server.active_requests",
                callbacks=[self._active.observe],
                unit="{request}",
                description="Number of active HTTP server requests.",
            )
        from fastapi.telemetry._api import _RequestTelemetry  # noqa: PLC0415 - see TYPE_CHECKING

        self._hook_type = _RequestTelemetry
        self._excluded = excluded
        known = os.environ.get("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "").strip()
        self._known_methods = (
            frozenset(m.strip() for m in known.split(",") if m.strip()) if known else _HTTP_METHODS
        )
        self._propagation = RequestPropagation()
        self._base: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._servers: dict[tuple[bytes, str], dict[str, Any]] = {}

    def start(self, scope: Scope, request_id: str) -> ServerRequest | None:
        """Start the span of an HTTP request and count it active; None when it is excluded."""
        if self._excluded(scope):
            scope[HOOK_KEY] = None  # FastAPI apps mounted below must not observe it either
            return None
        original_method = scope.get("method", "")
        method = original_method if original_method in self._known_methods else "_OTHER"
        scheme = scope.get("scheme", "http")
        base = self._base_attributes(scheme, method, scope.get("http_version") or "")
        span: Span | None = None
        context: Context | None = None
        if self._tracer is not None:
            parent = self._propagation.extract(scope["headers"])
            attributes = {**base, **self._server_attributes(scope), "url.path": scope["path"]}
            if scope.get("query_string"):
                attributes["url.query"] = _redacted_query(scope["query_string"])
            if original_method != method:
                attributes["http.request.method_original"] = original_method
            attributes["http.request.id"] = request_id
            span = self._tracer.start_span(
                _span_method(method), context=parent, kind=SpanKind.SERVER, attributes=attributes
            )
            context = trace.set_span_in_context(span, parent)
        active_key = (scheme, method)
        if self._active is not None:
            self._active.add(active_key, 1)
        return ServerRequest(
            _hook(self._hook_type, scope),
            span,
            context,
            base=base,
            duration=self._duration,
            active=self._active,
            active_key=active_key,
        )

    def start_websocket(self, scope: Scope) -> ServerRequest | None:
        """Start the span of a WebSocket connection; None when excluded or tracing is off."""
        if self._tracer is None or self._excluded(scope):
            scope[HOOK_KEY] = None
            return None
        base = {"url.scheme": scope.get("scheme", "ws"), "network.protocol.name": "websocket"}
        parent = self._propagation.extract(scope["headers"])
        span = self._tracer.start_span(
            "WS",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={**base, **self._server_attributes(scope)},
        )
        context = trace.set_span_in_context(span, parent)
        return ServerRequest(
            _hook(self._hook_type, scope),
            span,
            context,
            base=base,
            duration=None,
            active=None,
            active_key=None,
        )

    def _base_attributes(self, scheme: str, method: str, version: str) -> dict[str, Any]:
        key = (scheme, method, version)
        base = self._base.get(key)
        if base is None:
            base = {"url.scheme": scheme, "http.request.method": method}
            if version:
                base["network.protocol.version"] = version
            if len(self._base) < _CACHE_LIMIT:
                self._base[key] = base
        return base

    def _server_attributes(self, scope: Scope) -> dict[str, Any]:
        host = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
                break
        if host is None:
            return _server_attributes(None, scope)  # from scope["server"]
        key = (bytes(host), scope.get("scheme", "http"))
        attributes = self._servers.get(key)
        if attributes is None:
            attributes = _server_attributes(key[0], scope)
            if len(self._servers) < _CACHE_LIMIT:
                self._servers[key] = attributes
        return attributes


def _span_method(method: str) -> str:
    return "HTTP" if method == "_OTHER" else method


def _hook(hook_type: type[_RequestTelemetry], scope: Scope) -> _RequestTelemetry:
    """The object FastAPI's router and exception middleware report the route and errors into."""
    hook = hook_type(
        span=None,  # the route is applied to our span once, at the end
        span_method="",
        data=None,  # FastAPI's TelemetryData is for its own log events, which are off
        _mount_prefix=scope.get("app_root_path", scope.get("root_path", "")).rstrip("/"),
    )
    scope[HOOK_KEY] = hook
    return hook


def traceparent_of(span: Span) -> str | None:
    """W3C ``traceparent`` value naming ``span`` (with its real sampled flag), or None."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return traceparent(context)


class ServerRequest:
    """One request's span and measurements, from ``ServerTelemetry.start`` to ``finish``."""

    __slots__ = (
        "_active",
        "_active_key",
        "_base",
        "_duration",
        "_hook",
        "_started",
        "context",
        "finished",
        "span",
        "status",
    )

    def __init__(
        self,
        hook: _RequestTelemetry,
        span: Span | None,
        context: Context | None,
        *,
        base: dict[str, Any],
        duration: Histogram | None,
        active: _ActiveRequests | None,
        active_key: tuple[str, str] | None,
    ) -> None:
        self._hook = hook
        self.span = span
        self.context = context
        self._base = base
        self._duration = duration
        self._active = active
        self._active_key = active_key  # None: a WebSocket connection
        self._started = perf_counter()
        self.status: int | None = None
        self.finished = False

    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` naming this request's span (real sampled flag), or None."""
        return None if self.span is None else traceparent_of(self.span)

    def finish(self, error: BaseException | None) -> None:
        """Set the outcome, record the duration and end the span; only the first call counts."""
        if self.finished:
            return
        self.finished = True
        http = self._active_key is not None
        outcome: dict[str, Any] = {}
        route = self._hook.route
        if route is not None:
            outcome["http.route"] = route
        status = self.status
        if status is not None:
            outcome["http.response.status_code"] = status
        # FastAPI's exception middleware saw the error a handler turned into this response.
        errors = self._hook._exceptions
        failed = error is not None or (http and (status is None or status >= 500))
        if failed:
            failure = error or (errors[-1] if errors else None)
            outcome["error.type"] = (
                _exception_type(failure) if failure else str(status or "incomplete_response")
            )
        errors.clear()  # the scope may outlive the request: drop the tracebacks now
        span = self.span
        if span is not None:
            if route is not None:
                method = _span_method(self._base["http.request.method"]) if http else "WS"
                span.update_name(f"{method} {route}")
            span.set_attributes(outcome)
            if failed:
                span.set_status(StatusCode.ERROR)
        if self._duration is not None:
            self._duration.record(
                max(0.0, perf_counter() - self._started),
                {**self._base, **outcome},
                context=self.context,
            )
        if self._active is not None and self._active_key is not None:
            self._active.add(self._active_key, -1)
        if span is not None:
            span.end()


async def serve_websocket(
    telemetry: ServerTelemetry, app: App, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run a WebSocket connection inside its SERVER span."""
    request = telemetry.start_websocket(scope)
    token = None
    if request is not None and request.context is not None:
        token = otel_context.attach(request.context)
    try:
        await app(scope, receive, send)
    except BaseException as exc:
        if request is not None:
            request.finish(None if _normal_websocket_close(exc) else exc)
        raise
    finally:
        if request is not None:
            request.finish(None)
        if token is not None:
            otel_context.detach(token)
        scope.pop(HOOK_KEY, None)
