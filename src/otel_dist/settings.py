"""One typed settings object: keyword arguments > environment > defaults.

Every option is declared once in ``OPTIONS`` with its environment variable(s), its default, its
parser and the signal it belongs to. ``load_settings`` resolves each option, and either raises one
``ConfigurationError`` naming the variable and the accepted values (``configure()``), or, under the
auto-launcher, records the problem and switches the affected signal off (``strict=False``): a bad
variable must never crash the host application.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

Signal = Literal["traces", "metrics", "logs"]
SIGNALS: tuple[Signal, ...] = ("traces", "metrics", "logs")

SPAN_EXPORTERS = ("otlp", "console", "none")
METRIC_EXPORTERS = ("otlp", "prometheus", "console", "none")
LOG_EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("http/protobuf", "grpc")
COMPRESSIONS = ("none", "gzip", "deflate")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_SAMPLER = "parentbased_always_on"
# Only these samplers read OTEL_TRACES_SAMPLER_ARG; with any other its value is not used.
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
# Ends the problem line of a bad sampler setting: tracing goes on, with the default sampler.
SAMPLER_FALLBACK = f"; using the default sampler {DEFAULT_SAMPLER}"
HTTP_INSTRUMENTATIONS = ("auto", "native", "contrib")
ERROR_FORMATS = ("detail", "problem")
ERROR_BODY_IDS = ("unhandled", "all", "none")
LOG_FORMATS = ("auto", "json", "console")
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


class ConfigurationError(ValueError):
    """A setting has a value otel-dist cannot use; the message names the variable and the fix."""


@dataclass(frozen=True)
class OtlpSettings:
    """Where and how one signal is sent over OTLP."""

    endpoint: str
    protocol: str
    headers: Mapping[str, str]
    timeout_s: float
    compression: str


@dataclass(frozen=True)
class BatchSettings:
    """Batch processor tuning (milliseconds and counts, as the OTEL_BSP_/OTEL_BLRP_ variables)."""

    schedule_delay_ms: int
    max_queue_size: int
    max_export_batch_size: int
    export_timeout_ms: int


@dataclass(frozen=True)
class Settings:
    """The effective configuration. Deep code trusts it: every field is already validated."""

    sdk_disabled: bool = False
    service_name: str | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    traces_exporter: str = "otlp"
    metrics_exporter: str = "otlp"
    logs_exporter: str = "otlp"
    otlp: Mapping[Signal, OtlpSettings] = field(default_factory=dict)
    sampler: str = DEFAULT_SAMPLER
    sampler_arg: float = 1.0
    # Batches of 128, not the SDK's 512: the export thread holds the GIL while it encodes a batch
    # (about 45 µs an item), and requests wait for it. 512 items is a 25 ms stall whenever the
    # queue holds that many (a busy app, an outage, the catch-up after one); 128 is about 6 ms.
    # Throughput is the same from 128 to 2048 (docs/performance.md).
    bsp: BatchSettings = BatchSettings(5000, 2048, 128, 30000)
    blrp: BatchSettings = BatchSettings(1000, 2048, 128, 30000)
    metric_export_interval_ms: int = 60000
    metric_export_timeout_ms: int = 30000
    prometheus_host: str = "localhost"
    prometheus_port: int = 9464
    excluded_urls: tuple[str, ...] = DEFAULT_EXCLUDED_URLS
    disabled_instrumentations: tuple[str, ...] = ()
    http_instrumentation: str = "auto"
    error_format: str = "detail"
    error_body_ids: str = "unhandled"
    debug_errors: bool = False
    response_trace_headers: bool = True
    request_id_header: str = "X-Request-ID"
    sqlcommenter: bool = False
    scrub: bool = True
    scrub_patterns: tuple[str, ...] = ()
    log_correlation: bool = True
    log_format: str = "auto"
    runtime_metrics: bool = True
    shutdown_timeout_s: float = 5.0
    export_report_interval_s: float = 60.0
    trust_incoming_context: bool = True
    problems: tuple[str, ...] = ()

    def instrumentation_enabled(self, name: str) -> bool:
        """False when OTEL_PYTHON_DISABLED_INSTRUMENTATIONS names ``name`` (or ``*``)."""
        disabled = self.disabled_instrumentations
        return "*" not in disabled and name not in disabled

    def exporter(self, signal: Signal) -> str:
        """The exporter name chosen for ``signal`` (``none`` when the signal is off)."""
        if self.sdk_disabled:
            return "none"
        value: str = getattr(self, f"{signal}_exporter")
        return value


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


class _Resolver:
    """Resolves values for one ``load_settings`` call and collects problems when lenient."""

    def __init__(self, env: Mapping[str, str], overrides: Mapping[str, Any], strict: bool) -> None:
        self.env = env
        self.overrides = overrides
        self.strict = strict
        self.problems: list[str] = []
        self.broken_signals: set[Signal] = set()

    def value(
        self,
        name: str,
        env_names: Sequence[str],
        parse: Callable[[Any], Any],
        default: Any,
        signal: Signal | None = None,
    ) -> Any:
        source, raw = self._raw(name, env_names)
        if source is None:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            message = f"{source}={_shown(raw, env_names)} is not valid: {exc}"
            if self.strict:
                raise ConfigurationError(message) from None
            self.problems.append(message)
            if signal is not None:
                self.broken_signals.add(signal)
            return default

    def _raw(self, name: str, env_names: Sequence[str]) -> tuple[str | None, Any]:
        if name in self.overrides and self.overrides[name] is not None:
            variable = f" ({env_names[0]})" if env_names else ""
            return f"{name}{variable}", self.overrides[name]
        for env_name in env_names:
            raw = self.env.get(env_name)
            if raw is not None and raw.strip() != "":
                return env_name, raw
        return None, None


def _shown(raw: Any, env_names: Sequence[str]) -> str:
    """The rejected value as the message shows it: secrets masked, long values cut."""
    if any("HEADERS" in name for name in env_names):
        return "'***'"  # OTLP headers carry tokens
    if any("ENDPOINT" in name for name in env_names):
        raw = re.sub(r"//[^/@]*@", "//***@", str(raw))  # user:password@host
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


def _signal_path(signal: Signal) -> str:
    return f"/v1/{signal}"


def _otlp(resolver: _Resolver, signal: Signal) -> OtlpSettings:
    upper = signal.upper()

    def pick(name: str, parse: Callable[[Any], Any], default: Any) -> Any:
        specific = resolver.value(
            f"otlp_{signal}_{name}",
            (f"OTEL_EXPORTER_OTLP_{upper}_{name.upper()}",),
            parse,
            None,
            signal,
        )
        if specific is not None:
            return specific
        return resolver.value(
            f"otlp_{name}", (f"OTEL_EXPORTER_OTLP_{name.upper()}",), parse, default, signal
        )

    specific_endpoint = resolver.value(
        f"otlp_{signal}_endpoint",
        (f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT",),
        _endpoint,
        None,
        signal,
    )
    protocol = pick("protocol", _choice(PROTOCOLS), "http/protobuf")
    if specific_endpoint is not None:
        endpoint = specific_endpoint
    else:
        base = resolver.value(
            "otlp_endpoint",
            ("OTEL_EXPORTER_OTLP_ENDPOINT",),
            _endpoint,
            DEFAULT_OTLP_ENDPOINT,
            signal,
        )
        # The spec: a signal-less endpoint is a base URL for HTTP, the target itself for gRPC.
        endpoint = base.rstrip("/") + _signal_path(signal) if protocol == "http/protobuf" else base
    return OtlpSettings(
        endpoint=endpoint,
        protocol=protocol,
        headers=pick("headers", _key_value_list, {}),
        timeout_s=pick("timeout", _positive_float, 10.0),
        compression=pick("compression", _choice(COMPRESSIONS), "none"),
    )


def _sampler(resolver: _Resolver, defaults: Settings) -> tuple[str, float]:
    """The sampler and its ratio; the ratio is read only for the samplers that take one.

    Lenient: a bad value of either gives the default sampler, and the problem says so.
    """
    fallback = (defaults.sampler, defaults.sampler_arg)
    sampler = _sampler_option(resolver, "sampler", defaults.sampler)
    if sampler is None:
        return fallback
    if sampler not in RATIO_SAMPLERS:
        return sampler, defaults.sampler_arg
    ratio = _sampler_option(resolver, "sampler_arg", defaults.sampler_arg)
    return fallback if ratio is None else (sampler, ratio)


def _sampler_option(resolver: _Resolver, name: str, default: Any) -> Any:
    """One sampler option's value, or None when it is bad (lenient mode only)."""
    declared = _OPTION_BY_NAME[name]
    problems_before = len(resolver.problems)
    value = resolver.value(name, declared.env, declared.parse, default)
    if len(resolver.problems) > problems_before:
        resolver.problems[-1] += SAMPLER_FALLBACK
        return None
    return value


