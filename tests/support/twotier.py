"""What the two-tier tests read back: traces with the gateway that handled each span, a
collector's own counters, and a process' CPU time.

Jaeger keeps each span's resource attributes as its process' tags, so the gateway that handled
a span (``otel_dist.gateway``, set by collector/gateway.yaml) is one tag lookup away.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support.servers import REPO_ROOT, ServerProcess, free_port, start_server, venv_bin
from support.stack import Backends, JaegerSearch, load_stack_module, require_toolchain, start_shop

GATEWAY_ATTRIBUTE = "otel_dist.gateway"


@dataclass(frozen=True)
class Scale:
    """How hard the suite pushes: ``full`` for ``make scale``, ``ci`` for ``make scale-ci``."""

    name: str
    rps: int  # checkout requests per second from the fixed-rate load
    load_s: float  # how long the load of the routing and sampling test runs
    error_every: int  # one checkout in this many fails in the stock service
    kill_before_s: float  # steady load before the gateway is killed
    kill_after_s: float  # steady load after it is back
    capacity_s: float  # each capacity window
    # Bounds on the share of the non-error traces tail sampling keeps at 10 %: about three
    # binomial standard deviations at the scale's trace count (270 at ci, 3240 at full).
    sampled_share: tuple[float, float]


SCALES = {
    "full": Scale(
        "full",
        rps=30,
        load_s=120,
        error_every=10,
        kill_before_s=20,
        kill_after_s=30,
        capacity_s=60,
        sampled_share=(0.085, 0.115),
    ),
    "ci": Scale(
        "ci",
        rps=15,
        load_s=20,
        error_every=10,
        kill_before_s=8,
        kill_after_s=10,
        capacity_s=10,
        sampled_share=(0.03, 0.20),
    ),
}

# The gateways' tail sampling waits this long for a trace's spans (config.yaml's default is
# 10 s): a checkout's spans all end within a second of each other.
DECISION_WAIT_S = 5
DECISION_WAIT = f"{DECISION_WAIT_S}s"
GATEWAY_KILL_S = 10.0  # issue I: one gateway down for 10 s under steady load


@contextlib.contextmanager
def scaled_stack(
    data_dir: Path,
    gateways: int = 3,
    agent_env: dict[str, str] | None = None,
    **gateway_env: str,
) -> Iterator[Any]:
    """stack/run.py's ``ScaledStack`` on free loopback ports: backends, ``gateways`` gateways
    and the agent; ``gateway_env`` on top of every gateway's variables, ``agent_env`` on the
    agent's. Stopped on leaving."""
    require_toolchain()
    module = load_stack_module()
    env = {"TAIL_SAMPLING_DECISION_WAIT": DECISION_WAIT, **gateway_env}
    with module.ScaledStack(
        gateways=gateways,
        gateway_env=env,
        agent_env=agent_env,
        ports=module.Ports.free(),
        data_dir=data_dir,
        quiet=True,
    ) as stack:
        yield stack


def backends_of(stack: Any) -> Backends:
    """The stack's backends' HTTP APIs."""
    return Backends(stack.prometheus_url, stack.jaeger_url, stack.victorialogs_url)


@dataclass
class Services:
    """The shop and the stock service it calls, both exporting to the agent."""

    shop: ServerProcess
    stock: ServerProcess

    def checkout(self, client: httpx.Client, number: int, error_every: int = 0) -> httpx.Response:
        """Checkout ``number``: fails in the stock service when ``error_every`` divides it."""
        if error_every > 0 and number % error_every == 0:
            # uvicorn closes the connection after the app raised; a keep-alive client would
            # send its next request into that closing connection and get a reset.
            return client.get(
                f"/checkout/{number % 50}", params={"fail": "true"}, headers={"Connection": "close"}
            )
        return client.get(f"/checkout/{number % 50}")

    def stop(self) -> None:
        """Stop both."""
        self.shop.stop()
        self.stock.stop()


def start_stock(stack: Any, workdir: Path) -> ServerProcess:
    """The stock service (examples/stock, set up with configure()) exporting to ``stack``."""
    port = free_port()
    return start_server(
        [
            venv_bin("uvicorn"),
            "examples.stock.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={
            "PYTHONPATH": str(REPO_ROOT),
            "OTEL_SERVICE_NAME": "stock",
            "OTEL_EXPORTER_OTLP_ENDPOINT": stack.otlp_http_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "1000",
            "OTEL_BLRP_SCHEDULE_DELAY": "1000",
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        },
        port=port,
        cwd=REPO_ROOT,
        output_dir=workdir,
        ready_timeout=60,
    )


