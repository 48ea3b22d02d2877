"""Stopping a server loses nothing: every span, log record and request count made before the signal.

Each cell starts a real server (uvicorn, uvicorn --workers, uvicorn --reload, gunicorn with
uvicorn workers, with and without --preload) with the default batch delay (5 s) and metric
interval (60 s), so what a process has produced is still in its queues when the signal comes:
only the flush at stop can deliver it. Each request is marked by its trace id; the sink must
hold exactly one SERVER span and one "pid served" log record per request, and the request counts
the workers exported must add up to the requests sent. The server's own behaviour must be what
it is without otel-dist: the exit code and the app's lifespan shutdown lines, measured once per
server and signal on the same app with no telemetry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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
    start_server,
    uvicorn_argv,
)
from support.traffic import (
    attempt,
    hit,
    hit_every_worker,
    request_counts,
    trace_id_of,
    wait_for_workers,
)

pytestmark = pytest.mark.integration

Factory = Callable[..., ServerProcess]
WAYS = ["configure", "zero-code"]
# gunicorn waits this long for workers to stop before it SIGKILLs them (its default is 30 s).
GRACEFUL_TIMEOUT_S = 8
# Room for the server's own graceful shutdown and our flush on a busy machine.
STOP_TIMEOUT_S = GRACEFUL_TIMEOUT_S + 5 + 20
# Servers start side by side on two cores, next to whatever else the machine runs.
STARTUP_TIMEOUT_S = 60


@dataclass(frozen=True)
class Server:
    """How to start one kind of server (``argv(port, zero_code)``) and how many workers it runs."""

    argv: Callable[[int, bool], list[str]]
    workers: int


def _gunicorn(*options: str) -> Callable[[int, bool], list[str]]:
    timeout = ("--graceful-timeout", str(GRACEFUL_TIMEOUT_S))
    return lambda port, zero_code: gunicorn_argv(
        PID_APP, port, *timeout, *options, zero_code=zero_code
    )


SERVERS: dict[str, Server] = {
    "uvicorn": Server(lambda port, zc: uvicorn_argv(PID_APP, port, zero_code=zc), 1),
    "uvicorn --workers 2": Server(
        lambda port, zc: uvicorn_argv(PID_APP, port, "--workers", "2", zero_code=zc), 2
    ),
    "gunicorn -w 2": Server(_gunicorn(), 2),
    "gunicorn -w 2 --preload": Server(_gunicorn("--preload"), 2),
    "gunicorn -w 2 -k uvicorn_worker.UvicornWorker": Server(
        _gunicorn("-k", "uvicorn_worker.UvicornWorker"), 2
    ),
}


def _env(endpoint: str, way: str | None, **extra: str) -> dict[str, str]:
    """The pid app's environment with every export delay at its default; ``way=None``: no
    telemetry at all (the server as it behaves without otel-dist)."""
    env = {
        "PYTHONPATH": str(REPO_ROOT),
        "OTEL_SERVICE_NAME": "pid-app",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        **extra,
    }
    if way == "configure":
        env["PID_APP_MODE"] = "configure"
    return env


@dataclass(frozen=True)
class HostStop:
    """What the server does on a signal by itself: its exit code, the lifespan shutdowns run."""

    returncode: int
    lifespan_shutdowns: int


def _stop(proc: ServerProcess, sig: int) -> HostStop:
    proc.process.send_signal(sig)
    try:
        returncode = proc.process.wait(timeout=STOP_TIMEOUT_S)
    except Exception as error:
        raise AssertionError(f"no exit within {STOP_TIMEOUT_S} s\n{proc.output()}") from error
    return HostStop(returncode, proc.output().count("pid_app: lifespan shutdown"))


@dataclass(frozen=True)
class Delivered:
    """Per request trace id: SERVER spans and "pid served" records at the sink; requests counted."""

    spans: Counter[str]
    logs: Counter[str]
    requests_counted: int

    @classmethod
    def at(cls, sink: OtlpSink, traces: set[str]) -> Delivered:
        spans = Counter(s.trace_id for s in sink.spans() if s.kind == "SERVER")
        logs = Counter(r.trace_id for r in sink.logs() if r.body == "pid served")
        return cls(
            Counter({t: spans[t] for t in traces if spans[t]}),
            Counter({t: logs[t] for t in traces if logs[t]}),
            sum(request_counts(sink, ["/pid"]).values()),
        )

    @classmethod
    def everything(cls, traces: set[str]) -> Delivered:
        once = Counter(dict.fromkeys(traces, 1))
        return cls(once, once, len(traces))

    def summary(self) -> str:
        return (
            f"spans {sum(self.spans.values())}, logs {sum(self.logs.values())}, "
            f"requests counted {self.requests_counted}"
        )


def _traces(responses: list[httpx.Response]) -> set[str]:
    traces = {trace_id_of(r) for r in responses}
    assert len(traces) == len(responses)
    return traces


def _assert_all_delivered(sink: OtlpSink, traces: set[str], cell: str) -> None:
    delivered = Delivered.at(sink, traces)
    print(f"exit flush [{cell}]: produced {len(traces)}; delivered {delivered.summary()}")
    assert delivered == Delivered.everything(traces), (
        f"produced {len(traces)}, delivered {delivered.summary()}"
    )


@dataclass(frozen=True)
class Cell:
    """One server, way in (``None``: no telemetry, the server on its own) and stop signal."""

    server: str
    way: str | None
    sig: signal.Signals

    def __str__(self) -> str:
        return f"{self.server}, {self.way or 'no telemetry'}, {self.sig.name}"


@dataclass(frozen=True)
class Outcome:
    """What one cell's run produced, how the server stopped, and what reached its sink."""

    pids: int
    traces: set[str]
    stop: HostStop
    delivered: Delivered
    output: str


