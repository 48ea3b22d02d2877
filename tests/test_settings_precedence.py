"""Every keyword of ``configure()`` beats its environment variable, one case per option."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from otel_dist.settings import KWARG_NAMES, Settings, load_settings


def _attr(name: str) -> Callable[[Settings], Any]:
    return lambda s: getattr(s, name)


def _otlp(signal: str, field: str) -> Callable[[Settings], Any]:
    return lambda s: getattr(s.otlp[signal], field)


def _batch(prefix: str, field: str) -> Callable[[Settings], Any]:
    return lambda s: getattr(getattr(s, prefix), field)


# keyword: (keyword value, variable, variable value, what the settings hold, expected value)
CASES: dict[str, tuple[Any, str, str, Callable[[Settings], Any], Any]] = {
    "sdk_disabled": (False, "OTEL_SDK_DISABLED", "true", _attr("sdk_disabled"), False),
    "service_name": ("kw", "OTEL_SERVICE_NAME", "env", _attr("service_name"), "kw"),
    "resource_attributes": (
        "team=kw",
        "OTEL_RESOURCE_ATTRIBUTES",
        "team=env",
        _attr("resource_attributes"),
        {"team": "kw"},
    ),
    "traces_exporter": (
        "console",
        "OTEL_TRACES_EXPORTER",
        "none",
        _attr("traces_exporter"),
        "console",
    ),
    "metrics_exporter": (
        "console",
        "OTEL_METRICS_EXPORTER",
        "none",
        _attr("metrics_exporter"),
        "console",
    ),
    "logs_exporter": ("console", "OTEL_LOGS_EXPORTER", "none", _attr("logs_exporter"), "console"),
    "sampler": ("always_off", "OTEL_TRACES_SAMPLER", "always_on", _attr("sampler"), "always_off"),
    "sampler_arg": (
        0.25,
        "OTEL_TRACES_SAMPLER_ARG",
        "0.5",
        lambda s: (s.sampler, s.sampler_arg),
        ("traceidratio", 0.25),
    ),
    "metric_export_interval_ms": (
        1000,
        "OTEL_METRIC_EXPORT_INTERVAL",
        "2000",
        _attr("metric_export_interval_ms"),
        1000,
    ),
    "metric_export_timeout_ms": (
        1000,
        "OTEL_METRIC_EXPORT_TIMEOUT",
        "2000",
        _attr("metric_export_timeout_ms"),
        1000,
    ),
    "prometheus_host": (
        "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_HOST",
        "0.0.0.0",
        _attr("prometheus_host"),
        "127.0.0.1",
    ),
    "prometheus_port": (
        9500,
        "OTEL_EXPORTER_PROMETHEUS_PORT",
        "9600",
        _attr("prometheus_port"),
        9500,
    ),
    "excluded_urls": (
        "^/kw$",
        "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS",
        "^/env$",
        _attr("excluded_urls"),
        ("^/kw$",),
    ),
    "disabled_instrumentations": (
        "httpx",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
        "sqlalchemy",
        _attr("disabled_instrumentations"),
        ("httpx",),
    ),
    "http_instrumentation": (
        "contrib",
        "OTEL_DIST_HTTP_INSTRUMENTATION",
        "native",
        _attr("http_instrumentation"),
        "contrib",
    ),
    "error_format": (
        "problem",
        "OTEL_DIST_ERROR_FORMAT",
        "detail",
        _attr("error_format"),
        "problem",
    ),
    "error_body_ids": ("all", "OTEL_DIST_ERROR_BODY_IDS", "none", _attr("error_body_ids"), "all"),
    "debug_errors": (True, "OTEL_DIST_DEBUG_ERRORS", "false", _attr("debug_errors"), True),
    "response_trace_headers": (
        False,
        "OTEL_DIST_RESPONSE_TRACE_HEADERS",
        "true",
        _attr("response_trace_headers"),
        False,
    ),
    "request_id_header": (
        "X-Kw-Id",
        "OTEL_DIST_REQUEST_ID_HEADER",
        "X-Env-Id",
        _attr("request_id_header"),
        "X-Kw-Id",
    ),
    "sqlcommenter": (True, "OTEL_DIST_SQLCOMMENTER", "false", _attr("sqlcommenter"), True),
    "scrub": (False, "OTEL_DIST_SCRUB", "true", _attr("scrub"), False),
    "scrub_patterns": ("kw", "OTEL_DIST_SCRUB_PATTERNS", "env", _attr("scrub_patterns"), ("kw",)),
    "log_correlation": (
        False,
        "OTEL_DIST_LOG_CORRELATION",
        "true",
        _attr("log_correlation"),
        False,
    ),
    "log_format": ("json", "OTEL_DIST_LOG_FORMAT", "console", _attr("log_format"), "json"),
    "runtime_metrics": (
        False,
        "OTEL_DIST_RUNTIME_METRICS",
        "true",
        _attr("runtime_metrics"),
        False,
    ),
    "shutdown_timeout_s": (
        1.5,
        "OTEL_DIST_SHUTDOWN_TIMEOUT",
        "3",
        _attr("shutdown_timeout_s"),
        1.5,
    ),
    "export_report_interval_s": (
        7.0,
        "OTEL_DIST_EXPORT_REPORT_INTERVAL",
        "9",
        _attr("export_report_interval_s"),
        7.0,
    ),
    "trust_incoming_context": (
        False,
        "OTEL_DIST_TRUST_INCOMING_CONTEXT",
        "true",
        _attr("trust_incoming_context"),
        False,
    ),
    "native_export": ("off", "OTEL_DIST_NATIVE_EXPORT", "on", _attr("native_export"), "off"),
    "freeze_startup_heap": (
        False,
        "OTEL_DIST_FREEZE_STARTUP_HEAP",
        "true",
        _attr("freeze_startup_heap"),
        False,
    ),
}
OTLP_VALUES = {
    "endpoint": ("http://kw:4318", "http://env:4318"),
    "protocol": ("grpc", "http/protobuf"),
    "headers": ("k=kw", "k=env"),
    "timeout": (3.0, "4"),
    "compression": ("gzip", "deflate"),
}
for _field, (_kw, _env) in OTLP_VALUES.items():
    _expected: Any = {"k": "kw"} if _field == "headers" else _kw
    _name = "timeout_s" if _field == "timeout" else _field
    # The shared keyword, read by every signal (the endpoint gets the signal's path).
    CASES[f"otlp_{_field}"] = (
        _kw,
        f"OTEL_EXPORTER_OTLP_{_field.upper()}",
        _env,
        _otlp("logs", _name),
        "http://kw:4318/v1/logs" if _field == "endpoint" else _expected,
    )
    for _signal in ("traces", "metrics", "logs"):
        CASES[f"otlp_{_signal}_{_field}"] = (
            _kw,
            f"OTEL_EXPORTER_OTLP_{_signal.upper()}_{_field.upper()}",
            _env,
            _otlp(_signal, _name),
            _expected,
        )
BATCH_VARIABLES = {
    "schedule_delay_ms": "SCHEDULE_DELAY",
    "max_queue_size": "MAX_QUEUE_SIZE",
    "max_export_batch_size": "MAX_EXPORT_BATCH_SIZE",
    "export_timeout_ms": "EXPORT_TIMEOUT",
}
for _prefix in ("bsp", "blrp"):
    for _field, _suffix in BATCH_VARIABLES.items():
        CASES[f"{_prefix}_{_field}"] = (
            64,
            f"OTEL_{_prefix.upper()}_{_suffix}",
            "32",
            _batch(_prefix, _field),
            64,
        )


def test_every_keyword_has_a_precedence_case() -> None:
    assert set(CASES) == set(KWARG_NAMES)


@pytest.mark.parametrize("keyword", sorted(CASES))
def test_the_keyword_beats_the_environment(keyword: str) -> None:
    kw_value, variable, env_value, read, expected = CASES[keyword]
    env = {variable: env_value}
    if keyword == "sampler_arg":
        env["OTEL_TRACES_SAMPLER"] = "traceidratio"

    from_env = load_settings(env)
    from_keyword = load_settings(env, {keyword: kw_value})

    assert read(from_keyword) == expected
    assert read(from_env) != expected  # the environment alone gives something else


LOG_FORMAT_SCRIPT = """
import json, structlog
from otel_dist import configure
from otel_dist.logs import configure_structlog
{first}
{second}
structlog.get_logger().info("hello")
"""


@pytest.mark.parametrize(
    "order",
    [
        ("configure(log_format='console')", "configure_structlog()"),
        ("configure_structlog()", "configure(log_format='console')"),
    ],
    ids=["configure first", "configure_structlog first"],
)
def test_log_format_keyword_reaches_structlog_and_beats_the_environment(
    order: tuple[str, str],
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_DIST_LOG_FORMAT="json",
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    done = subprocess.run(
        [sys.executable, "-c", LOG_FORMAT_SCRIPT.format(first=order[0], second=order[1])],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    # The console renderer: "<time> [info     ] hello ...", not a JSON object.
    assert "[info" in line
    assert "hello" in line
    assert not line.startswith("{")
