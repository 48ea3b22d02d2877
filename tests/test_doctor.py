"""``otel-dist doctor``: the report a user reads, its exit status, and the console script."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version

import pytest

from otel_dist import __version__
from otel_dist.plan import make_plan
from otel_dist.settings import load_settings
from otel_dist.tools import doctor
from otel_dist.tools.cli import USAGE
from otel_dist.tools.doctor import Report, diagnose
from otel_dist.tools.sink import OtlpSink
from support.servers import clean_env, free_port, venv_bin

CANARY = "CANARY-7f3a9c"
PASSWORD = "hunter2-secret"


def section(report: Report, title: str) -> list[str]:
    """The lines of one report section, as rendered (without the indent)."""
    matches = [lines for name, lines in report.sections if name == title]
    assert len(matches) == 1, f"no single section {title!r} in {report.sections}"
    return matches[0]


def line_of(report: Report, title: str, name: str) -> str:
    """The one line of ``title`` about ``name`` (``"fastapi"`` finds ``"fastapi: ..."``)."""
    found = [line for line in section(report, title) if line.startswith(f"{name}: ")]
    assert len(found) == 1, f"no single {name!r} line in {section(report, title)}"
    return found[0]


GRPC_MISSING = (
    "OTEL_EXPORTER_OTLP_PROTOCOL=grpc (for {signal}) needs the gRPC exporter, which is not "
    "installed: pip install 'otel-dist[grpc]', or use http/protobuf"
)
RUNS = "instrumentations that will run"
SKIPPED = "instrumentations that will not run"


# --- secrets --------------------------------------------------------------------------------


def test_otlp_header_values_are_masked_and_names_kept() -> None:
    report = diagnose(
        env={"OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {CANARY},x-tenant=acme"},
        network=False,
    )

    text = report.render()
    assert CANARY not in text
    assert "acme" not in text
    assert (
        "otlp traces: http://localhost:4318/v1/traces (http/protobuf, timeout 10.0s, "
        "compression none, headers: authorization=***, x-tenant=***)"
    ) in section(report, "settings (secrets masked)")
    assert report.problems == []


def test_endpoint_password_is_masked_in_settings() -> None:
    report = diagnose(
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"https://alice:{PASSWORD}@otlp.example.com:4318"},
        network=False,
    )

    text = report.render()
    assert PASSWORD not in text
    assert "alice" not in text
    assert (
        "otlp logs: https://***@otlp.example.com:4318/v1/logs (http/protobuf, timeout 10.0s, "
        "compression none, headers: none)"
    ) in section(report, "settings (secrets masked)")


def test_ipv6_endpoint_with_password_keeps_its_brackets() -> None:
    report = diagnose(
        env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://bob:{PASSWORD}@[::1]:4318/v1/traces"},
        network=False,
    )

    assert PASSWORD not in report.render()
    assert line_of(report, "settings (secrets masked)", "otlp traces").startswith(
        "otlp traces: http://***@[::1]:4318/v1/traces ("
    )


def test_invalid_header_value_is_reported_without_the_secret() -> None:
    # No "key=" part: settings rejects it and quotes the raw value, which is the token itself.
    report = diagnose(env={"OTEL_EXPORTER_OTLP_HEADERS": f"Bearer {CANARY}"}, network=False)

    assert CANARY not in report.render()
    # Shared by all three signals, listed once.
    assert report.problems == [
        "OTEL_EXPORTER_OTLP_HEADERS=*** is not valid: expected comma-separated key=value pairs"
    ]


def test_invalid_endpoint_is_reported_without_the_password() -> None:
    report = diagnose(
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://alice:{PASSWORD}@collector:99999"},
        network=False,
    )

    assert PASSWORD not in report.render()
    assert report.problems == [
        "OTEL_EXPORTER_OTLP_ENDPOINT='http://***@collector:99999' is not valid: "
        "expected an absolute http:// or https:// URL"
    ]


def test_endpoint_password_is_masked_in_probe_results() -> None:
    port = free_port()
    report = diagnose(
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://alice:{PASSWORD}@127.0.0.1:{port}"}
    )

    assert PASSWORD not in report.render()
    assert line_of(report, "endpoints", "traces").startswith(
        f"traces: http://***@127.0.0.1:{port}/v1/traces does not answer: "
    )


# --- bad values -----------------------------------------------------------------------------


def test_unknown_traces_exporter_is_a_problem_and_traces_are_off() -> None:
    report = diagnose(env={"OTEL_TRACES_EXPORTER": "zipkin"}, network=False)

    assert report.problems == [
        "OTEL_TRACES_EXPORTER='zipkin' is not valid: accepted values: otlp, console, none"
    ]
    assert "exporters: traces=none metrics=otlp logs=otlp" in section(
        report, "settings (secrets masked)"
    )
    text = report.render()
    assert text.endswith(
        "1 problem(s):\n"
        "  - OTEL_TRACES_EXPORTER='zipkin' is not valid: accepted values: otlp, console, none"
    )


def test_every_bad_value_is_listed() -> None:
    report = diagnose(
        env={
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "2",
            "OTEL_DIST_ERROR_FORMAT": "xml",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc-web",
        },
        network=False,
    )

    assert report.problems == [
        "OTEL_TRACES_SAMPLER_ARG='2' is not valid: expected a number from 0.0 to 1.0; "
        "using the default sampler parentbased_always_on",
        "OTEL_DIST_ERROR_FORMAT='xml' is not valid: accepted values: detail, problem",
        "OTEL_EXPORTER_OTLP_PROTOCOL='grpc-web' is not valid: accepted values: http/protobuf, grpc",
    ]


def test_clean_environment_has_no_problems() -> None:
    report = diagnose(env={}, network=False)

    assert report.problems == []
    assert report.render().endswith("\n\nno problems found")
    assert section(report, "distros and configurators") == ["otel_dist only: no conflict"]
    assert "service.name = (OTEL_SERVICE_NAME unset: unknown_service:python)" in section(
        report, "settings (secrets masked)"
    )


# --- instrumentations -----------------------------------------------------------------------


def test_fastapi_uses_native_telemetry_by_default() -> None:
    report = diagnose(env={}, network=False)

    assert (
        line_of(report, RUNS, "fastapi")
        == f"fastapi: FastAPI {version('fastapi')}, native telemetry"
    )


def test_fastapi_contrib_middleware_when_asked() -> None:
    report = diagnose(env={"OTEL_DIST_HTTP_INSTRUMENTATION": "contrib"}, network=False)

    assert (
        line_of(report, RUNS, "fastapi")
        == f"fastapi: FastAPI {version('fastapi')}, contrib telemetry"
    )


def test_default_instrumentations_all_run() -> None:
    report = diagnose(env={}, network=False)

    assert section(report, RUNS)[:6] == [
        f"fastapi: FastAPI {version('fastapi')}, native telemetry",
        f"sqlalchemy: SQLAlchemy {version('sqlalchemy')} (otel-dist events; AsyncEngine supported)",
        f"structlog: structlog {version('structlog')}: trace ids injected before the renderer",
        "logging: stdlib records get trace_id/span_id/request_id; exported over OTLP",
        "httpx: outgoing calls carry traceparent",
        "runtime metrics: process CPU/memory/threads/GC",
    ]


def test_log_correlation_off_moves_structlog_to_will_not_run() -> None:
    report = diagnose(env={"OTEL_DIST_LOG_CORRELATION": "false"}, network=False)

    assert line_of(report, SKIPPED, "structlog") == "structlog: OTEL_DIST_LOG_CORRELATION=false"
    assert not [line for line in section(report, RUNS) if line.startswith("structlog")]
    # Logs are still exported, without ids.
    assert line_of(report, RUNS, "logging") == (
        "logging: records; exported over OTLP, no ids added (OTEL_DIST_LOG_CORRELATION=false)"
    )


def test_log_correlation_off_and_no_logs_exporter_skips_logging() -> None:
    report = diagnose(
        env={"OTEL_DIST_LOG_CORRELATION": "false", "OTEL_LOGS_EXPORTER": "none"}, network=False
    )

    assert line_of(report, SKIPPED, "logging") == (
        "logging: OTEL_DIST_LOG_CORRELATION=false and logs exporter none"
    )


def test_metrics_none_skips_runtime_metrics_with_the_reason() -> None:
    report = diagnose(env={"OTEL_METRICS_EXPORTER": "none"}, network=False)

    assert line_of(report, SKIPPED, "runtime metrics") == (
        "runtime metrics: metrics exporter is none"
    )
    # Traces still on: the rest runs.
    assert line_of(report, RUNS, "httpx") == "httpx: outgoing calls carry traceparent"
    assert line_of(report, RUNS, "sqlalchemy").startswith("sqlalchemy: SQLAlchemy ")


def test_runtime_metrics_switched_off_says_which_variable() -> None:
    report = diagnose(env={"OTEL_DIST_RUNTIME_METRICS": "false"}, network=False)

    assert line_of(report, SKIPPED, "runtime metrics") == (
        "runtime metrics: OTEL_DIST_RUNTIME_METRICS=false"
    )


def test_traces_none_keeps_httpx_propagating() -> None:
    report = diagnose(env={"OTEL_TRACES_EXPORTER": "none"}, network=False)

    assert line_of(report, RUNS, "httpx") == (
        "httpx: outgoing calls carry traceparent; their spans are not exported (traces none)"
    )


def test_traces_and_metrics_none() -> None:
    report = diagnose(
        env={"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}, network=False
    )

    assert line_of(report, SKIPPED, "sqlalchemy") == (
        "sqlalchemy: traces and metrics exporters are none"
    )
    assert line_of(report, RUNS, "httpx") == (
        "httpx: outgoing calls carry traceparent; their spans are not exported (traces none)"
    )
    assert line_of(report, SKIPPED, "runtime metrics") == (
        "runtime metrics: metrics exporter is none"
    )
    # The request-id middleware and error handlers are still installed.
    assert line_of(report, RUNS, "fastapi") == (
        f"fastapi: FastAPI {version('fastapi')}, native telemetry; request ids, trace context "
        "and error bodies only: traces and metrics exporters are none"
    )


def test_sdk_disabled_runs_nothing_of_ours() -> None:
    report = diagnose(env={"OTEL_SDK_DISABLED": "true"}, network=False)

    assert "exporters: traces=none metrics=none logs=none" in section(
        report, "settings (secrets masked)"
    )
    for name in ("fastapi", "sqlalchemy", "structlog", "logging", "httpx", "runtime metrics"):
        assert line_of(report, SKIPPED, name) == f"{name}: OTEL_SDK_DISABLED=true"


def test_disabled_contrib_instrumentor_will_not_run() -> None:
    report = diagnose(
        env={"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "requests, httpx2"}, network=False
    )

    assert line_of(report, SKIPPED, "httpx2") == (
        "httpx2: listed in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
    )


# --- endpoint probes ------------------------------------------------------------------------


def test_endpoints_answer_when_a_real_otlp_sink_listens() -> None:
    with OtlpSink() as sink:
        endpoint = sink.endpoint
        report = diagnose(env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
        received = dict(sink.requests_received)

    assert section(report, "endpoints") == [
        f"traces: {endpoint}/v1/traces answers",
        f"metrics: {endpoint}/v1/metrics answers",
        f"logs: {endpoint}/v1/logs answers",
    ]
    assert report.problems == []
    assert received == {"traces": 1, "metrics": 1, "logs": 1}
    assert sink.bad_requests == 0


def test_endpoint_with_credentials_is_probed_with_them() -> None:
    with OtlpSink() as sink:
        endpoint = f"http://alice:{PASSWORD}@127.0.0.1:{sink.port}"
        report = diagnose(env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
        received = dict(sink.requests_received)

    assert report.problems == []
    assert line_of(report, "endpoints", "traces") == (
        f"traces: http://***@127.0.0.1:{sink.port}/v1/traces answers"
    )
    assert received == {"traces": 1, "metrics": 1, "logs": 1}


def test_closed_port_does_not_answer() -> None:
    port = free_port()
    report = diagnose(
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_LOGS_EXPORTER": "none",
        }
    )

    assert section(report, "endpoints")[1:] == [
        "metrics: exporter prometheus, nothing to probe",
        "logs: exporter none, nothing to probe",
    ]
    assert len(report.problems) == 1
    assert report.problems[0].startswith(
        f"OTLP traces endpoint http://127.0.0.1:{port}/v1/traces does not answer: "
    )
    assert "Connection refused" in report.problems[0]


def test_grpc_endpoint_is_probed_over_tcp() -> None:
    # Only probed when the [grpc] extra is installed (without it the signal is off, see below).
    port = free_port()
    with OtlpSink() as sink:
        endpoint = sink.endpoint
        up = doctor.probe_grpc(endpoint, 3.0)
    down = doctor.probe_grpc(f"http://127.0.0.1:{port}", 3.0)

    assert up is None
    assert down == "does not accept TCP connections"


class _NotFound(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"404 page not found"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server with ``handler`` on a free loopback port; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def not_found_server() -> Iterator[str]:
    """An HTTP server answering 404 to every POST; yields its base URL."""
    with _serving(_NotFound) as url:
        yield url


def test_http_404_is_a_problem_naming_a_wrong_path(not_found_server: str) -> None:
    report = diagnose(
        env={
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{not_found_server}/otlp/v1/traces",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        }
    )

    assert report.problems == [
        f"OTLP traces endpoint {not_found_server}/otlp/v1/traces answers HTTP 404 (wrong path?)"
    ]
    assert line_of(report, "endpoints", "traces") == (
        f"traces: {not_found_server}/otlp/v1/traces answers HTTP 404 (wrong path?)"
    )


def test_no_network_means_no_endpoint_section() -> None:
    report = diagnose(env={}, network=False)

    assert [title for title, _ in report.sections] == [
        "settings (secrets masked)",
        "versions",
        RUNS,
        SKIPPED,
        "distros and configurators",
    ]


# --- main() and the console script ------------------------------------------------------------


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process's environment without any OTEL_* variable (main() reads os.environ)."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_main_exits_0_without_problems(no_otel_env: pytest.MonkeyPatch) -> None:
    printed: list[str] = []

    assert doctor.main(["--no-network"], out=printed.append) == 0
    assert len(printed) == 1
    assert printed[0].startswith(f"otel-dist {__version__} doctor\n")
    assert printed[0].endswith("no problems found")
    assert "endpoints:" not in printed[0]


def test_main_exits_1_on_a_bad_value(no_otel_env: pytest.MonkeyPatch) -> None:
    no_otel_env.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    printed: list[str] = []

    assert doctor.main(["--no-network"], out=printed.append) == 1
    assert "OTEL_TRACES_EXPORTER='zipkin' is not valid" in printed[0]


def test_main_exits_1_when_the_collector_is_down(no_otel_env: pytest.MonkeyPatch) -> None:
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    printed: list[str] = []

    assert doctor.main([], out=printed.append) == 1
    assert "does not answer" in printed[0]


def test_main_rejects_an_unknown_argument(
    no_otel_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    printed: list[str] = []

    assert doctor.main(["--no-netwrok"], out=printed.append) == 2
    assert printed == []
    assert capsys.readouterr().err == (
        "otel-dist doctor: unknown argument '--no-netwrok'\n"
        "usage: otel-dist doctor [--no-network]\n"
    )


def _otel_dist(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_bin("otel-dist"), *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_console_script_doctor() -> None:
    result = _otel_dist("doctor", "--no-network")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"otel-dist {__version__} doctor\n\nsettings (secrets masked):")
    assert result.stdout.endswith("\nno problems found\n")


def test_console_script_doctor_with_a_problem_and_a_secret() -> None:
    result = _otel_dist(
        "doctor",
        "--no-network",
        OTEL_TRACES_EXPORTER="zipkin",
        OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Bearer {CANARY}",
    )

    assert result.returncode == 1
    assert CANARY not in result.stdout + result.stderr
    assert "headers: authorization=***)" in result.stdout
    assert result.stdout.endswith(
        "1 problem(s):\n"
        "  - OTEL_TRACES_EXPORTER='zipkin' is not valid: accepted values: otlp, console, none\n"
    )


def test_console_script_version() -> None:
    result = _otel_dist("--version")

    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"otel-dist {__version__}\n",
        "",
    )


def test_console_script_unknown_command() -> None:
    result = _otel_dist("frobnicate")

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"otel-dist: unknown command 'frobnicate'\n\n{USAGE}"


def test_console_script_without_a_command_prints_usage_and_fails() -> None:
    result = _otel_dist()

    assert (result.returncode, result.stdout, result.stderr) == (2, "", USAGE)
    assert USAGE.startswith("usage: otel-dist COMMAND [options]\n")


def test_console_script_help() -> None:
    result = _otel_dist("--help")

    assert (result.returncode, result.stdout, result.stderr) == (0, USAGE, "")


class _NeedsToken(BaseHTTPRequestHandler):
    """Accepts an export only with ``Authorization: Bearer good-token``, like a vendor endpoint."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        allowed = self.headers.get("Authorization") == "Bearer good-token"
        self.send_response(200 if allowed else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def token_server() -> Iterator[str]:
    """An HTTP server accepting only ``Bearer good-token``; yields its base URL."""
    with _serving(_NeedsToken) as url:
        yield url


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ("authorization=Bearer%20good-token", None),
        (
            "authorization=Bearer%20wrong",
            "rejects the configured OTLP headers/credentials (HTTP 401)",
        ),
        ("", "rejects the configured OTLP headers/credentials (HTTP 401)"),
    ],
)
def test_probe_sends_the_configured_headers(
    token_server: str, headers: str, problem: str | None
) -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{token_server}/v1/traces"}
    env |= {"OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    if headers:
        env["OTEL_EXPORTER_OTLP_HEADERS"] = headers
    report = diagnose(env=env)

    if problem is None:
        assert report.problems == []
        assert line_of(report, "endpoints", "traces") == f"traces: {token_server}/v1/traces answers"
    else:
        assert report.problems == [f"OTLP traces endpoint {token_server}/v1/traces {problem}"]


# --- doctor says what setup will do (the plan) ----------------------------------------------


def test_grpc_without_the_extra_is_a_problem_and_exit_1(no_otel_env: pytest.MonkeyPatch) -> None:
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    printed: list[str] = []

    assert doctor.main(["--no-network"], out=printed.append) == 1
    report = printed[0]
    assert "exporters: traces=none metrics=none logs=none" in report
    assert "  otlp traces: off: " + GRPC_MISSING.format(signal="traces") in report
    assert report.endswith(
        "3 problem(s):\n"
        + "\n".join(f"  - {GRPC_MISSING.format(signal=s)}" for s in ("metrics", "traces", "logs"))
    )


def test_grpc_for_one_signal_turns_only_that_signal_off() -> None:
    report = diagnose(env={"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"}, network=False)

    assert "exporters: traces=otlp metrics=none logs=otlp" in section(
        report, "settings (secrets masked)"
    )
    assert report.problems == [GRPC_MISSING.format(signal="metrics")]
    assert line_of(report, SKIPPED, "runtime metrics") == (
        "runtime metrics: metrics exporter is none"
    )


def test_traces_off_says_exactly_what_setup_still_does() -> None:
    report = diagnose(env={"OTEL_TRACES_EXPORTER": "none"}, network=False)

    # Since traces need no export for their ids, setup still injects them and sets the headers.
    assert line_of(report, RUNS, "structlog") == (
        f"structlog: structlog {version('structlog')}: trace ids injected before the renderer "
        "(their spans are not exported: traces none)"
    )
    assert line_of(report, RUNS, "sqlalchemy") == (
        f"sqlalchemy: SQLAlchemy {version('sqlalchemy')} (otel-dist events; AsyncEngine "
        "supported); pool metrics only: no statement spans (traces none)"
    )
    assert "response trace headers = True; request id header = X-Request-ID" in section(
        report, "settings (secrets masked)"
    )
    assert report.problems == []


def test_bad_endpoint_shows_the_value_set_and_names_it() -> None:
    report = diagnose(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "not-a-url"}, network=False)

    bad = (
        "OTEL_EXPORTER_OTLP_ENDPOINT='not-a-url' is not valid: expected an absolute http:// or "
        "https:// URL"
    )
    settings_lines = section(report, "settings (secrets masked)")
    assert "exporters: traces=none metrics=none logs=none" in settings_lines
    for signal in ("traces", "metrics", "logs"):
        assert f"otlp {signal}: off: {bad}" in settings_lines
    assert "localhost:4318" not in report.render()
    assert report.problems == [bad]


def test_no_internal_entry_point_names_in_the_report() -> None:
    # opentelemetry-instrumentation-httpx also declares an "httpx2" instrumentor for a library
    # that is not installed: the launcher skips it silently, and so does the report.
    assert "httpx2" not in diagnose(env={}, network=False).render()


def test_setup_skips_what_doctor_says_will_not_run() -> None:
    env = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    report = diagnose(env=env, network=False)
    plan = make_plan(load_settings(env, strict=False), strict=False)

    skipped = {line.split(": ", 1)[0] for line in section(report, SKIPPED)}
    assert skipped == {name for name, step in plan.steps.items() if not step.runs}
    assert skipped == {"sqlalchemy", "runtime metrics"}