def _run(cell: Cell) -> Outcome:
    spec = SERVERS[cell.server]
    with OtlpSink() as sink:
        port = free_port()
        argv = spec.argv(port, cell.way == "zero-code")
        proc = start_server(
            argv, env=_env(sink.endpoint, cell.way), port=port, ready_timeout=STARTUP_TIMEOUT_S
        )
        try:
            wait_for_workers(proc, spec.workers)
            responses = hit_every_worker(
                proc.base_url, spec.workers, batch=12, raise_for_status=True
            )
            pids = len({r.json()["pid"] for r in responses})
            traces = _traces(responses) if cell.way else set()
            stop = _stop(proc, cell.sig)
            return Outcome(pids, traces, stop, Delivered.at(sink, traces), proc.output())
        finally:
            proc.stop()


SIGNALS = (signal.SIGTERM, signal.SIGINT)
CELLS = [Cell(server, way, sig) for server in SERVERS for way in WAYS for sig in SIGNALS]
ON_THEIR_OWN = [Cell(server, None, sig) for server in SERVERS for sig in SIGNALS]
# Servers run side by side: most of a cell is waiting (startup, the graceful stop, gunicorn's
# graceful timeout after SIGINT), and every wait is on a condition, never on a fixed delay.
SIDE_BY_SIDE = 3


@pytest.fixture(scope="module")
def stopped() -> Iterator[dict[Cell, Future[Outcome]]]:
    """Every cell (and every server on its own) started, stopped, and its outcome measured."""
    with ThreadPoolExecutor(SIDE_BY_SIDE) as pool:
        yield {cell: pool.submit(_run, cell) for cell in [*ON_THEIR_OWN, *CELLS]}
        pool.shutdown(cancel_futures=True)


def _on_its_own(stopped: dict[Cell, Future[Outcome]], server: str, sig: int) -> HostStop:
    return stopped[Cell(server, None, signal.Signals(sig))].result().stop


@pytest.mark.parametrize("cell", CELLS, ids=str)
def test_everything_produced_before_the_stop_signal_is_delivered(
    cell: Cell, stopped: dict[Cell, Future[Outcome]]
):
    outcome = stopped[cell].result()
    assert outcome.pids == SERVERS[cell.server].workers, outcome.output

    assert outcome.stop == _on_its_own(stopped, cell.server, cell.sig), outcome.output
    print(f"exit flush [{cell}]: produced {len(outcome.traces)}; {outcome.delivered.summary()}")
    assert outcome.delivered == Delivered.everything(outcome.traces), (
        f"produced {len(outcome.traces)}, delivered {outcome.delivered.summary()}\n{outcome.output}"
    )


def _reload_now(watched: Path) -> None:
    source = watched / "edit_me.py"
    source.write_text(f"VERSION = {time.time()}\n")
    later = time.time() + 5
    os.utime(source, (later, later))


@pytest.mark.parametrize("way", WAYS)
def test_reload_children_deliver_everything_at_each_reload_and_at_the_stop(
    way: str, tmp_path: Path, otlp_sink: OtlpSink, server_factory: Factory
):
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "edit_me.py").write_text("VERSION = 0\n")
    port = free_port()
    argv = uvicorn_argv(
        PID_APP, port, "--reload", "--reload-dir", str(watched), zero_code=way == "zero-code"
    )
    proc = server_factory(argv, env=_env(otlp_sink.endpoint, way), port=port)
    traces: set[str] = set()
    pids: set[int] = set()
    for child in (1, 2):
        # The reloader stops the old child (and waits for it) before it starts the next one.
        wait_for_workers(proc, child)
        responses = hit(proc.base_url, 6, raise_for_status=True)
        pids |= {r.json()["pid"] for r in responses}
        traces |= _traces(responses)
        if child == 1:
            _reload_now(watched)
            wait_for_workers(proc, 2)
            # The first child is gone: what it produced must already be at the sink.
            _assert_all_delivered(otlp_sink, traces, f"--reload, {way}, at the reload")
    assert len(pids) == 2, proc.output()

    stopped = _stop(proc, signal.SIGTERM)

    assert stopped == HostStop(0, 2), proc.output()
    _assert_all_delivered(otlp_sink, traces, f"--reload, {way}, at the stop")
    # Each child set telemetry up on its own: its spans name the route and the child's pid.
    spans = [s for s in otlp_sink.spans() if s.kind == "SERVER" and s.trace_id in traces]
    assert {(s.name, s.attributes["http.route"]) for s in spans} == {("GET /pid", "/pid")}
    assert {s.attributes["test.pid"] for s in spans} == pids


