"""``configure()``: the one code path behind both ways in (the call and the auto-launcher).

settings -> SDK providers (installed globally) -> instrumentations (given the providers) ->
outputs (exporters, log correlation, response ids), then the process hooks. Every step is a
small function below; ``_setup`` reads as the list of them.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import wrapt
from opentelemetry import _logs, metrics, propagate, trace
from opentelemetry.propagators.composite import CompositePropagator

from otel_dist import logs as log_correlation
from otel_dist.bounded import run_bounded
from otel_dist.fastapi.incoming_context import (
    LinkUntrustedCaller,
    OneTraceparentOnly,
    UntrustedEdgePropagator,
)
from otel_dist.fastapi.instrument import FastAPIInstrumentation, chosen_mode
from otel_dist.global_changes import CHANGES
from otel_dist.header_warnings import make_header_warnings_safe
from otel_dist.internal_log import internal_logger, make_visible
from otel_dist.log_format import use_configured_format
from otel_dist.plan import SDK_DISABLED, Plan, make_plan
from otel_dist.process import ExitHooks, refresh_identity_after_fork
from otel_dist.scrub import Scrubber
from otel_dist.sdk.export_health import fold_sdk_export_messages
from otel_dist.sdk.providers import Providers, build_providers
from otel_dist.settings import SAMPLER_FALLBACK, ConfigurationError, Settings, load_settings
from otel_dist.sqlalchemy import SqlAlchemyInstrumentation, instrument_sqlalchemy

_log = internal_logger()
_EXIT_HOOKS = ("exit hooks",)
_LOG_FORMAT = ("log format",)
_lock = threading.Lock()
_active: Telemetry | None = None


@dataclass
class Telemetry:
    """Handle returned by ``configure()``: what was set up, and how to flush or stop it."""

    settings: Settings
    providers: Providers
    instrumented: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    _fastapi: FastAPIInstrumentation | None = None
    _sqlalchemy: SqlAlchemyInstrumentation | None = None
    _logs: log_correlation.LogCorrelation | None = None
    _exit_hooks: ExitHooks | None = None
    _shut_down: bool = False

    def instrument_app(self, app: Any) -> None:
        """Instrument a FastAPI app created after ``configure()`` when the hook could not."""
        if self._fastapi is not None:
            self._fastapi.instrument_app(app)

    def instrument_engine(self, engine: Any) -> None:
        """Register one more SQLAlchemy engine (or AsyncEngine) for pool metrics."""
        if self._sqlalchemy is not None:
            self._sqlalchemy.add_engine(engine)

    def force_flush(self, timeout_s: float | None = None) -> bool:
        """Export everything buffered, waiting at most ``timeout_s`` (default: the bound)."""
        timeout = self.settings.shutdown_timeout_s if timeout_s is None else timeout_s
        return run_bounded(self._flush_all, timeout, "flush")

    def shutdown(self) -> None:
        """Flush within the bound, stop exporting and remove every hook otel-dist installed."""
        global _active  # noqa: PLW0603
        self._shut_down = True
        CHANGES.undo(_EXIT_HOOKS)
        run_bounded(self._shutdown_providers, self.settings.shutdown_timeout_s, "shutdown")
        self._uninstrument()
        CHANGES.undo_all()
        with _lock:
            if _active is self:
                _active = None

    def _flush_all(self) -> None:
        for provider in self._providers():
            provider.force_flush()

    def _shutdown_providers(self) -> None:
        for provider in self._providers():
            provider.shutdown()

    def _providers(self) -> list[Any]:
        p = self.providers
        return [
            x for x in (p.tracer_provider, p.meter_provider, p.logger_provider) if x is not None
        ]

    def _uninstrument(self) -> None:
        if self._fastapi is not None:
            self._fastapi.unhook()
        if self._sqlalchemy is not None:
            self._sqlalchemy.uninstrument()
        if self._logs is not None:
            self._logs.uninstall()


def configure(
    app: Any = None,
    engine: Any = None,
    *,
    engines: Iterable[Any] = (),
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> Telemetry:
    """Set up traces, metrics and logs for a FastAPI + SQLAlchemy service, once.

    ``app`` and ``engine``/``engines`` may be omitted: FastAPI apps created later are instrumented
    automatically, and every SQLAlchemy engine is traced; pass existing ones so they get the
    middleware and pool metrics. ``options`` are the settings in README's option table
    (keyword arguments win over the environment). Raises ``ConfigurationError`` naming the
    variable and the accepted values on a bad setting. A second call changes nothing, warns, and
    returns the first handle (instrumenting any new ``app``/``engine`` passed to it).
    """
    global _active  # noqa: PLW0603
    make_visible()
    all_engines = [e for e in (engine, *engines) if e is not None]
    with _lock:
        if _active is not None:
            _log.warning("otel-dist: configure() was already called; this call changes nothing")
            _add_targets(_active, app, all_engines)
            return _active
        settings = load_settings(os.environ if env is None else env, options, strict=True)
        _active = _setup(settings, strict=True, app=app, engines=all_engines)
        return _active


def configure_from_launcher() -> Telemetry | None:
    """The auto-launcher's entry: never raises; bad settings switch their signal off."""
    global _active  # noqa: PLW0603
    make_visible()
    with _lock:
        if _active is not None:
            return _active
        try:
            settings = load_settings(os.environ, strict=False)
            _active = _setup(settings, strict=False, app=None, engines=[])
        except Exception:
            _log.exception("otel-dist: telemetry setup failed; the app runs without telemetry")
            return None
        return _active


