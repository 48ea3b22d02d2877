"""One unhandled exception, one error line: ours, with the ids, under uvicorn and gunicorn.

Starlette re-raises an unhandled exception after our handler answered the 500, and uvicorn
(also as gunicorn's ``UvicornWorker``) then logged "Exception in ASGI application" with the same
traceback and no id. Real servers run the app zero-code; the test reads what they printed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
import pytest

from support.servers import REPO_ROOT, ServerProcess, free_port, gunicorn_argv, uvicorn_argv

pytestmark = pytest.mark.integration

APP = "tests.apps.tiny_app:app"
FAILURE = "RuntimeError: tiny_app failed on purpose"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
SERVERS = {
    "uvicorn": lambda port: uvicorn_argv(APP, port),
    "gunicorn": lambda port: gunicorn_argv(APP, port, "-w", "1", zero_code=True),
}
# The server span from FastAPI's native telemetry (the default here) or the contrib middleware.
HTTP_INSTRUMENTATIONS = ("native", "contrib")


def _env(**extra: str) -> dict[str, str]:
    # Nothing to export to: the test is about the lines the server prints.
    return {
        "PYTHONPATH": str(REPO_ROOT),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        **extra,
    }


def _fail_and_read_output(server: ServerProcess) -> tuple[httpx.Response, str]:
    response = httpx.get(f"{server.base_url}/fail", timeout=30)
    assert response.status_code == 500
    # The traceback is written after the 500 was sent: wait for its last line.
    deadline = time.monotonic() + 30
    while FAILURE not in server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    server.stop()  # flushes and ends the workers: anything logged late is in the output too
    return response, server.output()


@pytest.mark.parametrize("http", HTTP_INSTRUMENTATIONS)
@pytest.mark.parametrize("server_name", list(SERVERS))
def test_one_error_line_with_the_response_ids(
    server_name: str, http: str, server_factory: Callable[..., ServerProcess]
):
    port = free_port()
    env = _env(OTEL_DIST_HTTP_INSTRUMENTATION=http)
    server = server_factory(SERVERS[server_name](port), env=env, port=port, ready_timeout=60)
    response, output = _fail_and_read_output(server)
    trace_id, span_id = TRACEPARENT.fullmatch(response.headers["traceresponse"]).groups()
    request_id = response.headers["x-request-id"]

    assert output.count("Traceback (most recent call last)") == 1, output
    assert output.count(FAILURE) == 1, output
    assert "Exception in ASGI application" not in output
    error_lines = [line for line in output.splitlines() if "unhandled exception" in line]
    assert error_lines == [
        f"unhandled exception: GET /fail trace_id={trace_id} span_id={span_id} "
        f"request_id={request_id}"
    ]
    # The traceback follows that line.
    after = output.split(error_lines[0], 1)[1]
    assert after.lstrip("\n").startswith("Traceback (most recent call last)")


def test_the_server_line_stays_when_the_app_silenced_ours(
    server_factory: Callable[..., ServerProcess],
):
    port = free_port()
    env = _env(TINY_APP_SILENCE_ERRORS="1")
    server = server_factory(SERVERS["uvicorn"](port), env=env, port=port, ready_timeout=60)
    _, output = _fail_and_read_output(server)
    assert "unhandled exception" not in output
    assert output.count("Exception in ASGI application") == 1, output
    assert output.count(FAILURE) == 1, output
