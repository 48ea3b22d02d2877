"""The local stack from tests: loading stack/run.py, polling, and the backends' HTTP APIs.

Shared by the end-to-end test (tests/e2e) and the fault suite (tests/faults). ``Backends`` asks
Prometheus, Loki and the trace backend (Tempo, or Jaeger v2 when Tempo is unavailable) what
Grafana's datasources would ask; ``eventually`` polls until an answer is there.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from support.servers import REPO_ROOT, ServerProcess, free_port, start_server, venv_bin

IN_CI = os.environ.get("CI", "").lower() == "true"


def load_stack_module() -> ModuleType:
    """stack/run.py as a module (it is a script, not a package): ``LocalStack``, ``Ports``."""
    path = REPO_ROOT / "stack" / "run.py"
    spec = importlib.util.spec_from_file_location("otel_dist_stack_run", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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


@dataclass
class Backends:
    """The backends' HTTP APIs, queried as Grafana's datasources do.

    ``traces`` is the trace backend's API, Tempo's or Jaeger's as ``trace_backend`` says.
    """

    prometheus: str
    traces: str
    loki: str
    trace_backend: str = "tempo"
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
        """Spans of a trace, or [] when the backend does not know it.

        Each span is a dict with at least name, kind (``SPAN_KIND_*``, or its OTLP number from
        Tempo), spanId, parentSpanId (hex, or base64 from Tempo: compare through ``hex_id``)
        and service.
        """
        if self.trace_backend == "jaeger":
            return self._jaeger_trace(trace_id)
        return self._tempo_trace(trace_id)

    def _tempo_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Flattened from Tempo's OTLP JSON."""
        for path in (f"/api/v2/traces/{trace_id}", f"/api/traces/{trace_id}"):
            r = self.client.get(f"{self.traces}{path}")
            if r.status_code == 404:
                continue
            r.raise_for_status()
            body = r.json()
            body = body.get("trace", body)
            batches = body.get("batches") or body.get("resourceSpans") or []
            return [
                {**span, "service": _resource_service(batch)}
                for batch in batches
                for scope in batch.get("scopeSpans", batch.get("instrumentationLibrarySpans", []))
                for span in scope.get("spans", [])
            ]
        return []

    def _jaeger_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Jaeger's JSON (``data[0].spans``, parents in ``references``, services in
        ``processes``) normalised to the same keys as Tempo's spans."""
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

    def traceql(self, query: str) -> list[dict[str, Any]]:
        """Tempo's search API; Tempo only (Jaeger has no TraceQL)."""
        now = int(time.time())
        r = self.client.get(
            f"{self.traces}/api/search",
            params={"q": query, "start": now - 3600, "end": now + 60, "limit": 100},
        )
        r.raise_for_status()
        traces: list[dict[str, Any]] = r.json().get("traces", [])
        return traces

    def logql(self, query: str, limit: int = 200) -> list[tuple[dict[str, str], str]]:
        """(labels incl. structured metadata, line) for each log line matching ``query``."""
        now = time.time_ns()
        r = self.client.get(
            f"{self.loki}/loki/api/v1/query_range",
            params={
                "query": query,
                "start": now - 3600 * 10**9,
                "end": now + 60 * 10**9,
                "limit": limit,
            },
        )
        r.raise_for_status()
        data = r.json()["data"]
        if data["resultType"] != "streams":
            return [({**s["metric"]}, v[1]) for s in data["result"] for v in s["values"]]
        return [
            ({**stream["stream"], **(value[2] if len(value) > 2 else {})}, value[1])
            for stream in data["result"]
            for value in stream["values"]
        ]


def _resource_service(batch: dict[str, Any]) -> str:
    for attribute in batch.get("resource", {}).get("attributes", []):
        if attribute["key"] == "service.name":
            return str(attribute["value"].get("stringValue", ""))
    return ""


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

    ``errors_only`` keeps the traces with an error span, filtered here: Jaeger 2.13's memory
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


def hex_id(value: str) -> str:
    """Tempo returns span ids base64-encoded in OTLP JSON; normalise to hex."""
    if re.fullmatch(r"[0-9a-f]{16}|[0-9a-f]{32}", value):
        return value
    return base64.b64decode(value).hex()


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
    """Of ``trace_ids``, those the trace backend has, with their span counts.

    On Jaeger one search (``/api/traces?service=``) returns every trace of the service; ids it
    did not return, and every id on Tempo, are looked up one by one.
    """
    wanted = set(trace_ids)
    found: dict[str, int] = {}
    if backends.trace_backend == "jaeger" and wanted:
        limit = str(2 * len(wanted) + 1000)
        for trace in backends.jaeger_search(JaegerSearch({"service": service, "limit": limit})):
            if trace["traceID"] in wanted:
                found[trace["traceID"]] = len(trace.get("spans", []))
    for trace_id in sorted(wanted - found.keys()):
        spans = backends.trace(trace_id)
        if spans:
            found[trace_id] = len(spans)
    return found


def loki_lines(
    backends: Backends, query: str, start_ns: int, end_ns: int, page: int = 5000
) -> list[tuple[dict[str, str], str]]:
    """Every (labels incl. structured metadata, line) ``query`` matches in [start_ns, end_ns].

    Pages forward through the range (Loki returns at most ``page`` lines per query); a line at
    a page's last timestamp is not counted twice.
    """
    lines: list[tuple[dict[str, str], str]] = []
    seen: set[tuple[int, str, str]] = set()
    start = start_ns
    while True:
        r = backends.client.get(
            f"{backends.loki}/loki/api/v1/query_range",
            params={
                "query": query,
                "start": start,
                "end": end_ns,
                "limit": page,
                "direction": "forward",
            },
        )
        r.raise_for_status()
        values = [
            (int(value[0]), {**stream["stream"], **(value[2] if len(value) > 2 else {})}, value[1])
            for stream in r.json()["data"]["result"]
            for value in stream["values"]
        ]
        added = 0
        for at, labels, line in values:
            key = (at, json.dumps(labels, sort_keys=True), line)
            if key not in seen:
                seen.add(key)
                lines.append((labels, line))
                added += 1
        if len(values) < page or not added:
            return lines
        start = max(at for at, _, _ in values)


@contextlib.contextmanager
def local_stack(data_dir: Path, **collector_env: str) -> Iterator[Any]:
    """A started ``LocalStack`` on free loopback ports with its data in ``data_dir``; stopped
    on leaving. Skips without Go (fails under CI=true), as the e2e test does."""
    require_toolchain()
    module = load_stack_module()
    with module.LocalStack(
        ports=module.Ports.free(), data_dir=data_dir, collector_env=collector_env, quiet=True
    ) as stack:
        yield stack
