"""``tests/apps/contract_app.py`` under real uvicorn, each way in, and what it printed.

Ways: ``plain`` (no otel-dist at all: the reference), ``configure`` (the app calls
``configure()``) and ``zero-code`` (``opentelemetry-instrument uvicorn``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support.servers import REPO_ROOT, ServerProcess, free_port, start_server, uvicorn_argv

CONTRACT_APP = "tests.apps.contract_app:app"
WAYS_IN = ("configure", "zero-code")
TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# What otel-dist adds to every response: the rest of the headers must be the app's own.
ID_HEADERS = frozenset(
    {"x-request-id", "traceresponse", "server-timing", "access-control-expose-headers"}
)


@contextmanager
def contract_app(way: str, output_dir: Path, **env: str) -> Iterator[ServerProcess]:
    """The contract app served by uvicorn ``way``, stopped on exit."""
    port = free_port()
    server = start_server(
        uvicorn_argv(CONTRACT_APP, port, zero_code=way == "zero-code"),
        env={
            "PYTHONPATH": str(REPO_ROOT),
            "OTEL_SERVICE_NAME": "contract-app",
            "CONTRACT_APP_WAY": way,
            **env,
        },
        port=port,
        output_dir=output_dir,
        ready_timeout=60,  # a busy machine: the launcher's start can take several seconds
    )
    try:
        yield server
    finally:
        server.stop()


def parse_traceparent(value: str) -> tuple[str, str, str, str]:
    """(version, trace id, parent id, flags) of a well-formed ``traceparent``."""
    match = TRACEPARENT.fullmatch(value)
    assert match, value
    version, trace_id, parent_id, flags = match.groups()
    return version, trace_id, parent_id, flags


def structlog_events(output: str, event: str) -> list[dict[str, Any]]:
    """The structlog JSON lines of ``event`` the app printed."""
    found = []
    for line in output.splitlines():
        if line.startswith("{") and f'"event": "{event}"' in line:
            found.append(json.loads(line))
    return found


def stdlib_ids(output: str, message: str) -> list[tuple[str, str]]:
    """(trace_id, request_id) of each standard-library line of ``message`` the app printed."""
    pattern = re.compile(rf"stdlib trace_id=(\S+) request_id=(\S+) {re.escape(message)}$")
    found = []
    for line in output.splitlines():
        match = pattern.match(line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found
