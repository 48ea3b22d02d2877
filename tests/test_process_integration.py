"""Process life against real servers: workers after fork, SIGTERM flush bounds, bad settings.

Each test starts uvicorn or gunicorn in a subprocess with a real OTLP sink (or an unreachable
"collector") and asserts only on what leaves the process.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from otel_dist.tools.sink import OtlpSink
from support.collector import hanging_collector
from support.servers import (
    PID_APP,
    REPO_ROOT,
    ServerProcess,
    clean_env,
    free_port,
    gunicorn_argv,
    pid_app_env,
    uvicorn_argv,
    venv_bin,
)
from support.traffic import hit, hit_every_worker, request_counts, trace_id_of

ROOT = REPO_ROOT
APP = PID_APP
pytestmark = pytest.mark.integration

Factory = Callable[..., ServerProcess]


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An endpoint that accepts TCP connections and never answers: the worst collector outage."""
    with hanging_collector() as endpoint:
        yield endpoint


def _start_pid_app(
    server_factory: Factory, endpoint: str, *, zero_code: bool, **extra: str
) -> ServerProcess:
    """The pid app under one uvicorn worker: zero-code (launcher) or ``configure()`` at import."""
    port = free_port()
    argv = [venv_bin("uvicorn"), APP, "--host", "127.0.0.1", "--port", str(port)]
    if zero_code:
        argv = [venv_bin("opentelemetry-instrument"), *argv]
    else:
        extra = {**extra, "PID_APP_MODE": "configure"}
    return server_factory(argv, env=pid_app_env(endpoint, **extra), port=port, cwd=ROOT)


WORKER_SERVERS: dict[str, tuple[Callable[[int], list[str]], dict[str, str]]] = {
    "uvicorn --workers 2, zero-code": (lambda port: uvicorn_argv(APP, port, "--workers", "2"), {}),
    "gunicorn -w 2 --preload, configure() in master before fork": (
        lambda port: gunicorn_argv(APP, port, "--preload"),
        {"PID_APP_MODE": "configure"},
    ),
    "gunicorn -w 2, zero-code": (lambda port: gunicorn_argv(APP, port, zero_code=True), {}),
    # The master's exporter thread runs before the fork (fastotel's, when native, sends nothing
    # from a child: each worker must get one of its own).
    "gunicorn -w 2 --preload, a span exported in the master before fork": (
        lambda port: gunicorn_argv(APP, port, "--preload"),
        {"PID_APP_MODE": "configure", "PID_APP_SPAN_BEFORE_FORK": "1"},
    ),
}


@pytest.mark.parametrize("server", list(WORKER_SERVERS))
def test_every_worker_exports_and_metrics_are_not_double_counted(
    server: str, otlp_sink: OtlpSink, server_factory: Factory
):
    make_argv, extra = WORKER_SERVERS[server]
    port = free_port()
    proc = server_factory(
        make_argv(port),
        env=pid_app_env(otlp_sink.endpoint, **extra),
        port=port,
        cwd=ROOT,
    )
    responses = hit_every_worker(proc.base_url)
    pids = {r.json()["pid"] for r in responses}
    assert len(pids) == 2, proc.output()
    traces = {trace_id_of(r): r.json()["pid"] for r in responses}

    def all_spans(sink: OtlpSink) -> bool:
        got = {s.trace_id for s in sink.spans() if s.kind == "SERVER"}
        return set(traces) <= got

    assert otlp_sink.wait_for(all_spans, timeout=20), proc.output()
    span_pids = {
        s.trace_id: s.attributes["test.pid"] for s in otlp_sink.spans() if s.kind == "SERVER"
    }
    assert {t: span_pids[t] for t in traces} == traces

    def counted(sink: OtlpSink) -> int:
        return sum(request_counts(sink, ["/pid"]).values())

    assert otlp_sink.wait_for(lambda s: counted(s) >= len(responses), timeout=20)
    time.sleep(1.5)  # a few more export rounds: the total must not grow past what was sent
    assert counted(otlp_sink) == len(responses)
    instances = {s.resource["service.instance.id"] for s in otlp_sink.spans() if s.kind == "SERVER"}
    assert len(instances) == 2


