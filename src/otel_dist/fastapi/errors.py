"""Error responses that carry the trace id and request id, without breaking an app's contract.

The ids reach the client in the response headers of every request. In bodies
(``error_body_ids``): by default only the 500 of an exception the app did not handle carries
them, as ``{"detail": "Internal Server Error", "trace_id": ..., "request_id": ...}``; the bodies
the app produced itself (its ``HTTPException``s, FastAPI's 422 validation body) stay exactly what
FastAPI sends, because clients and test suites compare them whole. ``all`` adds the two members
to those too, ``none`` to no body. ``problem`` answers RFC 9457 ``application/problem+json`` for
every error: those bodies are otel-dist's own, so they carry the ids unless ``none``. A 500 never
shows the exception unless ``debug_errors`` is on. Only FastAPI's *default* handlers are
replaced: an app's own handlers stay, and can add the ids with one call to ``error_ids()``.

An unhandled exception is logged once, on ``otel_dist.errors``: ``unhandled exception: GET
/path trace_id=... span_id=... request_id=...`` and the traceback. uvicorn's own "Exception in
ASGI application" record of that same exception (standalone or under gunicorn's
``UvicornWorker``) is dropped; every other server line stays.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi import exception_handlers as fastapi_defaults
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.utils import is_body_allowed_for_status_code
from opentelemetry import trace
from opentelemetry.trace import format_span_id, format_trace_id
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from otel_dist.fastapi import request_id
from otel_dist.global_changes import CHANGES
from otel_dist.settings import Settings

PROBLEM_JSON = "application/problem+json"
# The app-facing logger for unhandled exceptions: its records carry the trace context, reach the
# app's own log handlers (stdout) and the OTLP log export.
error_log = logging.getLogger("otel_dist.errors")
# uvicorn (standalone or as gunicorn's UvicornWorker) logs every exception that leaves the app on
# this logger; Starlette re-raises past our handler, so the same traceback came again, with no id.
SERVER_ERROR_LOGGER = "uvicorn.error"
# Set on an exception once ``error_log`` recorded it: the server's record of it is a duplicate.
_LOGGED_MARK = "_otel_dist_logged"

Handler = Callable[[Request, Any], Awaitable[Response]]


def error_ids(request: Request | None = None) -> dict[str, str]:
    """``{"trace_id": ..., "request_id": ...}`` for the request being handled.

    Use it in your own exception handlers: ``JSONResponse({"detail": ..., **error_ids()})``.
    Members are omitted when unknown (no valid span, no request id).
    """
    ids: dict[str, str] = {}
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        ids["trace_id"] = format_trace_id(context.trace_id)
    rid = request_id.current_request_id()
    if rid is None and request is not None:
        rid = request.scope.get("state", {}).get("request_id")
    if rid is not None:
        ids["request_id"] = rid
    return ids


class _ErrorBodies:
    """Builds the bodies for one settings object (format and debug chosen once)."""

    def __init__(self, settings: Settings) -> None:
        self.problem = settings.error_format == "problem"
        self.debug = settings.debug_errors
        self.ids_in_unhandled = settings.error_body_ids != "none"
        # Replacing FastAPI's HTTPException and validation handlers changes bodies the app
        # wrote: only when asked to (ids in them, or the problem format).
        self.replaces_app_bodies = self.problem or settings.error_body_ids == "all"
        self.ids_in_app_bodies = self.replaces_app_bodies and self.ids_in_unhandled
        self.ids_in_log = settings.log_correlation

    def respond(
        self,
        request: Request,
        status: int,
        detail: Any,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        *,
        with_ids: bool,
    ) -> Response:
        ids = error_ids(request) if with_ids else {}
        if not self.problem:
            body = {"detail": detail, **(extra or {}), **ids}
            return JSONResponse(body, status_code=status, headers=headers)
        body = {
            "type": "about:blank",
            "title": _phrase(status),
            "status": status,
            "instance": request.url.path,
            **({"detail": detail} if isinstance(detail, str) else {}),
            **(extra or {}),
            **ids,
        }
        return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)

    async def http_exception(self, request: Request, exc: HTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if not is_body_allowed_for_status_code(exc.status_code):
            return Response(status_code=exc.status_code, headers=headers)
        return self.respond(
            request, exc.status_code, exc.detail, headers, with_ids=self.ids_in_app_bodies
        )

    async def validation(self, request: Request, exc: RequestValidationError) -> Response:
        errors = jsonable_encoder(exc.errors())
        with_ids = self.ids_in_app_bodies
        if not self.problem:
            return self.respond(request, 422, errors, with_ids=with_ids)
        # Problem bodies drop pydantic's "input": it echoes what the client sent (passwords).
        cleaned = [{k: v for k, v in e.items() if k != "input"} for e in errors]
        return self.respond(
            request,
            422,
            "Request validation failed",
            extra={"errors": cleaned},
            with_ids=with_ids,
        )

    async def unhandled(self, request: Request, exc: Exception) -> Response:
        _log_unhandled(request, exc, with_ids=self.ids_in_log)
        extra: dict[str, Any] = {}
        if self.debug:
            extra["exception"] = f"{type(exc).__name__}: {exc}"
            extra["traceback"] = traceback.format_exception(type(exc), exc, exc.__traceback__)
        elif not (self.problem or self.ids_in_unhandled):
            return PlainTextResponse("Internal Server Error", status_code=500)  # Starlette's own
        return self.respond(
            request, 500, "Internal Server Error", extra=extra, with_ids=self.ids_in_unhandled
        )


def _log_unhandled(request: Request, exc: Exception, *, with_ids: bool) -> None:
    """One error line for the exception: method, path, the ids in its text, the traceback.

    The ids are written into the message itself so they show whatever the log format is (the
    record attributes carry them too). The exception is then marked so the server's own record
    of it is dropped, but only when this line was really emitted: nothing is lost if the app
    silenced ``otel_dist.errors``.
    """
    ids = _log_ids(request) if with_ids else ""
    error_log.error(
        "unhandled exception: %s %s%s", request.method, request.url.path, ids, exc_info=exc
    )
    if error_log.isEnabledFor(logging.ERROR):
        with contextlib.suppress(AttributeError, TypeError):
            setattr(exc, _LOGGED_MARK, True)


def _log_ids(request: Request) -> str:
    ids = error_ids(request)
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        ids["span_id"] = format_span_id(context.span_id)
    order = ("trace_id", "span_id", "request_id")
    return "".join(f" {name}={ids[name]}" for name in order if name in ids)


class _SkipLoggedExceptions(logging.Filter):
    """Drops the server's record of an exception ``error_log`` already logged with its ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not getattr(exc, _LOGGED_MARK, False)