def active() -> Telemetry | None:
    """The handle of the current configuration, if ``configure()`` ran."""
    return _active


def _add_targets(telemetry: Telemetry, app: Any, engines: list[Any]) -> None:
    if app is not None:
        telemetry.instrument_app(app)
    for engine in engines:
        telemetry.instrument_engine(engine)


def _setup(settings: Settings, *, strict: bool, app: Any, engines: list[Any]) -> Telemetry:
    plan = make_plan(settings, strict=strict)
    _report_problems(plan.problems, plan.turns_signal_off)
    if settings.sdk_disabled:
        telemetry = Telemetry(plan.settings, Providers(_empty_resource(), None, None, None))
        telemetry.skipped["all"] = SDK_DISABLED
        return telemetry
    scrubber = Scrubber(settings.scrub_patterns, enabled=settings.scrub)
    _prefer_stable_http_semconv()
    _say_why_not_native(plan)
    providers, build_problems = build_providers(
        plan.settings, scrubber, strict=strict, native=plan.native_spans.runs
    )
    _report_problems(build_problems, lambda _problem: True)
    telemetry = Telemetry(plan.settings, providers)
    _install_globals(providers)
    _guard_untrusted_edge(telemetry)
    _summarise_export_failures(telemetry)
    make_header_warnings_safe()
    refresh_identity_after_fork(telemetry._providers())
    telemetry._exit_hooks = ExitHooks(
        telemetry._shutdown_providers, telemetry._flush_all, settings.shutdown_timeout_s
    )
    for name, instrument in _STEPS:
        decision = plan.steps[name]
        if decision.runs:
            instrument(telemetry, scrubber, app, engines)
        else:
            telemetry.skipped[name] = decision.why
    # configure_structlog() reads the format from here (keyword > environment > auto).
    CHANGES.register(_LOG_FORMAT, lambda: use_configured_format(settings.log_format))
    _install_exit_hooks(telemetry._exit_hooks)
    _log.debug("otel-dist: instrumented %s; skipped %s", telemetry.instrumented, telemetry.skipped)
    return telemetry


def _report_problems(problems: Iterable[str], turns_signal_off: Callable[[str], bool]) -> None:
    # One line per bad value: the launcher must say what is wrong without crashing the app.
    for problem in problems:
        if problem.endswith(SAMPLER_FALLBACK):  # says itself what happens instead
            _log.error("otel-dist: %s", problem)
        elif turns_signal_off(problem):
            _log.error("otel-dist: %s (telemetry for that setting's signal is off)", problem)
        else:
            _log.error("otel-dist: %s (its default is used)", problem)