@pytest.mark.parametrize("way", ["zero-code", "configure"])
def test_sigterm_flush_is_bounded_when_the_collector_hangs(
    way: str, blackhole: str, server_factory: Factory
):
    proc = _start_pid_app(
        server_factory,
        blackhole,
        zero_code=way == "zero-code",
        OTEL_DIST_SHUTDOWN_TIMEOUT="2",
        OTEL_BSP_SCHEDULE_DELAY="60000",
    )
    # Exporting never blocks or fails a request, even with the collector hanging.
    assert [r.status_code for r in hit(proc.base_url, 30)] == [200] * 30
    started = time.monotonic()
    proc.process.send_signal(signal.SIGTERM)
    proc.process.wait(timeout=30)
    elapsed = time.monotonic() - started
    # 2 s flush bound plus uvicorn's own graceful shutdown; without the bound the OTLP
    # exporter's 10 s timeout and retries would hold the process far longer.
    assert elapsed < 6, (elapsed, proc.output())
    assert "did not finish within 2.0 s" in proc.output()


def test_sigterm_with_collector_up_loses_nothing_already_produced(
    otlp_sink: OtlpSink, server_factory: Factory
):
    # Spans wait in the batch queue (60 s delay): only the SIGTERM flush can deliver them.
    proc = _start_pid_app(
        server_factory,
        otlp_sink.endpoint,
        zero_code=False,
        OTEL_BSP_SCHEDULE_DELAY="60000",
        OTEL_BLRP_SCHEDULE_DELAY="60000",
    )
    responses = hit(proc.base_url, 25)
    traces = {trace_id_of(r) for r in responses}
    assert not [s for s in otlp_sink.spans() if s.kind == "SERVER"]
    assert proc.stop(signal.SIGTERM, timeout=15) != -9
    exported = {s.trace_id for s in otlp_sink.spans() if s.kind == "SERVER"}
    assert traces <= exported
    logged = {r.trace_id for r in otlp_sink.logs() if r.body == "pid served"}
    assert traces <= logged


