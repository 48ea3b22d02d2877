"""FastAPI: one server span per request, from FastAPI's native telemetry or the contrib middleware.

FastAPI 0.165+ has native telemetry: hooks that report the matched route and unhandled
exceptions, and a wrapper around the app that turns them into a span and metrics. ``native`` mode
keeps the hooks and replaces the wrapper with our own middleware, which emits the same span and
metrics in the pass that also handles request ids and trace headers (``server_span``), for a
fraction of the CPU. ``contrib`` uses the contrib OpenTelemetryMiddleware (FastAPI without native
telemetry). We pick one (``http_instrumentation``: auto/native/contrib), never both, and add our
middleware and error handlers to every app: the apps passed to ``configure(app=...)`` and, through
a hook on ``FastAPI.__init__``, every app created afterwards (the zero-code path).
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, cast

import fastapi

from otel_dist.fastapi.errors import install_error_handlers, keep_server_duplicates
from otel_dist.fastapi.middleware import TelemetryMiddleware, insert_inside_server_span
from otel_dist.fastapi.server_span import ServerTelemetry
from otel_dist.global_changes import CHANGES
from otel_dist.internal_log import internal_logger
from otel_dist.plan import fastapi_mode
from otel_dist.process import ExitHooks, FlushWhenServerStops
from otel_dist.sdk.providers import Providers
from otel_dist.settings import Settings
from otel_dist.startup_heap import FreezeHeapAfterStartup

_log = internal_logger()
_MARK = "_otel_dist_instrumented"


def chosen_mode(settings: Settings) -> str:
    """``native`` or ``contrib``, from the settings and the installed FastAPI."""
    mode = fastapi_mode(settings)
    if settings.http_instrumentation == "native" and mode != "native":
        _log.warning(
            "otel-dist: OTEL_DIST_HTTP_INSTRUMENTATION=native but FastAPI %s has no native "
            "telemetry; using the contrib middleware",
            fastapi.__version__,
        )
    return mode


def excluded_predicate(patterns: tuple[str, ...]) -> Callable[[MutableMapping[str, Any]], bool]:
    """A scope predicate that is True for paths matching any excluded-URL regex."""
    if not patterns:
        return lambda _scope: False
    combined = re.compile("|".join(f"(?:{p})" for p in patterns))
    cache: dict[str, bool] = {}

    def excluded(scope: MutableMapping[str, Any]) -> bool:
        path = scope.get("path", "")
        hit = cache.get(path)
        if hit is None:
            hit = combined.search(path) is not None
            # Bounded: 10,000 distinct scanner paths must not grow memory without limit.
            if len(cache) < 1024:
                cache[path] = hit
        return hit

    return excluded


def contrib_url_patterns(patterns: tuple[str, ...]) -> list[str]:
    """Our path regexes rewritten for the contrib middleware, which searches the full URL.

    ``^/healthz$`` must still match ``http://host:8000/healthz?probe=1``.
    """
    rewritten = []
    for pattern in patterns:
        url_pattern = pattern
        if url_pattern.startswith("^"):
            url_pattern = r"^[a-z]+://[^/?#]+" + url_pattern[1:]
        if url_pattern.endswith("$") and not url_pattern.endswith(r"\$"):
            url_pattern = url_pattern[:-1] + r"(?:\?.*)?$"
        rewritten.append(url_pattern)
    return rewritten


@dataclass
class FastAPIInstrumentation:
    """Instruments FastAPI apps with the providers and settings chosen at configure time."""

    settings: Settings
    providers: Providers
    mode: str
    exit_hooks: ExitHooks | None = None
    # Shared by every app instrumented with these providers: one set of instruments.
    _server: ServerTelemetry | None = field(default=None, init=False)

    def instrument_app(self, app: fastapi.FastAPI) -> None:
        """Add the server span source, our middleware and error handlers to ``app`` (once)."""
        if getattr(app, _MARK, False):
            return
        setattr(app, _MARK, True)
        if self.mode == "native":
            self._configure_native(app)
        else:
            self._instrument_contrib(app)
        # Handlers first: wrapping rebuilds an already-built stack, which copies the handlers.
        install_error_handlers(app, self.settings)
        self._wrap_middleware_stack(app)

    def _configure_native(self, app: fastapi.FastAPI) -> None:
        # FastAPI reads this dict on every request, so updating it reconfigures the app in place.
        # Its wrapper off: our middleware starts the span and records the metrics instead.
        # (Our error handler logs unhandled exceptions with the trace context; FastAPI's own
        # exception log records would duplicate them. Dependency/endpoint/serialization spans
        # would double the cost of a request.)
        telemetry = cast("dict[str, Any]", vars(app)["_telemetry"])
        telemetry.update(tracing=False, metrics=False, logs=False, operation_spans=False)
        if self._server is None:
            self._server = ServerTelemetry(
                self.providers.tracer_provider,
                self.providers.meter_provider,
                excluded_predicate(self.settings.excluded_urls),
            )

    def _instrument_contrib(self, app: fastapi.FastAPI) -> None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: PLC0415

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.providers.tracer_provider,
            meter_provider=self.providers.meter_provider,
            excluded_urls=",".join(contrib_url_patterns(self.settings.excluded_urls)),
            exclude_spans=["receive", "send"],
        )

    def _wrap_middleware_stack(self, app: fastapi.FastAPI) -> None:
        original = app.build_middleware_stack
        settings = self.settings
        prometheus = self.providers.prometheus
        server = self._server if self.mode == "native" else None
        exit_hooks = self.exit_hooks

        def make(inner: Any) -> TelemetryMiddleware:
            return TelemetryMiddleware(
                inner,
                request_id_header=settings.request_id_header,
                trace_headers=settings.response_trace_headers,
                server=server,
            )

        def build_middleware_stack() -> Any:
            if prometheus is not None:
                # Starlette builds the stack on the app's first ASGI call: this process serves
                # the app, so it gets a scrape endpoint (not a supervisor or --preload master).
                prometheus.serve()
            stack = insert_inside_server_span(original(), make)
            if settings.freeze_startup_heap:
                stack = FreezeHeapAfterStartup(stack)
            return stack if exit_hooks is None else FlushWhenServerStops(stack, exit_hooks)

        app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]
        if app.middleware_stack is not None:
            # The app already served a request: rebuild so the change takes effect.
            app.middleware_stack = app.build_middleware_stack()

    def hook_new_apps(self) -> None:
        """Instrument every FastAPI app created from now on (the zero-code path)."""
        original_init = fastapi.FastAPI.__init__
        instrumentation = self

        def init(app: fastapi.FastAPI, *args: Any, **kwargs: Any) -> None:
            original_init(app, *args, **kwargs)
            try:
                instrumentation.instrument_app(app)
            except Exception:
                _log.exception("otel-dist: could not instrument a FastAPI app; it runs untraced")

        CHANGES.patch(fastapi.FastAPI, "__init__", init)

    def unhook(self) -> None:
        """Stop instrumenting new apps; the server logs every unhandled exception again."""
        keep_server_duplicates()
        CHANGES.unpatch(fastapi.FastAPI, "__init__")
