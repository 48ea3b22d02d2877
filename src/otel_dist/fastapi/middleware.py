"""The one ASGI middleware otel-dist adds: request id in; span, metrics, ids and trace headers out.

It sits outside Starlette's ServerErrorMiddleware, so it also sees the 500 responses built for
unhandled exceptions. With FastAPI's native telemetry hooks (``server`` given) it is the server
span's source too, in the same pass (see ``server_span``); with the contrib OpenTelemetryMiddleware
it sits just inside that middleware and names the span the contrib started.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otel_dist.fastapi import request_id
from otel_dist.fastapi.server_span import (
    HOOK_KEY,
    ServerRequest,
    ServerTelemetry,
    serve_websocket,
    traceparent_of,
)

REQUEST_ID_ATTRIBUTE = "http.request.id"
# Marks a request we already handle, so a mounted app instrumented too (the zero-code path
# instruments every FastAPI app) does not generate a second id or add the headers twice.
_SCOPE_KEY = "otel_dist.request_id"
_EXPOSE = b"access-control-expose-headers"
_TRACERESPONSE = b"traceresponse"
_FINAL_BODY = "http.response.body"


class TelemetryMiddleware:
    """Accepts or generates the request id and adds the trace headers to every response.

    With ``server`` it also starts and ends the request's SERVER span and records its metrics.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        request_id_header: str,
        trace_headers: bool,
        server: ServerTelemetry | None = None,
    ) -> None:
        self.app = app
        self._header_key = request_id_header.lower().encode("latin-1")
        self._trace_headers = trace_headers
        self._server = server
        exposed = [request_id_header]
        if trace_headers:
            exposed += ["traceresponse", "Server-Timing"]
        self._exposed = ", ".join(exposed).encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call; other scopes and already-handled requests pass through."""
        if scope["type"] != "http" or _SCOPE_KEY in scope:
            server = self._server
            if server is not None and scope["type"] == "websocket" and HOOK_KEY not in scope:
                await serve_websocket(server, self.app, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        rid = request_id.accept_or_generate(self._incoming_id(scope))
        token = request_id.bind(rid)
        scope[_SCOPE_KEY] = rid
        scope.setdefault("state", {})["request_id"] = rid
        try:
            # HOOK_KEY already set: FastAPI's own wrapper, in an outer app we did not instrument,
            # traces this request; we only name its span, as with the contrib middleware.
            if self._server is None or HOOK_KEY in scope:
                await self._inside_current_span(scope, receive, send, rid)
            else:
                await self._with_server_span(self._server, scope, receive, send, rid)
        finally:
            request_id.unbind(token)

    async def _inside_current_span(
        self, scope: Scope, receive: Receive, send: Send, rid: str
    ) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute(REQUEST_ID_ATTRIBUTE, rid)
        traceparent = traceparent_of(span) if self._trace_headers else None

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._add_headers(message, rid, traceparent)
            await send(message)

        await self.app(scope, receive, send_with_ids)

    async def _with_server_span(
        self, server: ServerTelemetry, scope: Scope, receive: Receive, send: Send, rid: str
    ) -> None:
        request = server.start(scope, rid)
        if request is None:  # excluded: no span, no metrics, still the request id
            try:
                await self._inside_current_span(scope, receive, send, rid)
            finally:
                scope.pop(HOOK_KEY, None)
            return
        traceparent = request.traceparent() if self._trace_headers else None
        # The request ends with the last message of its response (FastAPI's rule), not when the
        # app returns: background tasks run after that and are not part of it.
        trailers = False
        disconnected = False

        async def send_with_telemetry(message: Message) -> None:
            nonlocal trailers
            kind = message["type"]
            if kind == "http.response.start":
                request.status = message["status"]
                trailers = message.get("trailers", False)
                self._add_headers(message, rid, traceparent)
                await send(message)
                return
            await send(message)
            if _is_last(kind, message, trailers):
                request.finish(None)

        async def receive_watching() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        token = None if request.context is None else otel_context.attach(request.context)
        try:
            await self.app(scope, receive_watching, send_with_telemetry)
        except BaseException as exc:
            request.finish(exc)
            raise
        finally:
            if not request.finished:
                _finish_incomplete(request, disconnected)
            if token is not None:
                otel_context.detach(token)
            scope.pop(HOOK_KEY, None)

    def _incoming_id(self, scope: Scope) -> bytes | None:
        for key, value in scope["headers"]:
            if key == self._header_key:
                return bytes(value)
        return None

    def _add_headers(self, message: Message, rid: str, traceparent: str | None) -> None:
        """Set the request id (and trace) headers, merge the expose list, in one pass.

        Set, not append: an app that echoed the id itself must not end up with two. Names are
        compared as sent, lower case, as Starlette's ``MutableHeaders`` does.
        """
        replaced = (self._header_key, _TRACERESPONSE) if traceparent else (self._header_key,)
        headers: list[Any] = []
        exposed: list[bytes] = []
        # ASGI makes "headers" optional: a mounted raw ASGI app may send a start without it.
        for header in message.get("headers") or ():
            name = header[0]
            if name == _EXPOSE:
                exposed.append(header[1])  # every line the app sent: ours replaces them all
            elif name not in replaced:
                headers.append(header)
        headers.append((self._header_key, rid.encode("latin-1")))
        if traceparent is not None:
            value = traceparent.encode("latin-1")
            headers.append((_TRACERESPONSE, value))
            headers.append((b"server-timing", b'traceparent;desc="' + value + b'"'))
        exposed.append(self._exposed)
        headers.append((_EXPOSE, b", ".join(exposed)))
        message["headers"] = headers


def _is_last(kind: str, message: Message, trailers: bool) -> bool:
    if kind == _FINAL_BODY:
        return not trailers and not message.get("more_body", False)
    if kind == "http.response.trailers":
        return not message.get("more_trailers", False)
    return kind == "http.response.pathsend"


def _finish_incomplete(request: ServerRequest, disconnected: bool) -> None:
    request.finish(
        ConnectionError("Client disconnected")
        if disconnected
        else RuntimeError("Incomplete ASGI response")
    )


def insert_inside_server_span(stack: Any, make: Any) -> Any:
    """Place ``make(inner)`` just inside the contrib OpenTelemetryMiddleware, else outermost.

    With FastAPI's native telemetry hooks our middleware starts the span itself, outermost in
    the Starlette stack; with the contrib middleware, the span starts at that middleware, so we
    go right inside it.
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
