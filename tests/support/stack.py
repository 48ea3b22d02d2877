"""The local stack from tests: loading stack/run.py, polling, and the backends' HTTP APIs.

Shared by the end-to-end test (tests/e2e) and the fault suite (tests/faults). ``Backends`` asks
Prometheus, VictoriaLogs (LogsQL) and Jaeger v2 what a user (or Grafana's datasources) would ask;
``eventually`` polls until an answer is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from support.scripts import load_script
from support.servers import REPO_ROOT, ServerProcess, free_port, start_server, venv_bin

IN_CI = os.environ.get("CI", "").lower() == "true"


def load_stack_module() -> ModuleType:
    """stack/run.py as a module (it is a script, not a package): ``LocalStack``, ``Ports``."""
    return load_script("stack/run.py", "otel_dist_stack_run")


def require_toolchain() -> None:
    """Skip without Go (the stack is built from source); under CI=true, fail instead."""
    if shutil.which("go") is None:
        message = "the e2e stack is built from source and needs Go (`go` not on PATH)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def eventually(check: Callable[[], Any], timeout: float = 60, every: float = 1.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = exc
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"not true after {timeout:.0f} s; last value: {last!r}"[:2000])


JAEGER_SEARCH_TIMEOUT_S = 120.0
# A whole fault run's log entries of one service (tens of thousands) in one answer.
LOGSQL_TIMEOUT_S = 120.0


@dataclass
class Backends:
    """The backends' HTTP APIs: Prometheus, Jaeger (``traces``) and VictoriaLogs (``logs``)."""

    prometheus: str
    traces: str
    logs: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    def promql(self, query: str) -> list[dict[str, Any]]:
        r = self.client.get(f"{self.prometheus}/api/v1/query", params={"query": query})
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result

    def exemplars(self, query: str) -> list[dict[str, Any]]:
        now = time.time()
        r = self.client.get(
            f"{self.prometheus}/api/v1/query_exemplars",
            params={"query": query, "start": now - 3600, "end": now + 60},
        )
        r.raise_for_status()
        return [e for series in r.json()["data"] for e in series["exemplars"]]

    def alerts(self) -> list[dict[str, Any]]:
        r = self.client.get(f"{self.prometheus}/api/v1/alerts")
        r.raise_for_status()
        alerts: list[dict[str, Any]] = r.json()["data"]["alerts"]
        return alerts

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Spans of a trace, or [] when Jaeger does not know it.

        Jaeger's JSON (``data[0].spans``, parents in ``references``, services in ``processes``)
        normalised to: name, kind (``SPAN_KIND_*``), spanId, parentSpanId (hex), service and
        tags (the span's attributes, ``key -> value``).
        """
        r = self.client.get(f"{self.traces}/api/traces/{trace_id}")
        if r.status_code == 404:
            return []
        r.raise_for_status()
        data = r.json().get("data") or []
        if not data:
            return []
        processes = data[0].get("processes", {})
        return [
            {
                "name": span["operationName"],
                "kind": _jaeger_kind(span),
                "spanId": span["spanID"],
                "parentSpanId": next(
                    (
                        ref["spanID"]
                        for ref in span.get("references") or []
                        if ref.get("refType") == "CHILD_OF"
                    ),
                    "",
                ),
                "service": processes.get(span["processID"], {}).get("serviceName", ""),
                "tags": {tag["key"]: tag["value"] for tag in span.get("tags") or []},
            }
            for span in data[0].get("spans", [])
        ]

    def jaeger_search(self, search: JaegerSearch) -> list[dict[str, Any]]:
        """Traces a Jaeger search finds (``/api/traces?service=...``) in the last hour."""
        now_us = int(time.time() * 1_000_000)
        window = {"start": str(now_us - 3600 * 1_000_000), "end": str(now_us)}
        # One search returns every trace of a service: after a long fault run, tens of
        # thousands, which Jaeger takes longer than the client's 10 s to write out.
        r = self.client.get(
            f"{self.traces}/api/traces",
            params={**window, **search.params},
            timeout=JAEGER_SEARCH_TIMEOUT_S,
        )
        r.raise_for_status()
        traces: list[dict[str, Any]] = r.json().get("data") or []
        if search.errors_only:
            traces = [t for t in traces if any(_jaeger_error(span) for span in t["spans"])]
        return traces

    def logsql(
        self, query: str, *, start_ns: int | None = None, end_ns: int | None = None
    ) -> list[dict[str, str]]:
        """Every log entry VictoriaLogs has for a LogsQL ``query``, as its fields.

        The window defaults to the last hour (and a minute ahead, for clock skew). Without a
        ``limit`` VictoriaLogs streams every match, one JSON object per line, so nothing needs
        paging. Fields: ``_msg`` (the body), ``_time``, ``_stream`` (the resource attributes
        that form the stream), then every resource and log attribute under its OTLP name
        (``service.name``, ``exception.stacktrace``), ``trace_id``, ``span_id``,
        ``severity_text``.
        """
        now = time.time_ns()
        start = now - 3600 * 10**9 if start_ns is None else start_ns
        end = now + 60 * 10**9 if end_ns is None else end_ns
        r = self.client.post(
            f"{self.logs}/select/logsql/query",
            data={"query": query, "start": str(start), "end": str(end)},
            timeout=LOGSQL_TIMEOUT_S,
        )
        r.raise_for_status()
        return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def _jaeger_kind(span: dict[str, Any]) -> str:
    """Jaeger keeps the OTLP span kind as a ``span.kind`` tag (absent for internal spans)."""
    for tag in span.get("tags", []):
        if tag["key"] == "span.kind":
            return f"SPAN_KIND_{str(tag['value']).upper()}"
    return "SPAN_KIND_INTERNAL"


def _jaeger_error(span: dict[str, Any]) -> bool:
    """Jaeger marks a span whose OTLP status is ERROR with the tag ``error=true``."""
    return any(t["key"] == "error" and t["value"] in (True, "true") for t in span["tags"])


@dataclass(frozen=True)
class JaegerSearch:
    """A Jaeger trace search standing in for a TraceQL query.

    ``errors_only`` keeps the traces with an error span, filtered here: Jaeger v2's memory
    store cannot filter on it. Its HTTP API passes ``tags={"error":"true"}`` on as the string
    "true", and the store reads that with ``Value.Bool()``, which is false for a string, so it
    looks for status OK and finds no failing trace (internal/storage/v2/memory/tenant.go).
    """

    params: dict[str, str]
    errors_only: bool = False

    def __str__(self) -> str:
        """How the mapping is printed: the request, plus the filter applied to its answer."""
        request = f"GET /api/traces?{urlencode(self.params)}"
        if self.errors_only:
            return f"{request}, keeping the traces with a span tagged error=true"
        return request


# --- for the fault suite: processes of a running stack, the shop on it, counting what arrived --
SHOP_CONFIGURE = ("uvicorn", "examples.shop.main:app")  # configure() in examples/shop/main.py


def start_shop(
    stack: Any,
    workdir: Path,
    service: str,
    *,
    command: tuple[str, ...] = SHOP_CONFIGURE,
    environment: str = "faults",
    **env: str,
) -> ServerProcess:
    """The example shop exporting to ``stack``: ``command`` (venv scripts, then the app).

    stdout and stderr go to ``ServerProcess.output()``. Batches leave every second and metrics
    every two, so a test sees its telemetry in seconds rather than the defaults' 5 s / 60 s;
    ``env`` overrides those and adds the shop's own variables.
    """
    port = free_port()
    *scripts, app = command
    return start_server(
        [*map(venv_bin, scripts), app, "--host", "127.0.0.1", "--port", str(port)],
        env={
            "PYTHONPATH": str(REPO_ROOT),
            "OTEL_SERVICE_NAME": service,
            "OTEL_RESOURCE_ATTRIBUTES": f"deployment.environment.name={environment}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": stack.otlp_http_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "1000",
            "OTEL_BLRP_SCHEDULE_DELAY": "1000",
            "OTEL_METRIC_EXPORT_INTERVAL": "2000",
            "DATABASE_URL": f"sqlite:///{workdir / (service + '.db')}",
            **env,
        },
        port=port,
        cwd=REPO_ROOT,
        output_dir=workdir,
    )


def stack_pids(stack: Any) -> dict[str, int]:
    """The pid of each of the stack's processes, from the state.json ``LocalStack`` writes."""
    state = json.loads((Path(stack.data_dir) / "state.json").read_text())
    return {name: int(process["pid"]) for name, process in state["processes"].items()}


def stack_pid(stack: Any, name: str) -> int:
    """The pid of one of the stack's processes."""
    return stack_pids(stack)[name]


def stop_stack_process(stack: Any, name: str, sig: int = signal.SIGTERM) -> float:
    """Send ``sig`` to one of the stack's processes and wait until it has exited.

    Returns the monotonic time it was gone. ``stack.restart(name)`` starts it again (it only
    spawns when the old process is gone). Escalates to SIGKILL after 15 s.
    """
    pid = stack_pid(stack, name)
    os.kill(pid, sig)
    deadline = time.monotonic() + 15
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # already reaped
            done = pid
        if done == pid:
            return time.monotonic()
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 15
        time.sleep(0.02)


def found_traces(backends: Backends, service: str, trace_ids: Iterable[str]) -> dict[str, int]:
    """Of ``trace_ids``, those Jaeger has, with their span counts.

    One search (``/api/traces?service=``) returns every trace of the service; ids it did not
    return are looked up one by one.
    """
    wanted = set(trace_ids)
    found: dict[str, int] = {}
    if wanted:
        limit = str(2 * len(wanted) + 1000)
        for trace in backends.jaeger_search(JaegerSearch({"service": service, "limit": limit})):
            if trace["traceID"] in wanted:
                found[trace["traceID"]] = len(trace.get("spans", []))
    for trace_id in sorted(wanted - found.keys()):
        spans = backends.trace(trace_id)
        if spans:
            found[trace_id] = len(spans)
    return found


def logsql_string(value: str) -> str:
    """``value`` as a quoted LogsQL string (JSON's escaping is LogsQL's)."""
    return json.dumps(value)


@contextlib.contextmanager
def local_stack(data_dir: Path, **collector_env: str) -> Iterator[Any]:
    """A started ``LocalStack`` on free loopback ports with its data in ``data_dir``; stopped
    on leaving. Skips without Go (fails under CI=true), as the e2e test does. Without
    PostgreSQL: the fault suite tests the telemetry path, and its shops run on SQLite."""
    require_toolchain()
    module = load_stack_module()
    with module.LocalStack(
        ports=module.Ports.free(),
        data_dir=data_dir,
        collector_env=collector_env,
        quiet=True,
        postgres=False,
    ) as stack:
        yield stack