def _say_why_not_native(plan: Plan) -> None:
    # Asked for explicitly: one line with the reason. Under "auto" the SDK path is the default.
    fallback = plan.native_fallback()
    if fallback is not None:
        _log.warning("otel-dist: %s", fallback)


def _empty_resource() -> Any:
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

    return Resource.get_empty()


def _prefer_stable_http_semconv() -> None:
    # The contrib HTTP instrumentations read this once; "http" gives http.server.request.duration
    # in seconds keyed by http.route (FastAPI's native telemetry always emits the stable names).
    CHANGES.set_env_default("OTEL_SEMCONV_STABILITY_OPT_IN", "http")


def _install_globals(providers: Providers) -> None:
    if providers.tracer_provider is not None:
        trace.set_tracer_provider(providers.tracer_provider)
    if providers.meter_provider is not None:
        metrics.set_meter_provider(providers.meter_provider)
    if providers.logger_provider is not None:
        _logs.set_logger_provider(providers.logger_provider)
    if not isinstance(propagate.get_global_textmap(), OneTraceparentOnly):
        CHANGES.register(("propagator", OneTraceparentOnly), _one_traceparent_only)


def _one_traceparent_only() -> Callable[[], None]:
    previous = propagate.get_global_textmap()
    composite = previous
    if not isinstance(composite, CompositePropagator):
        composite = CompositePropagator([composite])
    propagate.set_global_textmap(OneTraceparentOnly(composite))
    return lambda: propagate.set_global_textmap(previous)


def _install_exit_hooks(hooks: ExitHooks) -> None:
    def make() -> Callable[[], None]:
        hooks.install()
        return hooks.uninstall

    CHANGES.register(_EXIT_HOOKS, make)


def _guard_untrusted_edge(telemetry: Telemetry) -> None:
    # Opt-in: requests start their own trace, linked to (not continuing) the caller's.
    tracer_provider = telemetry.providers.tracer_provider
    if telemetry.settings.trust_incoming_context or tracer_provider is None:
        return
    tracer_provider.add_span_processor(LinkUntrustedCaller())
    propagator = propagate.get_global_textmap()
    if not isinstance(propagator, UntrustedEdgePropagator):

        def make() -> Callable[[], None]:
            propagate.set_global_textmap(UntrustedEdgePropagator(propagator))
            return lambda: propagate.set_global_textmap(propagator)

        CHANGES.register(("propagator", UntrustedEdgePropagator), make)


def _summarise_export_failures(telemetry: Telemetry) -> None:
    # One rate-limited stderr line replaces the SDK's warning per failed attempt and batch.
    health = telemetry.providers.export_health
    if health is not None:
        fold_sdk_export_messages(health)


def _instrument_fastapi(telemetry: Telemetry, _scrubber: Scrubber, app: Any, _e: Any) -> None:
    mode = chosen_mode(telemetry.settings)
    instrumentation = FastAPIInstrumentation(
        telemetry.settings, telemetry.providers, mode, telemetry._exit_hooks
    )
    instrumentation.hook_new_apps()
    if app is not None:
        instrumentation.instrument_app(app)
    telemetry._fastapi = instrumentation
    telemetry.instrumented.append(f"fastapi ({mode})")


def _instrument_sqlalchemy(
    telemetry: Telemetry, _scrubber: Scrubber, _app: Any, engines: list[Any]
) -> None:
    providers = telemetry.providers
    # Statement spans nobody exports would only cost time: the request's span stays current.
    tracer_provider = providers.tracer_provider if providers.exports("traces") else None
    telemetry._sqlalchemy = instrument_sqlalchemy(
        tracer_provider=tracer_provider or trace.NoOpTracerProvider(),
        meter_provider=providers.meter_provider or metrics.NoOpMeterProvider(),
        engines=engines,
        sqlcommenter=telemetry.settings.sqlcommenter,
    )
    telemetry.instrumented.append("sqlalchemy")