@contextlib.contextmanager
def two_services(stack: Any, workdir: Path) -> Iterator[Services]:
    """The stock service, then the shop pointed at it; both stopped on leaving."""
    stock = start_stock(stack, workdir)
    try:
        shop = start_shop(
            stack,
            workdir,
            "shop",
            environment="scale",
            STOCK_URL=stock.base_url,
            OTEL_METRIC_EXPORT_INTERVAL="5000",
        )
    except BaseException:
        stock.stop()
        raise
    services = Services(shop, stock)
    try:
        yield services
    finally:
        services.stop()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


@dataclass(frozen=True)
class StoredSpan:
    """One span as Jaeger stores it, with what these tests ask of it."""

    span_id: str
    parent_id: str  # "" for a root span
    service: str
    gateway: str  # "" when no gateway named itself on the span
    error: bool


@dataclass(frozen=True)
class StoredTrace:
    """A trace in Jaeger."""

    trace_id: str
    spans: tuple[StoredSpan, ...]

    @property
    def gateways(self) -> set[str]:
        """The gateways that handled its spans: exactly one when routing worked."""
        return {span.gateway for span in self.spans}

    @property
    def services(self) -> set[str]:
        """The services its spans come from."""
        return {span.service for span in self.spans}

    def missing_parents(self) -> set[str]:
        """Parent span ids that no span of the trace has: the trace is in pieces."""
        ids = {span.span_id for span in self.spans}
        return {
            span.parent_id for span in self.spans if span.parent_id and span.parent_id not in ids
        }

    def roots(self) -> list[StoredSpan]:
        """Spans without a parent: one in a whole trace."""
        return [span for span in self.spans if not span.parent_id]

    def whole(self, services: Iterable[str]) -> bool:
        """One root, no missing parent, and a span from each of ``services``."""
        return (
            len(self.roots()) == 1 and not self.missing_parents() and set(services) <= self.services
        )


def stored_traces(
    backends: Backends,
    service: str,
    limit: int,
    services: Iterable[str] = ("shop", "stock"),
    wanted: Iterable[str] = (),
) -> dict[str, StoredTrace]:
    """Every trace of ``services`` Jaeger has from the last hour (up to ``limit`` each), by id.

    Jaeger's search can answer without some spans of a trace, or without a trace, that a lookup
    by id already returns (seen under load with its memory store): so every service is searched,
    the fuller answer kept, and each of ``wanted`` that no search returned whole is looked up by
    its id.
    """
    traces: dict[str, StoredTrace] = {}
    for name in dict.fromkeys((service, *services)):
        found = backends.jaeger_search(JaegerSearch({"service": name, "limit": str(limit)}))
        for trace in map(_stored, found):
            known = traces.get(trace.trace_id)
            if known is None or len(trace.spans) > len(known.spans):
                traces[trace.trace_id] = trace
    for trace_id in wanted:
        if trace_id in traces and traces[trace_id].whole(services):
            continue
        looked_up = _lookup(backends, trace_id)
        if looked_up is not None:
            traces[trace_id] = looked_up
    return traces


def _lookup(backends: Backends, trace_id: str) -> StoredTrace | None:
    response = backends.client.get(f"{backends.traces}/api/traces/{trace_id}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    data = response.json().get("data") or []
    return _stored(data[0]) if data else None


def _stored(trace: dict[str, Any]) -> StoredTrace:
    processes = trace.get("processes", {})
    spans = []
    for span in trace.get("spans", []):
        process = processes.get(span["processID"], {})
        tags = {tag["key"]: tag["value"] for tag in process.get("tags", [])}
        parent = next(
            (
                ref["spanID"]
                for ref in span.get("references") or []
                if ref.get("refType") == "CHILD_OF"
            ),
            "",
        )
        error = any(
            tag["key"] == "error" and tag["value"] in (True, "true") for tag in span.get("tags", [])
        )
        spans.append(
            StoredSpan(
                span["spanID"],
                parent,
                process.get("serviceName", ""),
                str(tags.get(GATEWAY_ATTRIBUTE, "")),
                error,
            )
        )
    return StoredTrace(trace["traceID"], tuple(spans))


def counters(metrics_url: str, name: str) -> dict[str, float]:
    """Every series of counter ``name`` on a collector's /metrics, by its label text."""
    values: dict[str, float] = {}
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            values[match.group(2) or ""] = float(match.group(3))
    return values


def counter_total(metrics_url: str, name: str, *having: str) -> float:
    """The sum of counter ``name``'s series whose labels contain each of ``having``."""
    return sum(
        value
        for labels, value in counters(metrics_url, name).items()
        if all(part in labels for part in having)
    )


def run_delay_seconds(pid: int) -> float:
    """How long the threads of ``pid`` have waited, runnable, for a CPU (/proc schedstat).

    On a shared machine this is the time other processes had the CPU a pinned collector was
    on: what keeps it from using its whole core.
    """
    waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            waited += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):  # the thread ended meanwhile
            continue
    return waited / 1e9


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" closing the command: state is field 3, utime 14 and stime 15 (1-based).
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
