"""Trace context never depends on export (real uvicorn, real outgoing httpx call).

Whatever the traces exporter (``none`` included) and whatever a traces export or sampler setting
says, a request continues the caller's trace, forwards ``traceparent``/``tracestate`` on its
outgoing call, and shows the ids in its response headers, in the stdout log lines (structlog
and standard library) and in the body of an unhandled error. Only ``OTEL_SDK_DISABLED=true``
turns the ids off.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from otel_dist.tools.sink import OtlpSink
from support.contract import contract_app, parse_traceparent, stdlib_ids, structlog_events
from support.recorder import HeaderRecorder, header_recorder
from support.servers import ServerProcess

# Real servers in subprocesses.
pytestmark = pytest.mark.integration

ALL_EXPORTERS_NONE = {
    "OTEL_TRACES_EXPORTER": "none",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
}
OFF = " (telemetry for that setting's signal is off)"
SPAN_EXPORT_THREADS = {"OtelBatchSpanRecordProcessor", "otel-dist-native"}


def grpc_missing(signal: str) -> str:
    return (
        f"otel-dist: OTEL_EXPORTER_OTLP_PROTOCOL=grpc (for {signal}) needs the gRPC exporter, "
        "which is not installed: pip install 'otel-dist[grpc]', or use http/protobuf" + OFF
    )


# name: (way in, environment, the otel-dist lines the server prints, spans exported)
CASES: dict[str, tuple[str, dict[str, str], list[str], bool]] = {
    "exporters none, configure": ("configure", ALL_EXPORTERS_NONE, [], False),
    "exporters none, zero-code": ("zero-code", ALL_EXPORTERS_NONE, [], False),
    "grpc without the extra, zero-code": (
        "zero-code",
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        [grpc_missing(signal) for signal in ("metrics", "traces", "logs")],
        False,
    ),
    "bad traces endpoint, zero-code": (
        "zero-code",
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4318"},
        [
            "otel-dist: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT='collector:4318' is not valid: "
            "expected an absolute http:// or https:// URL" + OFF
        ],
        False,
    ),
    "bad traces protocol, zero-code": (
        "zero-code",
        {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
        [
            "otel-dist: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/json' is not valid: accepted "
            "values: http/protobuf, grpc" + OFF
        ],
        False,
    ),
    "sampler argument the default sampler ignores, zero-code": (
        "zero-code",
        {"OTEL_TRACES_SAMPLER_ARG": "abc"},
        [],
        True,
    ),
    "sampler argument the default sampler ignores, configure": (
        "configure",
        {"OTEL_TRACES_SAMPLER_ARG": "abc"},
        [],
        True,
    ),
    "unknown sampler, zero-code": (
        "zero-code",
        {"OTEL_TRACES_SAMPLER": "bogus"},
        [
            "otel-dist: OTEL_TRACES_SAMPLER='bogus' is not valid: accepted values: always_on, "
            "always_off, traceidratio, parentbased_always_on, parentbased_always_off, "
            "parentbased_traceidratio; using the default sampler parentbased_always_on"
        ],
        True,
    ),
    "bad ratio, zero-code": (
        "zero-code",
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "abc"},
        [
            "otel-dist: OTEL_TRACES_SAMPLER_ARG='abc' is not valid: expected a number from 0.0 "
            "to 1.0; using the default sampler parentbased_always_on"
        ],
        True,
    ),
}
_paths = itertools.count()


@pytest.fixture(scope="module")
def recorder() -> Iterator[HeaderRecorder]:
    with header_recorder() as started:
        yield started


def incoming() -> tuple[str, str, str]:
    """A fresh caller context: (trace id, parent id, traceparent)."""
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, f"00-{trace_id}-{parent_id}-01"


def otel_dist_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.output().splitlines() if line.startswith("otel-dist: ")]


def check_ids_everywhere(server: ServerProcess, recorder: HeaderRecorder) -> str:
    """Continued, forwarded, in headers, stdout lines and the 500 body; the trace id."""
    trace_id, parent_id, traceparent = incoming()
    path = f"/ctx-{next(_paths)}"
    response = httpx.get(
        f"{server.base_url}/forward{path}",
        headers={"traceparent": traceparent, "tracestate": "vendor=opaque"},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    # Continued: our span is in the caller's trace, with its own id.
    _, answered_trace, server_span, flags = parse_traceparent(response.headers["traceresponse"])
    assert (answered_trace, flags) == (trace_id, "01")
    assert server_span != parent_id
    assert response.headers["server-timing"] == (
        f'traceparent;desc="{response.headers["traceresponse"]}"'
    )
    # Forwarded on the outgoing call.
    [forwarded] = recorder.values(path, "traceparent")
    version, forwarded_trace, forwarded_parent, forwarded_flags = parse_traceparent(forwarded)
    assert (version, forwarded_trace, forwarded_flags) == ("00", trace_id, "01")
    assert forwarded_parent not in (parent_id, "0" * 16)
    assert recorder.values(path, "tracestate") == ["vendor=opaque"]
    # In the stdout lines of both loggers.
    case = path.lstrip("/")
    events = [e for e in structlog_events(server.output(), "forwarded") if e["case"] == case]
    assert [(e["trace_id"], e["request_id"]) for e in events] == [(trace_id, request_id)]
    assert (trace_id, request_id) in stdlib_ids(server.output(), f"forwarded {case}")
    # In the body of an unhandled error, and in its headers.
    failed = httpx.get(f"{server.base_url}/fail", timeout=20)
    assert failed.status_code == 500
    _, failed_trace, _, _ = parse_traceparent(failed.headers["traceresponse"])
    assert failed.json() == {
        "detail": "Internal Server Error",
        "trace_id": failed_trace,
        "request_id": failed.headers["x-request-id"],
    }
    assert (failed_trace, failed.headers["x-request-id"]) in stdlib_ids(
        server.output(), "about to fail"
    )
    return trace_id


@pytest.mark.parametrize("case", list(CASES))
def test_ids_and_propagation_whatever_the_export_settings(
    case: str, recorder: HeaderRecorder, sink: OtlpSink, tmp_path: Path
) -> None:
    way, env, expected_lines, exported = CASES[case]
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "DOWNSTREAM_URL": recorder.url, **env}
    with contract_app(way, tmp_path, **env) as server:
        trace_id = check_ids_everywhere(server, recorder)
        threads = httpx.get(f"{server.base_url}/threads", timeout=10).json()
        lines = otel_dist_lines(server)
    assert lines == expected_lines
    # Nothing exported, no export work: no span queue and no export thread (the SDK's, or the
    # loss poller beside fastotel's native one, which Python does not list).
    assert bool(SPAN_EXPORT_THREADS & set(threads)) is exported, threads
    if exported:  # the fallback sampler samples what the caller sampled
        assert sink.wait_for(
            lambda s: any(x.trace_id == trace_id and x.kind == "SERVER" for x in s.spans()),
            timeout=20,
        )


def test_sdk_disabled_is_the_only_way_to_turn_ids_off(
    recorder: HeaderRecorder, tmp_path: Path
) -> None:
    env = {"OTEL_SDK_DISABLED": "true", "DOWNSTREAM_URL": recorder.url}
    _, _, traceparent = incoming()
    with contract_app("zero-code", tmp_path, **env) as server:
        response = httpx.get(
            f"{server.base_url}/forward/disabled",
            headers={"traceparent": traceparent},
            timeout=20,
        )
    assert response.status_code == 200
    assert "traceresponse" not in response.headers
    assert "x-request-id" not in response.headers
    assert recorder.values("/disabled", "traceparent") == []
