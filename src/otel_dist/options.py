"""Every option, declared once: its keyword, environment variable(s), parser, signal and doc.

The parsers take the raw string (or keyword value) and return the typed value, or raise
``ValueError`` with the accepted values; ``settings.load_settings`` turns that into a
``ConfigurationError`` naming the variable. README's option table is generated from ``OPTIONS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args
from urllib.parse import unquote, urlsplit

Signal = Literal["traces", "metrics", "logs"]
SIGNALS: tuple[Signal, ...] = ("traces", "metrics", "logs")

# Each choice option's accepted values, as a type (Settings' fields) and a tuple (the parser).
SpanExporterName = Literal["otlp", "console", "none"]
MetricExporterName = Literal["otlp", "prometheus", "console", "none"]
LogExporterName = Literal["otlp", "console", "none"]
OtlpProtocol = Literal["http/protobuf", "grpc"]
Compression = Literal["none", "gzip", "deflate"]
SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
HttpInstrumentation = Literal["auto", "native", "contrib"]
ErrorFormat = Literal["detail", "problem"]
ErrorBodyIds = Literal["unhandled", "all", "none"]
LogFormat = Literal["auto", "json", "console"]
NativeExport = Literal["auto", "on", "off"]
SPAN_EXPORTERS: tuple[str, ...] = get_args(SpanExporterName)
METRIC_EXPORTERS: tuple[str, ...] = get_args(MetricExporterName)
LOG_EXPORTERS: tuple[str, ...] = get_args(LogExporterName)
PROTOCOLS: tuple[str, ...] = get_args(OtlpProtocol)
COMPRESSIONS: tuple[str, ...] = get_args(Compression)
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
DEFAULT_SAMPLER: SamplerName = "parentbased_always_on"
# Only these samplers read OTEL_TRACES_SAMPLER_ARG; with any other its value is not used.
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
# Ends the problem line of a bad sampler setting: tracing goes on, with the default sampler.
SAMPLER_FALLBACK = f"; using the default sampler {DEFAULT_SAMPLER}"
HTTP_INSTRUMENTATIONS: tuple[str, ...] = get_args(HttpInstrumentation)
ERROR_FORMATS: tuple[str, ...] = get_args(ErrorFormat)
ERROR_BODY_IDS: tuple[str, ...] = get_args(ErrorBodyIds)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
NATIVE_EXPORTS: tuple[str, ...] = get_args(NativeExport)
DEFAULT_EXCLUDED_URLS = (
    r"^/health(?:/live|/ready)?/?$",  # otel_dist.health's routes too
    r"^/healthz/?$",
    r"^/livez/?$",
    r"^/readyz/?$",
    r"^/ready/?$",
    r"^/metrics/?$",
)
DEFAULT_OTLP_ENDPOINT = "http://localhost:4318"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


# ---------------------------------------------------------------------------------------------
# Parsers: each takes the raw string (or kwarg value) and returns the typed value or raises
# ValueError with the accepted values; ``_resolve`` turns that into a ConfigurationError that
# names the variable.


def _choice(accepted: Sequence[str]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in accepted:
            raise ValueError(f"accepted values: {', '.join(accepted)}")
        return value

    return parse


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("accepted values: true, false")


def _positive_int(raw: Any) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ValueError("expected a whole number greater than 0") from None
    if value <= 0:
        raise ValueError("expected a whole number greater than 0")
    return value


def _port(raw: Any) -> int:
    value = _positive_int(raw)
    if value > 65535:
        raise ValueError("expected a port number from 1 to 65535")
    return value


def _positive_float(raw: Any) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ValueError("expected a number greater than 0, in seconds") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("expected a number greater than 0, in seconds")
    return value


def _ratio(raw: Any) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ValueError("expected a number from 0.0 to 1.0") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError("expected a number from 0.0 to 1.0")
    return value


def _text(raw: Any) -> str:
    value = str(raw).strip()
    if not value:
        raise ValueError("expected a non-empty value")
    return value


def _header_name(raw: Any) -> str:
    value = str(raw).strip()
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}", value):
        raise ValueError("expected an HTTP header name (letters, digits and -)")
    return value


def _endpoint(raw: Any) -> str:
    value = str(raw).strip()
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("expected an absolute http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an absolute http:// or https:// URL")
    del port
    return value


def _key_value_list(raw: Any) -> dict[str, str]:
    """``k1=v1,k2=v2`` with percent-encoded values (W3C baggage style, as the OTel spec says)."""
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    result: dict[str, str] = {}
    for item in str(raw).split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError("expected comma-separated key=value pairs")
        result[unquote(key.strip())] = unquote(value.strip())
    return result


def _name_list(raw: Any) -> tuple[str, ...]:
    items = [str(x) for x in raw] if isinstance(raw, (list, tuple)) else str(raw).split(",")
    return tuple(item.strip().lower() for item in items if item.strip())


def _regex_list(raw: Any) -> tuple[str, ...]:
    items = [str(x) for x in raw] if isinstance(raw, (list, tuple)) else str(raw).split(",")
    patterns = tuple(item.strip() for item in items if item.strip())
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
    return patterns


@dataclass(frozen=True)
class Option:
    """One setting: its kwarg name, the environment variables read in order, parser, signal."""

    name: str
    env: tuple[str, ...]
    parse: Callable[[Any], Any]
    signal: Signal | None = None
    doc: str = ""


def _opt(name: str, env: str | tuple[str, ...], parse: Callable[[Any], Any], **kw: Any) -> Option:
    return Option(name, (env,) if isinstance(env, str) else env, parse, **kw)


OPTIONS: tuple[Option, ...] = (
    _opt("sdk_disabled", "OTEL_SDK_DISABLED", _bool, doc="Turn every signal off."),
    _opt("service_name", "OTEL_SERVICE_NAME", _text, doc="`service.name` resource attribute."),
    _opt(
        "resource_attributes",
        "OTEL_RESOURCE_ATTRIBUTES",
        _key_value_list,
        doc="Extra resource attributes, `k=v,k2=v2`.",
    ),
    _opt(
        "traces_exporter",
        "OTEL_TRACES_EXPORTER",
        _choice(SPAN_EXPORTERS),
        signal="traces",
        doc="`otlp`, `console` or `none`.",
    ),
    _opt(
        "metrics_exporter",
        "OTEL_METRICS_EXPORTER",
        _choice(METRIC_EXPORTERS),
        signal="metrics",
        doc="`otlp`, `prometheus`, `console` or `none`.",
    ),
    _opt(
        "logs_exporter",
        "OTEL_LOGS_EXPORTER",
        _choice(LOG_EXPORTERS),
        signal="logs",
        doc="`otlp`, `console` or `none`.",
    ),
    # The sampler makes the ids every request carries, exported or not: a bad value falls back
    # to the default sampler (resolved by ``_sampler``), never switches traces off.
    _opt("sampler", "OTEL_TRACES_SAMPLER", _choice(SAMPLERS), doc="Head sampler."),
    _opt(
        "sampler_arg",
        "OTEL_TRACES_SAMPLER_ARG",
        _ratio,
        doc="Ratio for the `*traceidratio` samplers, 0.0 to 1.0 (other samplers ignore it).",
    ),
    _opt(
        "metric_export_interval_ms",
        "OTEL_METRIC_EXPORT_INTERVAL",
        _positive_int,
        signal="metrics",
        doc="Milliseconds between metric exports.",
    ),
    _opt(
        "metric_export_timeout_ms",
        "OTEL_METRIC_EXPORT_TIMEOUT",
        _positive_int,
        signal="metrics",
        doc="Milliseconds one metric export may take.",
    ),
    _opt(
        "prometheus_host",
        "OTEL_EXPORTER_PROMETHEUS_HOST",
        _text,
        signal="metrics",
        doc="Address the Prometheus scrape endpoint binds.",
    ),
    _opt(
        "prometheus_port",
        "OTEL_EXPORTER_PROMETHEUS_PORT",
        _port,
        signal="metrics",
        doc="First port tried for the scrape endpoint; each further worker takes the next "
        "free one.",
    ),
    _opt(
        "excluded_urls",
        ("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS"),
        _regex_list,
        doc="Comma-separated regexes searched in the request path; no span, "
        "no metric. Default: health and metrics routes.",
    ),
    _opt(
        "disabled_instrumentations",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
        _name_list,
        doc="Comma-separated instrumentations to skip (`*` for all): ours are `fastapi`, "
        "`sqlalchemy`, `httpx`, `system_metrics`, and `logging`/`structlog` (either turns log "
        "correlation and log export off); other names go to the launcher's contrib "
        "instrumentors.",
    ),
    _opt(
        "http_instrumentation",
        "OTEL_DIST_HTTP_INSTRUMENTATION",
        _choice(HTTP_INSTRUMENTATIONS),
        doc="`auto` uses FastAPI's native telemetry when the installed FastAPI has it, "
        "else the contrib middleware; `native` or `contrib` force one.",
    ),
    _opt(
        "error_format",
        "OTEL_DIST_ERROR_FORMAT",
        _choice(ERROR_FORMATS),
        doc='`detail` keeps FastAPI\'s `{"detail": ...}` bodies; `problem` answers '
        "`application/problem+json` (RFC 9457) for every error.",
    ),
    _opt(
        "error_body_ids",
        "OTEL_DIST_ERROR_BODY_IDS",
        _choice(ERROR_BODY_IDS),
        doc="Which error bodies carry `trace_id` and `request_id`: `unhandled` (only the 500 "
        "of an exception the app did not handle: the bodies the app wrote stay as FastAPI sends "
        "them), `all` (also the app's `HTTPException` and validation bodies) or `none`. The ids "
        "are in the response headers either way.",
    ),
    _opt(
        "debug_errors",
        "OTEL_DIST_DEBUG_ERRORS",
        _bool,
        doc="Show the exception and stack trace in 500 bodies. Never in production.",
    ),
    _opt(
        "response_trace_headers",
        "OTEL_DIST_RESPONSE_TRACE_HEADERS",
        _bool,
        doc="Add `traceresponse` and `Server-Timing: traceparent` to every response.",
    ),
    _opt(
        "request_id_header",
        "OTEL_DIST_REQUEST_ID_HEADER",
        _header_name,
        doc="Header read, generated when missing or unsafe, and echoed.",
    ),
    _opt(
        "sqlcommenter",
        "OTEL_DIST_SQLCOMMENTER",
        _bool,
        doc="Append the trace context to SQL statements as a comment. Defeats "
        "prepared-statement caches, hence off.",
    ),
    _opt(
        "scrub",
        "OTEL_DIST_SCRUB",
        _bool,
        doc="Redact secrets from spans, logs and structlog output.",
    ),
    _opt(
        "scrub_patterns",
        "OTEL_DIST_SCRUB_PATTERNS",
        _regex_list,
        doc="Extra comma-separated key regexes to redact, added to the defaults.",
    ),
    _opt(
        "log_correlation",
        "OTEL_DIST_LOG_CORRELATION",
        _bool,
        doc="Add trace ids and request id to structlog and standard-library log records.",
    ),
    _opt(
        "log_format",
        "OTEL_DIST_LOG_FORMAT",
        _choice(LOG_FORMATS),
        doc="Renderer of `otel_dist.logs.configure_structlog()`: `json`, `console`, or "
        "`auto` (console on a TTY, JSON otherwise).",
    ),
    _opt(
        "runtime_metrics",
        "OTEL_DIST_RUNTIME_METRICS",
        _bool,
        doc="Process CPU, memory, threads, GC metrics.",
    ),
    _opt(
        "shutdown_timeout_s",
        "OTEL_DIST_SHUTDOWN_TIMEOUT",
        _positive_float,
        doc="Seconds the flush at stop and exit may take in each process, collector down or not.",
    ),
    _opt(
        "export_report_interval_s",
        "OTEL_DIST_EXPORT_REPORT_INTERVAL",
        _positive_float,
        doc="While exports fail, one `otel-dist: telemetry export failing` line on stderr per "
        "this many seconds, with what was dropped (replaces the SDK's per-batch warnings).",
    ),
    _opt(
        "trust_incoming_context",
        "OTEL_DIST_TRUST_INCOMING_CONTEXT",
        _bool,
        doc="Continue the caller's trace from `traceparent` and keep its `baggage`. `false` "
        "(for a public edge) starts a new trace linked to the caller's and drops its baggage.",
    ),
    _opt(
        "native_export",
        "OTEL_DIST_NATIVE_EXPORT",
        _choice(NATIVE_EXPORTS),
        doc="Span export off the GIL through fastotel (`pip install 'otel-dist[native]'`, "
        "pre-alpha; traces over OTLP/HTTP only): `auto` uses it when installed, `on` also says "
        "once why when it cannot, `off` keeps the SDK's exporter.",
    ),
    _opt(
        "freeze_startup_heap",
        "OTEL_DIST_FREEZE_STARTUP_HEAP",
        _bool,
        doc="`true`: once a server's lifespan startup completes, collect garbage once and "
        "`gc.freeze()` what is left, so full collections skip the startup heap. `false` leaves "
        "the garbage collector as the app set it.",
    ),
)

_OPTION_BY_NAME = {option.name: option for option in OPTIONS}
_BATCH_FIELDS = (
    ("schedule_delay_ms", "SCHEDULE_DELAY"),
    ("max_queue_size", "MAX_QUEUE_SIZE"),
    ("max_export_batch_size", "MAX_EXPORT_BATCH_SIZE"),
    ("export_timeout_ms", "EXPORT_TIMEOUT"),
)
OTLP_FIELDS = ("endpoint", "protocol", "headers", "timeout", "compression")
KWARG_NAMES = frozenset(
    [option.name for option in OPTIONS]
    + [f"otlp_{name}" for name in OTLP_FIELDS]
    + [f"otlp_{signal}_{name}" for signal in SIGNALS for name in OTLP_FIELDS]
    + [f"{prefix}_{attr}" for prefix in ("bsp", "blrp") for attr, _ in _BATCH_FIELDS]
)
