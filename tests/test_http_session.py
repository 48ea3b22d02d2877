"""An OTLP/HTTP exporter never shares its keep-alive connection with a forked child.

A master that exported before forking (zero-code gunicorn, ``--preload``) hands its workers a
copy of its open connection. Writing on one connection from two processes lets each read the
other's response: one of them waits out the exporter's timeout and sends its batch again. The
exporter otel-dist builds must open a connection of its own in the child, and leave the parent's
working.
Nor does an export thread import anything for the first time: a worker forked while one was in
the middle of that import would inherit the module's import lock held by a thread it does not
have, and its export threads would wait on it for good (zero-code gunicorn workers that never
delivered anything, under load).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from otel_dist.sdk.exporters import _otlp_exporter
from otel_dist.sdk.http_session import ForkSafeSession, session_for
from otel_dist.settings import load_settings


class _Recording(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector answers
    peers: list[int] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).peers.append(self.client_address[1])
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[int]]]:
    _Recording.peers = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recording)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recording.peers
    server.shutdown()
    server.server_close()


def _export_one_span(exporter: SpanExporter, name: str) -> SpanExportResult:
    results: list[SpanExportResult] = []

    class Recorder(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            results.append(exporter.export(spans))
            return results[-1]

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Recorder()))
    provider.get_tracer("test").start_span(name).end()
    return results[0]


def test_a_forked_child_exports_on_its_own_connection(receiver: tuple[str, list[int]]) -> None:
    endpoint, peers = receiver
    settings = load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    exporter = _otlp_exporter(settings, "traces")
    assert _export_one_span(exporter, "before the fork") is SpanExportResult.SUCCESS
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: export once, report the result through the pipe, leave at once
        result = _export_one_span(exporter, "in the child")
        os.write(write_end, b"ok" if result is SpanExportResult.SUCCESS else b"failed")
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as child_said:
        assert child_said.read() == b"ok"
    os.waitpid(pid, 0)
    assert _export_one_span(exporter, "parent after the fork") is SpanExportResult.SUCCESS
    parent_port, child_port, parent_again = peers
    assert child_port != parent_port  # the child did not write on the parent's connection
    assert parent_again == parent_port  # and the parent's connection still works


def test_a_child_forked_while_a_parent_thread_held_a_pool_lock_still_exports(
    receiver: tuple[str, list[int]],
) -> None:
    # The parent's export thread picks or returns a connection under the pool manager's lock;
    # a fork at that moment leaves the child that lock held by a thread it does not have.
    endpoint, _ = receiver
    session = ForkSafeSession()
    assert session.post(endpoint, data=b"before the fork", timeout=10).status_code == 200
    pools_lock = session.get_adapter(endpoint).poolmanager.pools.lock  # type: ignore[attr-defined]
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with pools_lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold_the_lock, daemon=True)
    holder.start()
    held.wait()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: export once, report the status through the pipe, leave at once
        status = session.post(endpoint, data=b"in the child", timeout=10).status_code
        os.write(write_end, str(status).encode())
        os._exit(0)
    release.set()
    holder.join()
    os.close(write_end)
    try:
        answered, _, _ = select.select([read_end], [], [], 30)
        assert answered, "the child never finished its export"
        assert os.read(read_end, 16) == b"200"
    finally:
        os.close(read_end)
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_a_credential_provider_keeps_its_own_session() -> None:
    assert isinstance(session_for("traces", {}), ForkSafeSession)
    variable = "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER"
    assert session_for("logs", {variable: "mine"}) is None
    per_signal = "OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER"
    assert session_for("metrics", {per_signal: "mine"}) is None
    assert isinstance(session_for("traces", {per_signal: "mine"}), ForkSafeSession)


EXPORT_IMPORTS_SCRIPT = """
import logging
import sys

from opentelemetry import metrics, trace

from otel_dist import configure
from otel_dist.tools.sink import OtlpSink

with OtlpSink() as sink:
    telemetry = configure(otlp_endpoint=sink.endpoint)
    with trace.get_tracer("t").start_as_current_span("s"):
        logging.getLogger("t").warning("a record")
    metrics.get_meter("t").create_counter("c").add(1)
    before = set(sys.modules)
    telemetry.force_flush()
    print("delivered:", len(sink.spans()), len(sink.logs()) > 0)
    print("imported while exporting:", sorted(set(sys.modules) - before))
    telemetry.shutdown()
"""


@pytest.mark.parametrize("native", ["off", "auto"])
def test_exporting_imports_nothing_a_fork_could_catch_half_done(native: str) -> None:
    env = {**os.environ, "OTEL_DIST_NATIVE_EXPORT": native}
    run = subprocess.run(
        [sys.executable, "-c", EXPORT_IMPORTS_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "delivered: 1 True" in run.stdout, (run.stdout, run.stderr)
    assert "imported while exporting: []" in run.stdout, (run.stdout, run.stderr)
