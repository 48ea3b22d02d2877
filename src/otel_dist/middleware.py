"""The one ASGI middleware otel-dist adds: request id in, request id and trace ids out.

It sits inside the server span (FastAPI's native span, or the contrib OpenTelemetryMiddleware)
and outside Starlette's ServerErrorMiddleware, so it sees the span and also the 500 responses
built for unhandled exceptions.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otel_dist import request_id

REQUEST_ID_ATTRIBUTE = "http.request.id"
# Marks a request we already handle, so a mounted app instrumented too (the zero-code path
# instruments every FastAPI app) does not generate a second id or add the headers twice.
_SCOPE_KEY = "otel_dist.request_id"
_PROPAGATOR = TraceContextTextMapPropagator()


def traceparent_of(span: trace.Span) -> str | None:
    """W3C ``traceparent`` value naming ``span`` (with its real sampled flag), or None."""
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


class TelemetryMiddleware:
    """Accepts or generates the request id and adds the trace headers to every response."""

    def __init__(self, app: ASGIApp, *, request_id_header: str, trace_headers: bool) -> None:
        self.app = app
        self._header = request_id_header
        self._header_key = request_id_header.lower().encode("latin-1")
        self._trace_headers = trace_headers
        exposed = [request_id_header]
        if trace_headers:
            exposed += ["traceresponse", "Server-Timing"]
        self._exposed = ", ".join(exposed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call; non-HTTP scopes and already-handled requests pass through."""
        if scope["type"] != "http" or _SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return
        rid = request_id.accept_or_generate(self._incoming_id(scope))
        token = request_id.bind(rid)
        scope[_SCOPE_KEY] = rid
        scope.setdefault("state", {})["request_id"] = rid
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute(REQUEST_ID_ATTRIBUTE, rid)

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._add_headers(message, rid, span)
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            request_id.unbind(token)

    def _incoming_id(self, scope: Scope) -> bytes | None:
        for key, value in scope["headers"]:
            if key == self._header_key:
                return bytes(value)
        return None

    def _add_headers(self, message: Message, rid: str, span: trace.Span) -> None:
        # ASGI makes "headers" optional: a mounted raw ASGI app may send a start without it.
        message.setdefault("headers", [])
        headers = MutableHeaders(scope=message)
        # Set, not append: an app that echoed the id itself must not end up with two.
        headers[self._header] = rid
        if self._trace_headers:
            traceparent = traceparent_of(span)
            if traceparent is not None:
                headers["traceresponse"] = traceparent
                headers.append("Server-Timing", f'traceparent;desc="{traceparent}"')
        _expose(headers, self._exposed)


def _expose(headers: MutableHeaders, names: str) -> None:
    # Every line the app sent: setting the header below replaces all of them.
    current = ", ".join(headers.getlist("access-control-expose-headers"))
    headers["access-control-expose-headers"] = f"{current}, {names}" if current else names


def insert_inside_server_span(stack: Any, make: Any) -> Any:
    """Place ``make(inner)`` just inside the contrib OpenTelemetryMiddleware, else outermost.

    With FastAPI's native telemetry the server span wraps the whole Starlette stack, so the
    outermost position is inside the span; with the contrib middleware, the span starts at
    that middleware, so we go right inside it.
    """
    node = stack
    seen: set[int] = set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if type(node).__name__ == "OpenTelemetryMiddleware":
            node.app = make(node.app)
            return stack
        node = getattr(node, "app", None)
    return make(stack)