def _instrument_logs(telemetry: Telemetry, scrubber: Scrubber, _app: Any, _e: Any) -> None:
    service_name = str(telemetry.providers.resource.attributes.get("service.name", ""))
    telemetry._logs = log_correlation.install_log_correlation(
        service_name=service_name,
        scrubber=scrubber,
        logger_provider=telemetry.providers.logger_provider,
        add_ids=telemetry.settings.log_correlation,
    )
    telemetry.instrumented.append("logging")


def _instrument_httpx(telemetry: Telemetry, _scrubber: Scrubber, _app: Any, _e: Any) -> None:
    # httpx and its instrumentation cost about 5 MB and 80 ms to import: paid only by processes
    # that import httpx (the app, now or later, or the launcher's own httpx instrumentor). The
    # contrib module imports httpx itself, so an import of it fires the httpx hook while it is
    # still executing: the httpx hook leaves that case to the hook on the module.
    def when_httpx_imported(_module: Any) -> None:
        if _HTTPX_INSTRUMENTATION not in sys.modules:
            _instrument_imported_httpx(telemetry)

    wrapt.when_imported(_HTTPX_INSTRUMENTATION)(lambda _m: _instrument_imported_httpx(telemetry))
    wrapt.when_imported("httpx")(when_httpx_imported)
    telemetry.instrumented.append("httpx")


_HTTPX_INSTRUMENTATION = "opentelemetry.instrumentation.httpx"


def _instrument_imported_httpx(telemetry: Telemetry) -> None:
    # Runs inside the app's import statement: it must never make that import fail.
    if telemetry._shut_down:
        return  # shut down before the app imported httpx
    try:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415

        instrumentor = HTTPXClientInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            _register_instrumentor(
                "httpx",
                instrumentor,
                tracer_provider=telemetry.providers.tracer_provider,
                meter_provider=telemetry.providers.meter_provider,
            )
    except Exception:
        _log.exception("otel-dist: httpx could not be instrumented; its calls are not traced")


def _register_instrumentor(name: str, instrumentor: Any, **providers: Any) -> None:
    # A contrib instrumentor patches its library globally: undone at shutdown like ours.
    def make() -> Callable[[], None]:
        instrumentor.instrument(**providers)
        return instrumentor.uninstrument  # type: ignore[no-any-return]

    CHANGES.register(("instrumentor", name), make)


_RUNTIME_METRICS: dict[str, list[str] | None] = {
    "process.cpu.time": ["user", "system"],
    "process.cpu.utilization": None,
    "process.memory.usage": None,
    "process.memory.virtual": None,
    "process.thread.count": None,
    "process.open_file_descriptor.count": None,
    "process.context_switches": ["involuntary", "voluntary"],
    "cpython.gc.collections": None,
}


def _instrument_runtime(telemetry: Telemetry, _scrubber: Scrubber, _app: Any, _e: Any) -> None:
    from opentelemetry.instrumentation.system_metrics import (  # noqa: PLC0415
        SystemMetricsInstrumentor,
    )

    instrumentor = SystemMetricsInstrumentor(config=_RUNTIME_METRICS)
    if not instrumentor.is_instrumented_by_opentelemetry:
        _register_instrumentor(
            "runtime metrics", instrumentor, meter_provider=telemetry.providers.meter_provider
        )
    telemetry.instrumented.append("runtime metrics")


_Step = Callable[[Telemetry, Scrubber, Any, list[Any]], None]
# What carries out each step of the plan ("structlog" is part of the "logging" step).
_STEPS: tuple[tuple[str, _Step], ...] = (
    ("fastapi", _instrument_fastapi),
    ("sqlalchemy", _instrument_sqlalchemy),
    ("logging", _instrument_logs),
    ("httpx", _instrument_httpx),
    ("runtime metrics", _instrument_runtime),
)


__all__ = ["ConfigurationError", "Telemetry", "active", "configure", "configure_from_launcher"]
