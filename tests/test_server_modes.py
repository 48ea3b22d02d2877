"""Server modes against real servers: Prometheus per worker, an older FastAPI.

uvicorn --reload is in test_exit_flush.py, with what each reload must deliver.

Each test starts uvicorn or gunicorn in a subprocess and asserts only on what leaves it: HTTP
responses, Prometheus scrapes, and what a real OTLP sink receives.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from otel_dist.tools.sink import OtlpSink
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
from support.traffic import hit, hit_every_worker, trace_id_of

ROOT = REPO_ROOT
APP = PID_APP
pytestmark = pytest.mark.integration

Factory = Callable[..., ServerProcess]


def _hit(base_url: str, count: int) -> list[httpx.Response]:
    return hit(base_url, count, raise_for_status=True)


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_run(length: int) -> int:
    """The first of ``length`` consecutive free ports, below Linux's ephemeral range.

    Below 32768 no outgoing connection (the exporters', the test client's) can take one of them
    between this check and the workers binding.
    """
    for _ in range(100):
        base = random.randrange(20000, 32000)
        if all(_port_is_free(p) for p in range(base, base + length)):
            return base
    raise RuntimeError(f"no {length} consecutive free ports found")


@dataclass
class Scrape:
    """What one Prometheus endpoint says about its process and the /pid requests it counted."""

    pid: int
    instance_id: str
    pid_requests: float


def _scrape(port: int) -> Scrape:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(response.text))
    [info] = [s for f in families if f.name == "target_info" for s in f.samples]
    requests = sum(
        s.value
        for f in families
        for s in f.samples
        if s.name == "http_server_request_duration_seconds_count"
        and s.labels.get("http_route") == "/pid"
    )
    return Scrape(int(info.labels["process_pid"]), info.labels["service_instance_id"], requests)


def _scrape_until(ports: list[int], expected: int, timeout: float = 5) -> list[Scrape]:
    # The duration is recorded just after the response is sent: give the last ones a moment.
    deadline = time.monotonic() + timeout
    while True:
        scrapes = [_scrape(port) for port in ports]
        if sum(s.pid_requests for s in scrapes) >= expected or time.monotonic() > deadline:
            return scrapes
        time.sleep(0.1)


def _prometheus_env(endpoint: str, base: int, **extra: str) -> dict[str, str]:
    return pid_app_env(
        endpoint,
        OTEL_METRICS_EXPORTER="prometheus",
        OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
        OTEL_EXPORTER_PROMETHEUS_PORT=str(base),
        **extra,
    )


PROMETHEUS_SERVERS: dict[str, tuple[Callable[[int], list[str]], dict[str, str]]] = {
    "uvicorn --workers 2, zero-code": (lambda port: uvicorn_argv(APP, port, "--workers", "2"), {}),
    "gunicorn -w 2, configure() in each worker": (
        lambda port: gunicorn_argv(APP, port),
        {"PID_APP_MODE": "configure"},
    ),
    "gunicorn -w 2 --preload, configure() in the master": (
        lambda port: gunicorn_argv(APP, port, "--preload"),
        {"PID_APP_MODE": "configure"},
    ),
}


@pytest.mark.parametrize("server", list(PROMETHEUS_SERVERS))
def test_each_worker_serves_its_own_scrape_endpoint_and_counts_add_up(
    server: str, otlp_sink: OtlpSink, server_factory: Factory
):
    argv, extra = PROMETHEUS_SERVERS[server]
    base = _free_port_run(4)
    port = free_port()
    proc = server_factory(
        argv(port),
        env=_prometheus_env(otlp_sink.endpoint, base, **extra),
        port=port,
        cwd=ROOT,
    )
    responses = hit_every_worker(proc.base_url, raise_for_status=True)
    served = Counter(r.json()["pid"] for r in responses)
    assert len(served) == 2, proc.output()

    scrapes = _scrape_until([base, base + 1], len(responses))
    # The first two ports belong to the two workers (not to a supervisor or helper process),
    # and each counts exactly the requests it served: none lost, none counted twice.
    assert {s.pid: s.pid_requests for s in scrapes} == dict(served), proc.output()
    assert sum(s.pid_requests for s in scrapes) == len(responses)
    assert len({s.instance_id for s in scrapes}) == 2
    assert _port_is_free(base + 2), "a third process took a scrape port"
    traces = {trace_id_of(r) for r in responses}
    assert otlp_sink.wait_for(
        lambda s: traces <= {x.trace_id for x in s.spans() if x.kind == "SERVER"}, timeout=10
    )


def test_worker_moves_to_the_next_port_when_the_first_is_taken(
    otlp_sink: OtlpSink, server_factory: Factory
):
    base = _free_port_run(3)
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base))
        squatter.listen()
        proc = server_factory(
            uvicorn_argv(APP, port),
            env=_prometheus_env(otlp_sink.endpoint, base),
            port=port,
            cwd=ROOT,
        )
        responses = _hit(proc.base_url, 5)
        [scrape] = _scrape_until([base + 1], len(responses))
        assert scrape.pid == responses[0].json()["pid"]
        assert scrape.pid_requests == len(responses)
        assert _port_is_free(base + 2)


OLD_FASTAPI = "0.115.14"
# The newest Starlette that FastAPI 0.115.14 accepts (starlette<0.47).
OLD_STARLETTE = "0.46.2"
OVERLAY = ROOT / ".cache" / "fastapi-0.115"


@pytest.fixture(scope="session")
def old_fastapi() -> Path:
    """A directory holding FastAPI 0.115 (no native telemetry) to put first on PYTHONPATH.

    Installed once with pip and reused; the stamp file is written only after a complete install,
    so an interrupted one is redone.
    """
    requirements = [f"fastapi=={OLD_FASTAPI}", f"starlette=={OLD_STARLETTE}"]
    stamp = OVERLAY / "installed.txt"
    if stamp.exists() and stamp.read_text() == " ".join(requirements):
        return OVERLAY
    shutil.rmtree(OVERLAY, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    done = subprocess.run(
        [*command, "--target", str(OVERLAY), *requirements],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"could not install {' '.join(requirements)} into {OVERLAY} for the old-FastAPI "
            f"test (pip needs to reach the package index):\n{done.stdout}{done.stderr}"
        )
    stamp.write_text(" ".join(requirements))
    return OVERLAY


def test_fastapi_without_native_telemetry_gets_the_contrib_middleware(
    old_fastapi: Path, otlp_sink: OtlpSink, server_factory: Factory
):
    pythonpath = os.pathsep.join([str(old_fastapi), str(ROOT)])
    port = free_port()
    proc = server_factory(
        uvicorn_argv("tests.apps.version_app:app", port),
        env=pid_app_env(otlp_sink.endpoint, PYTHONPATH=pythonpath),
        port=port,
        cwd=ROOT,
    )
    versions = httpx.get(f"{proc.base_url}/version", timeout=10).json()
    assert versions == {"fastapi": OLD_FASTAPI, "starlette": OLD_STARLETTE}

    responses = _hit(proc.base_url, 4)
    for response in responses:
        assert response.headers["x-request-id"]
        assert response.headers["traceresponse"].startswith("00-")
    traces = {trace_id_of(r) for r in responses}

    def spans_of_requests(sink: OtlpSink) -> list[tuple[str, str, str]]:
        return sorted((s.trace_id, s.kind, s.name) for s in sink.spans() if s.trace_id in traces)

    assert otlp_sink.wait_for(lambda s: len(spans_of_requests(s)) >= len(traces), timeout=10)
    time.sleep(0.5)  # two more export rounds: a late "http send" span would show up here
    # Exactly one span per request, the contrib middleware's server span: no send/receive spans.
    assert spans_of_requests(otlp_sink) == sorted((t, "SERVER", "GET /pid") for t in traces)
    scopes = {s.scope for s in otlp_sink.spans() if s.trace_id in traces}
    assert scopes == {"opentelemetry.instrumentation.fastapi"}

    def pid_requests(sink: OtlpSink) -> int:
        counts = [
            p.value["count"]
            for p in sink.metrics()
            if p.name == "http.server.request.duration" and p.attributes.get("http.route") == "/pid"
        ]
        return counts[-1] if counts else 0

    assert otlp_sink.wait_for(lambda s: pid_requests(s) == len(responses), timeout=10)

    doctor = subprocess.run(
        [venv_bin("otel-dist"), "doctor", "--no-network"],
        capture_output=True,
        text=True,
        env=clean_env({"PYTHONPATH": pythonpath}),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert f"FastAPI {OLD_FASTAPI}, contrib telemetry" in doctor.stdout, doctor.stderr
