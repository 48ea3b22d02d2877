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
from typing import Any

from otel_dist.options import (
    _BATCH_FIELDS,
    _OPTION_BY_NAME,
    COMPRESSIONS,
    DEFAULT_EXCLUDED_URLS,
    DEFAULT_OTLP_ENDPOINT,
    DEFAULT_SAMPLER,
    KWARG_NAMES,
    OPTIONS,
    OTLP_FIELDS,
    PROTOCOLS,
    RATIO_SAMPLERS,
    SAMPLER_FALLBACK,
    SIGNALS,
    Compression,
    ErrorBodyIds,
    ErrorFormat,
    HttpInstrumentation,
    LogExporterName,
    LogFormat,
    MetricExporterName,
    NativeExport,
    Option,
    OtlpProtocol,
    SamplerName,
    Signal,
    SpanExporterName,
    _choice,
    _endpoint,
    _key_value_list,
    _positive_float,
    _positive_int,
)


class ConfigurationError(ValueError):
    """A setting has a value otel-dist cannot use; the message names the variable and the fix."""


@dataclass(frozen=True)
class OtlpSettings:
    """Where and how one signal is sent over OTLP."""

    endpoint: str
    protocol: OtlpProtocol
    headers: Mapping[str, str]
    timeout_s: float
    compression: Compression


@dataclass(frozen=True)
class BatchSettings:
    """Batch processor tuning (milliseconds and counts, as the OTEL_BSP_/OTEL_BLRP_ variables)."""

    schedule_delay_ms: int
    max_queue_size: int
    max_export_batch_size: int
    export_timeout_ms: int

    def processor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the SDK's batch processors (fastotel's mirror them)."""
        return {
            "max_queue_size": self.max_queue_size,
            "schedule_delay_millis": self.schedule_delay_ms,
            "max_export_batch_size": self.max_export_batch_size,
            "export_timeout_millis": self.export_timeout_ms,
        }


@dataclass(frozen=True)
class Settings:
    """The effective configuration. Deep code trusts it: every field is already validated."""

    sdk_disabled: bool = False
    service_name: str | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    traces_exporter: SpanExporterName = "otlp"
    metrics_exporter: MetricExporterName = "otlp"
    logs_exporter: LogExporterName = "otlp"
    otlp: Mapping[Signal, OtlpSettings] = field(default_factory=dict)
    sampler: SamplerName = DEFAULT_SAMPLER
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
    http_instrumentation: HttpInstrumentation = "auto"
    error_format: ErrorFormat = "detail"
    error_body_ids: ErrorBodyIds = "unhandled"
    debug_errors: bool = False
    response_trace_headers: bool = True
    request_id_header: str = "X-Request-ID"
    sqlcommenter: bool = False
    scrub: bool = True
    scrub_patterns: tuple[str, ...] = ()
    log_correlation: bool = True
    log_format: LogFormat = "auto"
    runtime_metrics: bool = True
    shutdown_timeout_s: float = 5.0
    export_report_interval_s: float = 60.0
    trust_incoming_context: bool = True
    native_export: NativeExport = "auto"
    freeze_startup_heap: bool = True
    problems: tuple[str, ...] = ()
    # The problems that turned each signal's exporter to ``none`` (lenient loading only).
    signal_problems: Mapping[Signal, tuple[str, ...]] = field(default_factory=dict)

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


class _Resolver:
    """Resolves values for one ``load_settings`` call and collects problems when lenient."""

    def __init__(self, env: Mapping[str, str], overrides: Mapping[str, Any], strict: bool) -> None:
        self.env = env
        self.overrides = overrides
        self.strict = strict
        self.problems: list[str] = []
        self.broken_signals: dict[Signal, list[str]] = {}

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
                self.broken_signals.setdefault(signal, []).append(message)
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
        resolver.broken_signals.setdefault(signal, []).append(message)
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
    values["signal_problems"] = {s: tuple(p) for s, p in resolver.broken_signals.items()}
    return Settings(**values)


def option(name: str) -> Option:
    """The declaration of one option (for docs and doctor)."""
    return _OPTION_BY_NAME[name]


def as_dict(settings: Settings) -> dict[str, Any]:
    """A plain dict of the settings, for doctor and debugging (secrets are not masked here)."""
    return dataclasses.asdict(settings)


__all__ = [
    "DEFAULT_EXCLUDED_URLS",
    "KWARG_NAMES",
    "OPTIONS",
    "OTLP_FIELDS",
    "SAMPLER_FALLBACK",
    "SIGNALS",
    "BatchSettings",
    "ConfigurationError",
    "Option",
    "OtlpSettings",
    "Settings",
    "Signal",
    "as_dict",
    "load_settings",
    "option",
]