def _batch(
    resolver: _Resolver, prefix: str, signal: Signal, default: BatchSettings
) -> BatchSettings:
    values = {
        attr: resolver.value(
            f"{prefix.lower()}_{attr}",
            (f"OTEL_{prefix}_{suffix}",),
            _positive_int,
            getattr(default, attr),
            signal,
        )
        for attr, suffix in _BATCH_FIELDS
    }
    batch = BatchSettings(**values)
    batch_size_set, _ = resolver._raw(
        f"{prefix.lower()}_max_export_batch_size", (f"OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE",)
    )
    if batch_size_set is None and batch.max_export_batch_size > batch.max_queue_size:
        # Only the queue was made smaller: the default batch size follows it down.
        return dataclasses.replace(batch, max_export_batch_size=batch.max_queue_size)
    if batch.max_export_batch_size > batch.max_queue_size:
        message = (
            f"OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE={batch.max_export_batch_size} is not valid: "
            f"it must not exceed OTEL_{prefix}_MAX_QUEUE_SIZE={batch.max_queue_size}"
        )
        if resolver.strict:
            raise ConfigurationError(message)
        resolver.problems.append(message)
        resolver.broken_signals.add(signal)
        return default
    return batch


def load_settings(
    env: Mapping[str, str], overrides: Mapping[str, Any] | None = None, *, strict: bool = True
) -> Settings:
    """Resolve every option: ``overrides`` (keyword arguments) > ``env`` > defaults.

    ``strict=True`` raises ``ConfigurationError`` on the first bad value. ``strict=False`` (the
    auto-launcher) records each problem in ``Settings.problems`` and turns the affected signal's
    exporter to ``none``; a bad value of a signal-less option falls back to its default.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - KWARG_NAMES)
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(KWARG_NAMES))}"
        )
    resolver = _Resolver(env, overrides, strict)
    defaults = Settings()
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.name == "sampler":
            values["sampler"], values["sampler_arg"] = _sampler(resolver, defaults)
        elif option.name != "sampler_arg":
            values[option.name] = resolver.value(
                option.name, option.env, option.parse, getattr(defaults, option.name), option.signal
            )
    values["otlp"] = {signal: _otlp(resolver, signal) for signal in SIGNALS}
    values["bsp"] = _batch(resolver, "BSP", "traces", defaults.bsp)
    values["blrp"] = _batch(resolver, "BLRP", "logs", defaults.blrp)
    for signal in resolver.broken_signals:
        values[f"{signal}_exporter"] = "none"
    values["problems"] = tuple(resolver.problems)
    return Settings(**values)


def option(name: str) -> Option:
    """The declaration of one option (for docs and doctor)."""
    return _OPTION_BY_NAME[name]


def as_dict(settings: Settings) -> dict[str, Any]:
    """A plain dict of the settings, for doctor and debugging (secrets are not masked here)."""
    return dataclasses.asdict(settings)
