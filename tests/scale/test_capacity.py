"""Capacity, measured per core (issue I, point 3): a gateway's spans per second with the full
gateway pipeline, and the agent's CPU cost per span for routing.

One agent and one gateway, on the real binaries, fed checkout-shaped synthetic traces
(support/spanload.py: four spans over two services, one trace in 50 failing) as fast as they
take them. The process measured runs alone on one CPU (``sched_setaffinity`` on every thread,
as ``taskset`` does) at a raised priority (nice -10, when allowed), so that other work on the
machine delays it less; everything else (the load, the other collector, the backends) on the
other CPU. This machine has two, so nothing here claims what several gateways do together.

Two figures per process, over a window of ``scale.capacity_s``:
- spans per second accepted, and the share of its core it used: when that share is near 1, the
  rate is what one core sustains; when it is lower, the load generator was the limit;
- spans per CPU-second (accepted spans / CPU time the process used): the per-core capacity,
  independent of who was the bottleneck. CPU time stolen by the hypervisor is not charged to
  the process, but a busy host still slows it (caches, memory bandwidth): the steal share of
  the pinned CPU is reported beside it, and so is the time its threads waited, runnable, while
  other processes had that CPU (/proc schedstat): the reason a share below 1 is not the
  generator's fault alone.

The gateway runs tail sampling at 10 % with the default 10 s decision wait and ``num_traces``
raised so that no trace is dropped undecided (checked); span metrics, the service graph, the
redaction backstop and the persistent queue to Jaeger run as in production.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.cpus import CpuSplit, CpuTimes, pin_process, pin_this_thread
from support.load import ProcessMemory
from support.spanload import SpanFlood, checkout_template
from support.stack import stack_pids
from support.twotier import Scale, counter_total, cpu_seconds, run_delay_seconds, scaled_stack

WARMUP_S = 5.0
# 1,000 spans per request: fewer, larger requests leave more of the load generator's one
# (shared) CPU for building them, so the collector, not Python, is the limit for longer.
TRACES_PER_REQUEST = 250
# Enough for 10 s of 20,000 traces/s: far above what one core was measured to take.
NUM_TRACES = "200000"
# A process pinned to one CPU cannot use more than it; a little over 1 is /proc's tick rounding.
ONE_CORE_MAX = 1.05
# Each collector is measured on one CPU, as a container limited to one CPU runs it: Go sizes
# its scheduler to the CPUs it sees at start, and a second scheduler thread on a CPU of its own
# only spins looking for work, which would be charged to every span at partial load.
ONE_CORE = {"GOMAXPROCS": "1"}
# Niceness of the measured process during its window (0 again afterwards).
MEASURED_NICENESS = -10


@dataclass(frozen=True)
class Window:
    """What one process did over a measured window."""

    seconds: float
    spans: float  # accepted by its receiver
    cpu_s: float  # user + system time it used
    waited_s: float  # time its threads were runnable but another process had the CPU
    steal_pct: float  # of its CPU, taken by the hypervisor

    @property
    def spans_per_s(self) -> float:
        """Accepted spans per wall-clock second."""
        return self.spans / self.seconds

    @property
    def core_share(self) -> float:
        """How much of its one core it used."""
        return self.cpu_s / self.seconds

    @property
    def waited_share(self) -> float:
        """Runnable-but-waiting time per second of the window, summed over its threads."""
        return self.waited_s / self.seconds

    @property
    def spans_per_cpu_s(self) -> float:
        """Accepted spans per second of CPU it used: the per-core capacity."""
        return self.spans / self.cpu_s


@pytest.fixture
def split() -> Iterator[CpuSplit]:
    """The measured process' CPU and everyone else's; this thread goes to the others."""
    cpus = CpuSplit.of_this_machine()
    if cpus is None:
        pytest.skip("pinning needs two CPUs; this machine has one")
    before = os.sched_getaffinity(0)
    pin_this_thread(cpus.rest)
    try:
        yield cpus
    finally:
        pin_this_thread(before)


def test_gateway_spans_per_core_and_agent_cost_per_span(
    tmp_path: Path, scale: Scale, split: CpuSplit, figures: Callable[..., None]
) -> None:
    with scaled_stack(
        tmp_path / "stack",
        gateways=1,
        agent_env=ONE_CORE,
        **ONE_CORE,
        TAIL_SAMPLING_PERCENT="10",
        TAIL_SAMPLING_DECISION_WAIT="10s",
        TAIL_SAMPLING_NUM_TRACES=NUM_TRACES,
    ) as stack:
        pids = stack_pids(stack)
        gateway_url = stack.gateway_metrics_url("gateway-1")
        gateway_http = f"http://127.0.0.1:{stack.gateway_ports['gateway-1'].otlp_http}"

        # The agent first, while the gateway behind it (on the shared CPU) is fresh and keeps
        # up: an agent whose sends time out spends CPU on retries, not on routing.
        _pin_alone(pids, "agent", split)
        retries_before = _retries_logged(stack)
        agent = _measure(
            stack.otlp_http_endpoint, stack.collector_metrics_url, pids["agent"], split, scale
        )
        agent_retries = _retries_logged(stack) - retries_before

        _pin_alone(pids, "gateway-1", split)
        gateway = _measure(gateway_http, gateway_url, pids["gateway-1"], split, scale)
        dropped = counter_total(
            gateway_url, "otelcol_processor_tail_sampling_sampling_trace_dropped_too_early_total"
        )
        refused = counter_total(gateway_url, "otelcol_receiver_refused_spans_total")
        # What holding decision_wait of traces costs in memory at that rate.
        gateway_rss = ProcessMemory(pids["gateway-1"]).rss_bytes()

        figures(
            "capacity per core (1 gateway, 1 agent, each pinned alone to one CPU)",
            gateway_spans_per_s=round(gateway.spans_per_s),
            gateway_core_share=round(gateway.core_share, 2),
            gateway_spans_per_cpu_s=round(gateway.spans_per_cpu_s),
            gateway_waited_for_cpu=round(gateway.waited_share, 2),
            gateway_steal_pct=gateway.steal_pct,
            gateway_refused_spans=int(refused),
            gateway_traces_dropped_undecided=int(dropped),
            gateway_rss_mb=round(gateway_rss / 2**20),
            agent_spans_per_s=round(agent.spans_per_s),
            agent_core_share=round(agent.core_share, 2),
            agent_cpu_us_per_span=round(1e6 / agent.spans_per_cpu_s, 2),
            agent_waited_for_cpu=round(agent.waited_share, 2),
            agent_steal_pct=agent.steal_pct,
            agent_retried_sends=agent_retries,
            window_s=scale.capacity_s,
        )

        assert gateway.spans > 0
        assert agent.spans > 0
        assert gateway.core_share <= ONE_CORE_MAX, "the gateway was not held to one CPU"
        assert agent.core_share <= ONE_CORE_MAX, "the agent was not held to one CPU"
        assert dropped == 0, "num_traces too small: traces were dropped before their decision"


def _retries_logged(stack: Any) -> int:
    """Sends to the gateway the agent logged as failed (to be retried)."""
    text = stack.log_path("agent").read_text(errors="replace")
    return text.count("Exporting failed. Will retry")


def _pin_alone(pids: dict[str, int], measured: str, split: CpuSplit) -> None:
    """``measured`` alone on the split's CPU at a raised priority, every other process of the
    stack on the rest at the normal one."""
    for name, pid in pids.items():
        pin_process(pid, split.app if name == measured else split.rest)
        _renice(pid, MEASURED_NICENESS if name == measured else 0)


def _renice(pid: int, niceness: int) -> None:
    """Every thread of ``pid`` at ``niceness``; left as it is where that is not allowed.

    With autogroup scheduling on (Linux's default), a thread's nice value only counts against
    threads of its own session, and the stack starts each process in a session of its own: the
    session's group gets the niceness too, or other sessions keep their share of the CPU.
    """
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(niceness))


def _measure(endpoint: str, metrics_url: str, pid: int, split: CpuSplit, scale: Scale) -> Window:
    """Flood ``endpoint`` and measure the process ``pid`` (whose receiver ``metrics_url``
    counts) over ``scale.capacity_s`` after a warm-up."""
    cpu = CpuTimes(split.app).start()
    flood = SpanFlood(endpoint, checkout_template(TRACES_PER_REQUEST), cpus=split.rest).start()
    try:
        time.sleep(WARMUP_S)
        spans_0, cpu_0, wait_0 = _accepted(metrics_url), cpu_seconds(pid), run_delay_seconds(pid)
        start = time.monotonic()
        time.sleep(scale.capacity_s)
        spans_1, cpu_1, wait_1 = _accepted(metrics_url), cpu_seconds(pid), run_delay_seconds(pid)
        end = time.monotonic()
    finally:
        flood.stop()
        cpu.stop()
    steal = round(100 * cpu.steal_share(start, end), 1)
    return Window(end - start, spans_1 - spans_0, cpu_1 - cpu_0, wait_1 - wait_0, steal)


def _accepted(metrics_url: str) -> float:
    return counter_total(metrics_url, "otelcol_receiver_accepted_spans_total")