def test_bad_variable_under_launcher_logs_one_line_and_app_serves(
    otlp_sink: OtlpSink, server_factory: Factory
):
    proc = _start_pid_app(
        server_factory, otlp_sink.endpoint, zero_code=True, OTEL_TRACES_EXPORTER="zipkin"
    )
    assert [r.status_code for r in hit(proc.base_url, 5)] == [200] * 5
    assert otlp_sink.wait_for(
        lambda s: any(p.name == "http.server.request.duration" for p in s.metrics()), timeout=10
    )
    assert not otlp_sink.spans()
    lines = [line for line in proc.output().splitlines() if "OTEL_TRACES_EXPORTER" in line]
    assert lines == [
        "otel-dist: OTEL_TRACES_EXPORTER='zipkin' is not valid: accepted values: otlp, console, "
        "none (telemetry for that setting's signal is off)"
    ]


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    full_env.update(
        {
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def test_bad_signal_less_value_under_launcher_says_its_default_is_used():
    done = _python(
        "from otel_dist.telemetry import configure_from_launcher\n"
        "t = configure_from_launcher()\n"
        "print(t.settings.error_format, t.settings.exporter('traces'))\n",
        OTEL_TRACES_EXPORTER="console",
        OTEL_DIST_ERROR_FORMAT="xml",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "detail console"
    assert [line for line in done.stderr.splitlines() if "OTEL_DIST_ERROR_FORMAT" in line] == [
        "otel-dist: OTEL_DIST_ERROR_FORMAT='xml' is not valid: accepted values: detail, problem "
        "(its default is used)"
    ]


def test_configure_bad_value_raises_one_clear_error():
    done = _python(
        "from otel_dist import configure\nconfigure(sampler='traceidratio', sampler_arg='abc')"
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "otel_dist.settings.ConfigurationError: sampler_arg (OTEL_TRACES_SAMPLER_ARG)='abc' "
        "is not valid: expected a number from 0.0 to 1.0"
    )


def test_configure_twice_warns_and_changes_nothing():
    code = (
        "import logging; logging.basicConfig(format='%(message)s')\n"
        "from otel_dist import configure\n"
        "a = configure(service_name='one')\n"
        "b = configure(service_name='two')\n"
        "assert a is b\n"
        "print(a.providers.resource.attributes['service.name'])\n"
    )
    done = _python(code, OTEL_TRACES_EXPORTER="console")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "one"
    assert "configure() was already called; this call changes nothing" in done.stderr


@pytest.mark.parametrize(
    "first_import",
    ["httpx", "opentelemetry.instrumentation.httpx"],  # the contrib module imports httpx itself
)
def test_httpx_is_imported_and_instrumented_only_when_the_app_imports_it(first_import: str):
    code = (
        "import importlib, sys\n"
        "from otel_dist import configure\n"
        "telemetry = configure()\n"
        "print('httpx' in sys.modules, 'httpx' in telemetry.instrumented)\n"
        f"importlib.import_module({first_import!r})\n"
        "from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor\n"
        "print(HTTPXClientInstrumentor().is_instrumented_by_opentelemetry)\n"
    )
    done = _python(code, OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="none")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]
    assert "could not be instrumented" not in done.stderr


def test_unsampled_requests_still_carry_ids_in_headers_and_logs(
    otlp_sink: OtlpSink, server_factory: Factory
):
    proc = _start_pid_app(
        server_factory, otlp_sink.endpoint, zero_code=True, OTEL_TRACES_SAMPLER="always_off"
    )
    response = httpx.get(f"{proc.base_url}/pid", timeout=10)
    match = re.fullmatch(
        r"00-([0-9a-f]{32})-[0-9a-f]{16}-([0-9a-f]{2})", response.headers["traceresponse"]
    )
    assert match
    assert int(match.group(2), 16) & 1 == 0  # the real (unsampled) flag
    assert otlp_sink.wait_for(lambda s: any(r.body == "pid served" for r in s.logs()), timeout=10)
    assert [r.trace_id for r in otlp_sink.logs() if r.body == "pid served"] == [match.group(1)]
    assert not otlp_sink.spans()


def test_disabled_instrumentations_are_skipped_with_the_reason():
    code = (
        "from otel_dist import configure\n"
        "t = configure()\n"
        "print(sorted(t.skipped.items()))\n"
        "print(t.instrumented)\n"
    )
    done = _python(
        code,
        OTEL_TRACES_EXPORTER="console",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="sqlalchemy,structlog",
    )
    assert done.returncode == 0, done.stderr
    skipped, instrumented = done.stdout.strip().splitlines()
    assert "('sqlalchemy', 'listed in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS')" in skipped
    assert "('logging', 'listed in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS')" in skipped
    assert "sqlalchemy" not in instrumented
    assert "fastapi (native)" in instrumented


def test_grpc_without_the_extra_is_one_clear_error_or_one_log_line():
    strict = _python(
        "from otel_dist import configure\nconfigure(otlp_protocol='grpc')",
        OTEL_TRACES_EXPORTER="otlp",
    )
    assert strict.returncode == 1
    assert strict.stderr.strip().splitlines()[-1] == (
        "otel_dist.settings.ConfigurationError: OTEL_EXPORTER_OTLP_PROTOCOL=grpc (for traces) "
        "needs the gRPC exporter, which is not installed: pip install 'otel-dist[grpc]', "
        "or use http/protobuf"
    )
    lenient = _python(
        "from otel_dist.telemetry import configure_from_launcher\n"
        "t = configure_from_launcher()\n"
        "print(t.settings.exporter('traces'), t.settings.exporter('metrics'))\n",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="grpc",
    )
    assert lenient.returncode == 0, lenient.stderr
    assert lenient.stdout.strip() == "none none"
    assert lenient.stderr.count("needs the gRPC exporter") == 1


SIGTERM_DURING_EXIT_FLUSH_SCRIPT = """
import logging
import os
import signal

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor

from otel_dist import configure

class SigtermWhileFlushing(SpanProcessor):
    # Shut down after the span exporter, before the log records are exported: a SIGTERM
    # arriving in the middle of the exit flush, as gunicorn's stopping master sends it.
    def shutdown(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


telemetry = configure()  # SIGTERM kills at once here: otel-dist installs its own handler
if os.environ.get("SIGTERM_DEFAULT_AFTER_CONFIGURE"):
    # A gunicorn worker once uvicorn has put back the handler it found: the default one.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
trace.get_tracer_provider().add_span_processor(SigtermWhileFlushing())
with trace.get_tracer("t").start_as_current_span("made before exit"):
    logging.getLogger("t").warning("made before exit")
"""


@pytest.mark.parametrize("handler", ["otel-dist's", "the default"])
def test_a_sigterm_during_the_exit_flush_waits_for_it_to_end(handler: str, otlp_sink: OtlpSink):
    extra = {"SIGTERM_DEFAULT_AFTER_CONFIGURE": "1"} if handler == "the default" else {}
    env = pid_app_env(otlp_sink.endpoint, OTEL_BLRP_SCHEDULE_DELAY="60000", **extra)
    run = subprocess.run(
        [sys.executable, "-c", SIGTERM_DURING_EXIT_FLUSH_SCRIPT],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Still dies of the signal, as it would have, once the bounded flush has ended.
    assert run.returncode == -signal.SIGTERM, run.stderr
    assert [r.body for r in otlp_sink.logs()] == ["made before exit"], run.stderr
