"""The plan: what setup will do, decided once from the settings, read by setup and by doctor.

Each signal's export and each instrumentation gets one ``Decision`` (runs or not, and why),
made here and nowhere else: ``configure()`` follows the plan, and ``otel-dist doctor`` prints it,
so doctor cannot describe a run that will not happen. Deciding needs no side effect: it only
looks at the settings and at what is installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from otel_dist.sdk.exporters import grpc_exporter_missing, otlp_exporter_available
from otel_dist.sdk.native import NATIVE_VERSION, native_unavailable
from otel_dist.sdk.prometheus import prometheus_host_problem
from otel_dist.settings import SIGNALS, ConfigurationError, Settings, Signal

DISABLED = "listed in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
# The order the providers are built in (metrics first: the others report their losses through
# it), so problems are listed in the order setup meets them.
_BUILD_ORDER: tuple[Signal, ...] = ("metrics", "traces", "logs")
SDK_DISABLED = "OTEL_SDK_DISABLED=true"
NOT_EXPORTED = "spans are not exported"


@dataclass(frozen=True)
class Decision:
    """Whether one step runs, and why (the text ``configure()`` and doctor both show)."""

    runs: bool
    why: str


@dataclass(frozen=True)
class Plan:
    """Every decision of one setup, in setup order.

    ``settings`` are the settings as they will run: a signal whose export cannot be built has
    its exporter set to ``none`` here, the one place it is decided. ``problems`` lists every bad
    setting and every export that cannot be built, one line each.
    """

    settings: Settings
    exports: Mapping[Signal, Decision]
    steps: Mapping[str, Decision]
    problems: tuple[str, ...]
    native_spans: Decision = Decision(False, "OTEL_DIST_NATIVE_EXPORT=off")

    def exports_signal(self, signal: Signal) -> bool:
        """True when ``signal`` will leave the process."""
        return self.exports[signal].runs

    def native_fallback(self) -> str | None:
        """What to say when native span export was asked for (``on``) and cannot be used."""
        native = self.native_spans
        if self.settings.native_export != "on" or native.runs or native.why == NOT_EXPORTED:
            return None
        return f"OTEL_DIST_NATIVE_EXPORT=on, but {native.why}; spans are exported by the SDK"

    def turns_signal_off(self, problem: str) -> bool:
        """True when ``problem`` is why a signal is not exported (else a default stands in)."""
        return problem in self._signal_off_problems()

    def _signal_off_problems(self) -> set[str]:
        off = {
            problem for problems in self.settings.signal_problems.values() for problem in problems
        }
        return off | {d.why for d in self.exports.values() if not d.runs and d.why in self.problems}


def make_plan(settings: Settings, *, strict: bool) -> Plan:
    """Decide every export and every instrumentation for ``settings``.

    ``strict`` (``configure()``) raises ``ConfigurationError`` for an export that cannot be
    built; otherwise (the launcher, doctor) that signal is off and its problem listed.
    """
    problems = list(settings.problems)
    exports: dict[Signal, Decision] = {}
    off: dict[str, Any] = {}
    for signal in _BUILD_ORDER:
        decision, problem = _decide_export(settings, signal)
        if problem is not None:
            if strict:
                raise ConfigurationError(problem)
            problems.append(problem)
            off[f"{signal}_exporter"] = "none"
        exports[signal] = decision
    as_run = replace(settings, **off)
    steps = {name: decide(as_run) for name, decide in STEPS}
    ordered = {signal: exports[signal] for signal in SIGNALS}
    native = decide_native_export(as_run, exports["traces"].runs)
    return Plan(as_run, ordered, steps, tuple(problems), native)


def decide_native_export(settings: Settings, traces_exported: bool) -> Decision:
    """Whether spans leave through fastotel (the ``[native]`` extra), and why (not)."""
    if settings.native_export == "off":
        return Decision(False, "OTEL_DIST_NATIVE_EXPORT=off")
    if not traces_exported:
        return Decision(False, NOT_EXPORTED)
    if settings.traces_exporter != "otlp":
        return Decision(
            False, f"the traces exporter is {settings.traces_exporter}: fastotel sends OTLP only"
        )
    if settings.otlp["traces"].protocol != "http/protobuf":
        return Decision(False, "traces go over OTLP/gRPC and fastotel sends OTLP/HTTP only")
    unavailable = native_unavailable()
    if unavailable is not None:
        return Decision(False, unavailable)
    return Decision(True, f"fastotel {NATIVE_VERSION}: spans batched, encoded and sent off the GIL")


def _decide_export(settings: Settings, signal: Signal) -> tuple[Decision, str | None]:
    """The export decision for ``signal`` and, when it cannot be built, the problem."""
    exporter = settings.exporter(signal)
    if settings.sdk_disabled:
        return Decision(False, SDK_DISABLED), None
    if exporter == "none":
        broken = settings.signal_problems.get(signal)
        return Decision(False, broken[0] if broken else f"exporter {exporter}"), None
    problem = _export_problem(settings, signal)
    if problem is not None:
        return Decision(False, problem), problem
    return Decision(True, _export_target(settings, signal)), None


def _export_problem(settings: Settings, signal: Signal) -> str | None:
    exporter = settings.exporter(signal)
    if exporter == "otlp" and not otlp_exporter_available(settings, signal):
        return str(grpc_exporter_missing(signal))
    if exporter == "prometheus":
        return prometheus_host_problem(settings.prometheus_host)
    return None


def _export_target(settings: Settings, signal: Signal) -> str:
    exporter = settings.exporter(signal)
    if exporter == "otlp":
        otlp = settings.otlp[signal]
        return f"otlp {otlp.protocol} to {otlp.endpoint}"
    if exporter == "prometheus":
        return f"prometheus on {settings.prometheus_host}:{settings.prometheus_port}"
    return exporter


# --- the instrumentations -------------------------------------------------------------------


def installed(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def native_fastapi_telemetry() -> bool:
    """True when the installed FastAPI has the native telemetry hooks we drive."""
    try:
        from fastapi.telemetry._api import _RequestTelemetry  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def fastapi_mode(settings: Settings) -> str:
    """``native`` or ``contrib``, from the settings and the installed FastAPI."""
    if settings.http_instrumentation == "contrib" or not native_fastapi_telemetry():
        return "contrib"
    return "native"


def _enabled(settings: Settings, *names: str) -> bool:
    return all(settings.instrumentation_enabled(name) for name in names)


def _exported(settings: Settings, signal: Signal) -> bool:
    return settings.exporter(signal) != "none"


def _version_or_off(
    settings: Settings, dist: str, *, label: str | None = None, also: str | None = None
) -> str | Decision:
    """The installed version of ``dist``, or the decision not to run (disabled, not installed).

    ``also``: another name in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS that turns it off.
    """
    if not _enabled(settings, dist, *((also,) if also else ())):
        return Decision(False, DISABLED)
    found = installed(dist)
    return Decision(False, f"{label or dist} is not installed") if found is None else found


def decide_fastapi(settings: Settings) -> Decision:
    """FastAPI apps get the server span source, our middleware and the error handlers."""
    fastapi_version = _version_or_off(settings, "fastapi", label="FastAPI")
    if isinstance(fastapi_version, Decision):
        return fastapi_version
    mode = fastapi_mode(settings)
    why = f"FastAPI {fastapi_version}, {mode} telemetry"
    if settings.http_instrumentation == "native" and mode != "native":
        why += " (OTEL_DIST_HTTP_INSTRUMENTATION=native, but this FastAPI has none)"
    if not (_exported(settings, "traces") or _exported(settings, "metrics")):
        why += (
            "; request ids, trace context and error bodies only: traces and metrics exporters "
            "are none"
        )
    return Decision(True, why)


def decide_sqlalchemy(settings: Settings) -> Decision:
    """Statement spans when traces are exported, pool metrics when metrics are."""
    sa_version = _version_or_off(settings, "sqlalchemy", label="SQLAlchemy")
    if isinstance(sa_version, Decision):
        return sa_version
    if not (_exported(settings, "traces") or _exported(settings, "metrics")):
        return Decision(False, "traces and metrics exporters are none")
    greenlet = (
        "AsyncEngine supported"
        if installed("greenlet")
        else "greenlet not installed: sync engines only"
    )
    why = f"SQLAlchemy {sa_version} (otel-dist events; {greenlet})"
    if not _exported(settings, "traces"):
        why += "; pool metrics only: no statement spans (traces none)"
    return Decision(True, why)


def decide_logging(settings: Settings) -> Decision:
    """Stdlib records get the ids (log correlation) and/or go to the logs exporter."""
    if not _enabled(settings, "logging", "structlog"):
        return Decision(False, DISABLED)
    exported = {"otlp": "; exported over OTLP", "console": "; exported to the console"}.get(
        settings.exporter("logs"), ""
    )
    if settings.log_correlation:
        return Decision(True, "stdlib records get trace_id/span_id/request_id" + exported)
    if exported:
        return Decision(True, f"records{exported}, no ids added (OTEL_DIST_LOG_CORRELATION=false)")
    return Decision(False, "OTEL_DIST_LOG_CORRELATION=false and logs exporter none")


def decide_structlog(settings: Settings) -> Decision:
    """Part of the logging step: structlog's processors get the ids before the renderer."""
    structlog_version = _version_or_off(settings, "structlog", also="logging")
    if isinstance(structlog_version, Decision):
        return structlog_version
    if not settings.log_correlation:
        return Decision(False, "OTEL_DIST_LOG_CORRELATION=false")
    why = f"structlog {structlog_version}: trace ids injected before the renderer"
    if not _exported(settings, "traces"):
        why += " (their spans are not exported: traces none)"
    return Decision(True, why)


