"""A CPU of its own for the app under a latency test, and what the hypervisor took from it.

On a small shared machine the app's tail latency moves with everything else that runs: the
collector, Prometheus, VictoriaLogs and Jaeger (Go processes with their own garbage collectors
and compactions), and the virtual machine's hypervisor, which takes the CPU away for other guests
("steal" in /proc/stat). ``CpuSplit`` puts the app on the last CPU and everything else on the
rest, as a deployment would run the collector and backends on other machines; ``CpuTimes`` samples
the app CPU's counters so a test can report the steal in each window it measures.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from support.sampling import Readings

# /proc/stat's per-CPU columns after the name: user nice system idle iowait irq softirq steal ...
_STEAL = 7


@dataclass(frozen=True)
class CpuSplit:
    """The app's CPUs and everyone else's, disjoint."""

    app: frozenset[int]
    rest: frozenset[int]

    @staticmethod
    def of_this_machine() -> CpuSplit | None:
        """The last CPU this process may use for the app, the others for the rest; None with one
        CPU (there is nothing to split)."""
        usable = sorted(os.sched_getaffinity(0))
        if len(usable) < 2:
            return None
        return CpuSplit(frozenset(usable[-1:]), frozenset(usable[:-1]))


def pin_process(pid: int, cpus: Iterable[int]) -> None:
    """Run every thread of ``pid`` on ``cpus``; threads it starts later inherit it.

    ``os.sched_setaffinity(pid)`` moves only the main thread: the SDK's export threads and a Go
    runtime's threads are tasks of their own.
    """
    allowed = set(cpus)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), allowed)
        except ProcessLookupError:  # the thread ended meanwhile
            continue


def pin_this_thread(cpus: Iterable[int]) -> None:
    """Run the calling thread on ``cpus`` (on Linux, pid 0 means the calling thread)."""
    os.sched_setaffinity(0, set(cpus))


@dataclass
class CpuTimes:
    """Samples the /proc/stat counters of ``cpus`` every ``every_s`` in a thread."""

    cpus: frozenset[int]
    every_s: float = 0.5
    _readings: Readings[list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self._readings = Readings(self._read, self.every_s, "cpu-times")

    def start(self) -> CpuTimes:
        """Start sampling."""
        self._readings.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._readings.stop()

    def steal_share(self, start: float, end: float) -> float:
        """The share of the CPUs' time in [start, end] the hypervisor took; 0 with fewer than
        two readings in the window."""
        inside = self._readings.between(start, end)
        if len(inside) < 2:
            return 0.0
        delta = [last - first for first, last in zip(inside[0], inside[-1], strict=True)]
        total = sum(delta)
        return delta[_STEAL] / total if total else 0.0

    def _read(self) -> list[int]:
        summed: list[int] = []
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in self.cpus:
                ticks = [int(v) for v in values]
                summed = [a + b for a, b in zip(summed, ticks, strict=True)] if summed else ticks
        return summed