@pytest.mark.parametrize("way", WAYS)
def test_workers_recycled_by_max_requests_deliver_everything(
    way: str, otlp_sink: OtlpSink, server_factory: Factory
):
    port = free_port()
    argv = _gunicorn("--max-requests", "4", "--max-requests-jitter", "0")(port, way == "zero-code")
    proc = server_factory(argv, env=_env(otlp_sink.endpoint, way), port=port)
    wait_for_workers(proc, 2)
    # A request can wait in the listen queue while both workers restart, which on a busy
    # machine takes longer than a client's usual 10 s: it is then served after the client gave
    # up, and counted. So the client waits for as long as a restart can take.
    results = attempt(proc.base_url, 16, threads=1, timeout=STARTUP_TIMEOUT_S)
    responses = [r for r in results if isinstance(r, httpx.Response)]
    assert [r.status_code for r in responses] == [200] * len(responses)
    # uvicorn notices its limit up to 0.1 s late and then closes connections it accepted but
    # did not read yet: those requests never reached the app, so they produced nothing.
    refused = [r for r in results if not isinstance(r, httpx.Response)]
    assert all(isinstance(r, httpx.TransportError) for r in refused), refused
    assert not any(isinstance(r, httpx.TimeoutException) for r in refused), refused
    assert len(responses) >= 12, proc.output()
    assert len({r.json()["pid"] for r in responses}) > 2, proc.output()  # workers were recycled

    stopped = _stop(proc, signal.SIGTERM)

    assert stopped.returncode == 0, proc.output()
    _assert_all_delivered(otlp_sink, _traces(responses), f"gunicorn max_requests 4, {way}")


@pytest.mark.parametrize(
    ("server", "way", "flushing_processes"),
    [
        ("uvicorn --workers 2", "configure", 2),  # the supervisor never imports the app
        ("gunicorn -w 2", "zero-code", 3),  # the launcher set the master up too
    ],
)
def test_stop_flush_in_workers_is_bounded_when_the_collector_hangs(
    server: str,
    way: str,
    flushing_processes: int,
    server_factory: Factory,
    stopped: dict[Cell, Future[Outcome]],
):
    spec = SERVERS[server]
    port = free_port()
    with hanging_collector() as endpoint:
        env = _env(endpoint, way, OTEL_DIST_SHUTDOWN_TIMEOUT="2")
        proc = server_factory(spec.argv(port, way == "zero-code"), env=env, port=port)
        wait_for_workers(proc, spec.workers)
        hit_every_worker(proc.base_url, spec.workers, raise_for_status=True)
        started = time.monotonic()
        stop = _stop(proc, signal.SIGTERM)
        elapsed = time.monotonic() - started
    assert stop == _on_its_own(stopped, server, signal.SIGTERM), proc.output()
    output = proc.output()
    # Each process gives up after its 2 s budget: the workers side by side, then a master that
    # has telemetry of its own. Without the budget each would wait out the exporter's 10 s
    # timeout and retries.
    budgets = 1 if flushing_processes == spec.workers else 2
    assert elapsed < 2 * budgets + 4, (elapsed, output)
    assert output.count("did not finish within 2.0 s") == flushing_processes, output


TEST_CLIENT_SCRIPT = """
import signal
from fastapi import FastAPI
from fastapi.testclient import TestClient
from otel_dist import configure
from otel_dist.tools.sink import OtlpSink

with OtlpSink() as sink:
    telemetry = configure(otlp_endpoint=sink.endpoint, metrics_exporter="none")
    app = FastAPI()

    @app.get("/x")
    def x() -> dict[str, str]:
        return {}

    stop_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
    before = [signal.getsignal(s) for s in stop_signals]
    with TestClient(app) as client:
        client.get("/x")
    print("handlers unchanged:", [signal.getsignal(s) for s in stop_signals] == before)
    print("spans at lifespan end:", len(sink.spans()))
    telemetry.force_flush()
    print("spans after force_flush:", len(sink.spans()))
"""


def test_a_test_clients_lifespan_leaves_signals_alone_and_costs_no_flush():
    # Test suites run the app's lifespan in a test client, often once per test: no process is
    # stopping there, so nothing may be chained and no flush may wait on the exporter.
    done = subprocess.run(
        [sys.executable, "-c", TEST_CLIENT_SCRIPT],
        capture_output=True,
        text=True,
        env=clean_env({}),
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "handlers unchanged: True",
        "spans at lifespan end: 0",
        "spans after force_flush: 1",
    ]