def decide_httpx(settings: Settings) -> Decision:
    """Outgoing httpx calls carry the trace context whatever is exported."""
    if not _enabled(settings, "httpx"):
        return Decision(False, DISABLED)
    if importlib.util.find_spec("httpx") is None:
        return Decision(False, "httpx is not installed")
    if _exported(settings, "traces"):
        return Decision(True, "outgoing calls carry traceparent")
    return Decision(
        True, "outgoing calls carry traceparent; their spans are not exported (traces none)"
    )


def decide_runtime_metrics(settings: Settings) -> Decision:
    """Process CPU, memory, threads and GC, when metrics are exported."""
    if not settings.runtime_metrics:
        return Decision(False, "OTEL_DIST_RUNTIME_METRICS=false")
    if not _enabled(settings, "system_metrics"):
        return Decision(False, DISABLED)
    if not _exported(settings, "metrics"):
        return Decision(False, "metrics exporter is none")
    if importlib.util.find_spec("opentelemetry.instrumentation.system_metrics") is None:
        return Decision(False, "system-metrics instrumentation is not installed")
    return Decision(True, "process CPU/memory/threads/GC")


def _sdk_disabled_or(decide: Callable[[Settings], Decision]) -> Callable[[Settings], Decision]:
    def decision(settings: Settings) -> Decision:
        return Decision(False, SDK_DISABLED) if settings.sdk_disabled else decide(settings)

    return decision


# Setup order; "structlog" is part of the "logging" step, listed apart because users look for it.
STEPS: tuple[tuple[str, Callable[[Settings], Decision]], ...] = tuple(
    (name, _sdk_disabled_or(decide))
    for name, decide in (
        ("fastapi", decide_fastapi),
        ("sqlalchemy", decide_sqlalchemy),
        ("structlog", decide_structlog),
        ("logging", decide_logging),
        ("httpx", decide_httpx),
        ("runtime metrics", decide_runtime_metrics),
    )
)
