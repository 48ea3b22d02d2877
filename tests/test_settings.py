"""Settings: precedence (kwargs > env > defaults) and the exact message for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_dist.settings import (
    DEFAULT_EXCLUDED_URLS,
    KWARG_NAMES,
    OPTIONS,
    ConfigurationError,
    load_settings,
)


def test_defaults_without_environment():
    s = load_settings({})
    assert (s.traces_exporter, s.metrics_exporter, s.logs_exporter) == ("otlp", "otlp", "otlp")
    assert s.otlp["traces"].endpoint == "http://localhost:4318/v1/traces"
    assert s.otlp["logs"].protocol == "http/protobuf"
    assert s.otlp["metrics"].timeout_s == 10.0
    assert s.sampler == "parentbased_always_on"
    assert s.excluded_urls == DEFAULT_EXCLUDED_URLS
    assert s.error_format == "detail"
    assert s.debug_errors is False
    assert s.sqlcommenter is False
    assert s.shutdown_timeout_s == 5.0
    assert s.problems == ()


def test_environment_overrides_defaults():
    s = load_settings({"OTEL_TRACES_EXPORTER": "console", "OTEL_DIST_ERROR_FORMAT": "problem"})
    assert s.traces_exporter == "console"
    assert s.error_format == "problem"


def test_keyword_overrides_environment():
    s = load_settings({"OTEL_TRACES_EXPORTER": "console"}, {"traces_exporter": "none"})
    assert s.traces_exporter == "none"


def test_keyword_none_falls_back_to_environment():
    s = load_settings({"OTEL_SERVICE_NAME": "from-env"}, {"service_name": None})
    assert s.service_name == "from-env"


def test_empty_environment_value_is_unset():
    assert load_settings({"OTEL_TRACES_EXPORTER": "  "}).traces_exporter == "otlp"


def test_signal_endpoint_beats_base_endpoint_and_is_used_verbatim():
    s = load_settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/custom",
        }
    )
    assert s.otlp["traces"].endpoint == "http://tempo:4318/custom"
    assert s.otlp["metrics"].endpoint == "http://collector:4318/v1/metrics"


def test_grpc_base_endpoint_is_not_suffixed():
    s = load_settings(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert s.otlp["logs"].endpoint == "http://c:4317"


def test_signal_specific_headers_timeout_compression():
    s = load_settings(
        {
            "OTEL_EXPORTER_OTLP_HEADERS": "x-token=a%20b,team=core",
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "x-token=logs",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "3",
            "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "gzip",
        }
    )
    assert s.otlp["traces"].headers == {"x-token": "a b", "team": "core"}
    assert s.otlp["logs"].headers == {"x-token": "logs"}
    assert s.otlp["traces"].timeout_s == 3.0
    assert s.otlp["metrics"].compression == "gzip"
    assert s.otlp["traces"].compression == "none"


def test_keyword_otlp_endpoint():
    s = load_settings({}, {"otlp_endpoint": "http://127.0.0.1:9999"})
    assert s.otlp["traces"].endpoint == "http://127.0.0.1:9999/v1/traces"


def test_excluded_urls_fastapi_specific_wins_over_global():
    s = load_settings(
        {"OTEL_PYTHON_EXCLUDED_URLS": "^/a", "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "^/b,^/c"}
    )
    assert s.excluded_urls == ("^/b", "^/c")


def test_batch_settings_from_environment():
    s = load_settings({"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10"})
    assert s.bsp.max_queue_size == 100
    assert s.bsp.max_export_batch_size == 10


def test_sdk_disabled_turns_every_exporter_off():
    s = load_settings({"OTEL_SDK_DISABLED": "true"})
    assert [s.exporter(sig) for sig in ("traces", "metrics", "logs")] == ["none"] * 3


def test_resource_attributes_as_mapping_keyword():
    s = load_settings({}, {"resource_attributes": {"deployment.environment": "prod"}})
    assert s.resource_attributes == {"deployment.environment": "prod"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "OTEL_TRACES_EXPORTER='zipkin' is not valid: accepted values: otlp, console, none",
        ),
        (
            {"OTEL_METRICS_EXPORTER": "statsd"},
            "OTEL_METRICS_EXPORTER='statsd' is not valid: "
            "accepted values: otlp, prometheus, console, none",
        ),
        (
            {"OTEL_LOGS_EXPORTER": "loki"},
            "OTEL_LOGS_EXPORTER='loki' is not valid: accepted values: otlp, console, none",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "abc"},
            "OTEL_TRACES_SAMPLER_ARG='abc' is not valid: expected a number from 0.0 to 1.0",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
            "OTEL_TRACES_SAMPLER_ARG='1.5' is not valid: expected a number from 0.0 to 1.0",
        ),
        (
            {"OTEL_DIST_ERROR_BODY_IDS": "some"},
            "OTEL_DIST_ERROR_BODY_IDS='some' is not valid: accepted values: unhandled, all, none",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "sometimes"},
            "OTEL_TRACES_SAMPLER='sometimes' is not valid: accepted values: always_on, "
            "always_off, traceidratio, parentbased_always_on, parentbased_always_off, "
            "parentbased_traceidratio",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT='collector:4318' is not valid: "
            "expected an absolute http:// or https:// URL",
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://"},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT='http://' is not valid: "
            "expected an absolute http:// or https:// URL",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://host:99999"},
            "OTEL_EXPORTER_OTLP_ENDPOINT='http://host:99999' is not valid: "
            "expected an absolute http:// or https:// URL",
        ),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not valid: "
            "accepted values: http/protobuf, grpc",
        ),
        (
            {"OTEL_EXPORTER_OTLP_HEADERS": "Bearer s3cr3t"},
            "OTEL_EXPORTER_OTLP_HEADERS='***' is not valid: "
            "expected comma-separated key=value pairs",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://user:s3cr3t@host:99999"},
            "OTEL_EXPORTER_OTLP_ENDPOINT='http://***@host:99999' is not valid: "
            "expected an absolute http:// or https:// URL",
        ),
        (
            {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": " "},
            None,
        ),
        (
            {"OTEL_EXPORTER_OTLP_TIMEOUT": "-1"},
            "OTEL_EXPORTER_OTLP_TIMEOUT='-1' is not valid: "
            "expected a number greater than 0, in seconds",
        ),
        (
            {"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"},
            "OTEL_EXPORTER_OTLP_COMPRESSION='brotli' is not valid: "
            "accepted values: none, gzip, deflate",
        ),
        (
            {"OTEL_SDK_DISABLED": "maybe"},
            "OTEL_SDK_DISABLED='maybe' is not valid: accepted values: true, false",
        ),
        (
            {"OTEL_BSP_SCHEDULE_DELAY": "soon"},
            "OTEL_BSP_SCHEDULE_DELAY='soon' is not valid: expected a whole number greater than 0",
        ),
        (
            {"OTEL_BSP_MAX_QUEUE_SIZE": "10", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "20"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=20 is not valid: "
            "it must not exceed OTEL_BSP_MAX_QUEUE_SIZE=10",
        ),
        (
            {"OTEL_METRIC_EXPORT_INTERVAL": "0"},
            "OTEL_METRIC_EXPORT_INTERVAL='0' is not valid: expected a whole number greater than 0",
        ),
        (
            {"OTEL_EXPORTER_PROMETHEUS_PORT": "70000"},
            "OTEL_EXPORTER_PROMETHEUS_PORT='70000' is not valid: "
            "expected a port number from 1 to 65535",
        ),
        (
            {"OTEL_PYTHON_EXCLUDED_URLS": "/ok,(broken"},
            "OTEL_PYTHON_EXCLUDED_URLS='/ok,(broken' is not valid: '(broken' is not a valid "
            "regular expression (missing ), unterminated subpattern at position 0)",
        ),
        (
            {"OTEL_DIST_ERROR_FORMAT": "xml"},
            "OTEL_DIST_ERROR_FORMAT='xml' is not valid: accepted values: detail, problem",
        ),
        (
            {"OTEL_DIST_HTTP_INSTRUMENTATION": "both"},
            "OTEL_DIST_HTTP_INSTRUMENTATION='both' is not valid: "
            "accepted values: auto, native, contrib",
        ),
        (
            {"OTEL_DIST_REQUEST_ID_HEADER": "X Request"},
            "OTEL_DIST_REQUEST_ID_HEADER='X Request' is not valid: "
            "expected an HTTP header name (letters, digits and -)",
        ),
        (
            {"OTEL_DIST_LOG_FORMAT": "xml"},
            "OTEL_DIST_LOG_FORMAT='xml' is not valid: accepted values: auto, json, console",
        ),
        (
            {"OTEL_DIST_SHUTDOWN_TIMEOUT": "forever"},
            "OTEL_DIST_SHUTDOWN_TIMEOUT='forever' is not valid: "
            "expected a number greater than 0, in seconds",
        ),
        (
            {"OTEL_DIST_SCRUB_PATTERNS": "[unclosed"},
            "OTEL_DIST_SCRUB_PATTERNS='[unclosed' is not valid: '[unclosed' is not a valid "
            "regular expression (unterminated character set at position 0)",
        ),
    ],
)
def test_bad_environment_value_message(env, message):
    if message is None:  # blank means unset, not an error
        assert load_settings(env).problems == ()
        return
    with pytest.raises(ConfigurationError) as info:
        load_settings(env)
    assert str(info.value) == message


def test_bad_keyword_names_keyword_and_variable():
    with pytest.raises(ConfigurationError) as info:
        load_settings({}, {"traces_exporter": "jaeger"})
    assert str(info.value) == (
        "traces_exporter (OTEL_TRACES_EXPORTER)='jaeger' is not valid: "
        "accepted values: otlp, console, none"
    )


def test_unknown_keyword_lists_accepted_options():
    with pytest.raises(ConfigurationError) as info:
        load_settings({}, {"trace_exporter": "otlp"})
    assert str(info.value).startswith("unknown option(s) trace_exporter; accepted: ")
    assert "traces_exporter" in str(info.value)


def test_long_bad_value_is_truncated_in_message():
    with pytest.raises(ConfigurationError) as info:
        load_settings({"OTEL_TRACES_EXPORTER": "x" * 500})
    assert len(str(info.value)) < 200


def test_lenient_mode_turns_only_the_broken_signal_off():
    s = load_settings({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, strict=False)
    assert s.traces_exporter == "none"
    assert s.metrics_exporter == "otlp"
    assert s.logs_exporter == "otlp"
    assert s.problems == (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/json' is not valid: "
        "accepted values: http/protobuf, grpc",
    )


@pytest.mark.parametrize("sampler", ["parentbased_always_on", "always_on", "always_off"])
def test_sampler_argument_is_ignored_by_samplers_that_take_none(sampler):
    for strict in (True, False):
        s = load_settings(
            {"OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": "abc"}, strict=strict
        )
        assert (s.sampler, s.sampler_arg, s.problems) == (sampler, 1.0, ())
    assert load_settings({}, {"sampler_arg": "abc"}).problems == ()


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"OTEL_TRACES_SAMPLER": "bogus"},
            "OTEL_TRACES_SAMPLER='bogus' is not valid: accepted values: always_on, always_off, "
            "traceidratio, parentbased_always_on, parentbased_always_off, "
            "parentbased_traceidratio; using the default sampler parentbased_always_on",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "abc"},
            "OTEL_TRACES_SAMPLER_ARG='abc' is not valid: expected a number from 0.0 to 1.0; "
            "using the default sampler parentbased_always_on",
        ),
    ],
)
def test_lenient_bad_sampler_falls_back_to_the_default_sampler_and_keeps_traces(env, problem):
    s = load_settings(env, strict=False)
    assert (s.sampler, s.sampler_arg) == ("parentbased_always_on", 1.0)
    assert s.traces_exporter == "otlp"
    assert s.problems == (problem,)


def test_error_body_ids_keyword_beats_environment():
    env = {"OTEL_DIST_ERROR_BODY_IDS": "none"}
    assert load_settings({}).error_body_ids == "unhandled"
    assert load_settings(env).error_body_ids == "none"
    assert load_settings(env, {"error_body_ids": "all"}).error_body_ids == "all"
    with pytest.raises(ConfigurationError) as info:
        load_settings({}, {"error_body_ids": "some"})
    assert str(info.value) == (
        "error_body_ids (OTEL_DIST_ERROR_BODY_IDS)='some' is not valid: "
        "accepted values: unhandled, all, none"
    )


def test_lenient_mode_shared_endpoint_breaks_every_signal():
    s = load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "nope"}, strict=False)
    assert [s.exporter(sig) for sig in ("traces", "metrics", "logs")] == ["none"] * 3
    assert len(s.problems) == 3


def test_lenient_mode_signal_less_option_falls_back_to_default():
    s = load_settings({"OTEL_DIST_ERROR_FORMAT": "xml"}, strict=False)
    assert s.error_format == "detail"
    assert s.traces_exporter == "otlp"
    assert len(s.problems) == 1


def test_batch_settings_as_keywords():
    s = load_settings(
        {"OTEL_BSP_MAX_QUEUE_SIZE": "100"},
        {"bsp_max_queue_size": 50, "blrp_schedule_delay_ms": 250},
    )
    assert s.bsp.max_queue_size == 50
    assert s.bsp.max_export_batch_size == 50  # the default (128) follows a smaller queue
    assert s.blrp.schedule_delay_ms == 250


def test_every_option_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [env for o in OPTIONS for env in o.env if f"`{env}`" not in readme]
    missing += [o.name for o in OPTIONS if f"`{o.name}`" not in readme]
    assert missing == []
    assert {n for n in KWARG_NAMES if n.startswith(("bsp_", "blrp_"))}


def test_disabled_instrumentations_list():
    s = load_settings({"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "FastAPI, httpx"})
    assert s.disabled_instrumentations == ("fastapi", "httpx")
    assert not s.instrumentation_enabled("fastapi")
    assert s.instrumentation_enabled("sqlalchemy")
    assert not load_settings(
        {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "*"}
    ).instrumentation_enabled("sqlalchemy")