_skip_logged_exceptions = _SkipLoggedExceptions()


def drop_server_duplicates() -> None:
    """Keep the server from logging again an exception our handler logged (idempotent).

    Only records carrying an exception we marked are dropped: every other server line stays.
    """
    CHANGES.add_filter(SERVER_ERROR_LOGGER, _skip_logged_exceptions)


def keep_server_duplicates() -> None:
    """Undo ``drop_server_duplicates``."""
    CHANGES.remove_filter(SERVER_ERROR_LOGGER, _SkipLoggedExceptions)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install_error_handlers(app: FastAPI, settings: Settings) -> list[str]:
    """Install our 500 handler and, when the bodies the app wrote may change, our 4xx ones.

    Only FastAPI's defaults are replaced: the app's own handlers stay. Starlette copies the
    handlers into the middleware stack when it builds it, so call this before the stack is
    (re)built. Returns the names of the handlers installed.
    """
    bodies = _ErrorBodies(settings)
    handlers = app.exception_handlers
    installed = _replace_app_body_handlers(handlers, bodies) if bodies.replaces_app_bodies else []
    if 500 not in handlers and Exception not in handlers:
        handlers[Exception] = bodies.unhandled
        installed.append("Exception")
        drop_server_duplicates()
    return installed


def _replace_app_body_handlers(handlers: dict[Any, Any], bodies: _ErrorBodies) -> list[str]:
    installed: list[str] = []
    if handlers.get(HTTPException) in (None, fastapi_defaults.http_exception_handler):
        handlers[HTTPException] = bodies.http_exception
        installed.append("HTTPException")
    if handlers.get(RequestValidationError) in (
        None,
        fastapi_defaults.request_validation_exception_handler,
    ):
        handlers[RequestValidationError] = bodies.validation
        installed.append("RequestValidationError")
    return installed
