"""Outages under steady load (issue D, points 1-3): the app serves on, the pipeline loses nothing.

Each test starts its own local stack (stack/run.py on free loopback ports: our collector with its
persistent sending queues, Prometheus, VictoriaLogs and Jaeger v2) and the example shop set up
with ``configure()``, drives the shop at ``scale.load_rps`` with the fixed-rate load of
support/load.py, and breaks one part while the load runs:

- the collector stopped for ``scale.outage_s``, ``scale.outage_cycles`` times, each outage after
  a collector-up window of the same length: the app must not notice (no failed request, p99 of
  the outages and their catch-up within 10 % of p99 of the collector-up windows, memory
  bounded), must count and say once per outage what it dropped, and must export again when the
  collector is back, without a restart. The shop runs on a CPU of its own (``app_cpu``) and
  p99 is pooled over the cycles; at full scale each cycle's outage window and catch-up window
  are also held against that cycle's collector-up window, with a bound that catches a stall
  rather than noise (``Scale.p99_window_ratio_max``).
  A cycle in which the hypervisor took more than 2 % of the app's CPU (steal) is not
  compared, and another runs. The figures say how late the load itself sent requests
  (``load_lag_max_ms``), so that a stall of the test process is not read as the app's;
- the collector SIGKILLed and restarted at once: every span it had accepted is delivered from
  its disk queue, and the SDK's retry (up to OTEL_EXPORTER_OTLP_TIMEOUT, 10 s) delivers the
  spans produced while it was gone;
- the trace store (Jaeger), then the log store (VictoriaLogs), stopped for ``scale.outage_s``:
  the collector's queue holds the data and delivers all of it afterwards.

Every request reads one item: one trace (a server span and a SELECT span) and one "item fetched"
log line. Requests are counted by the trace id their response announces (``traceresponse``)
and looked up through the backends' own HTTP APIs; nothing is sampled away (the collector's tail
sampling keeps 100 % by default).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from support.cpus import CpuSplit, CpuTimes, pin_process, pin_this_thread
from support.load import (
    Load,
    ProcessMemory,
    Sample,
    between,
    describe_failures,
    failures,
    percentile,
)
from support.servers import ServerProcess
from support.stack import (
    Backends,
    found_traces,
    logsql_string,
    stack_pids,
    start_shop,
    stop_stack_process,
)

WARMUP_S = 3.0  # load before any window is measured: connections open, first queries done
RECOVERY_S = 5.0  # load kept up after the broken part is back
# After the collector is back, the SDK's exporter may still wait out its retry backoff (at most
# its 10 s timeout) before the queued batches go: the outage's effect on the app lasts this long.
CATCH_UP_S = 15.0
# Spans of the last requests before an outage are still in the SDK's batch (1 s here) or on the
# wire when the collector stops: they may be lost with the outage, and are counted as dropped.
EXPORT_LAG_S = 3.0
# A cycle in which the hypervisor took more than this share of the app's CPU ("steal") is not
# compared: 6.6% steal in one window gave a 131 ms p99 against 11-17 ms in the others. Which
# cycles that drops depends on the machine, not on the collector, so the comparison stays fair.
STEAL_MAX_PCT = 2.0
# More cycles run until enough are comparable: up to twice as many, and at least four more (a
# clean-clone CI run measured 10.5% and 5.9% steal in its first two 10 s cycles).
MAX_CYCLES_FACTOR = 2
EXTRA_CYCLES_MIN = 4
# From a request to its trace in the backend: the SDK's batch delay (1 s here) and the
# collector exporter's retry backoff (up to 30 s after an outage).
DELIVERY_TIMEOUT_S = 120.0
# Bounded queues bound the memory an outage can cost: at most the span and the log record batch
# queues full (2 x 2048 items, a few KB each in Python) plus the allocator's slack. A leak (an
# unbounded queue, retained failed batches or exceptions) grows past this within a minute.
MEMORY_GROWTH_MAX_MB = 64.0
KILL_RESTART_MAX_S = 5.0  # issue D: the collector is back within 5 s of the SIGKILL
# How long the killed collector stays dead: longer than the SDK's batch delay (1 s), so at least
# one export fails and must be retried, shorter than its retry bound (10 s).
KILL_GAP_S = 2.0
FAILING = "otel-dist: telemetry export failing"
RECOVERED = "otel-dist: telemetry export recovered"
# What the SDK prints per failed attempt or batch; otel-dist folds these into its one line.
SDK_PER_BATCH = ("Transient error", "Failed to export")
# The SDK's self-metrics counting items that failed to export or that a full queue turned
# away: otel.sdk.exporter.<item>.exported and otel.sdk.processor.<item>.processed, with
# error.type. (Its otel.sdk.exporter.operation.duration histogram has error.type too, but counts
# export calls, not items.)
DROPPED_SERIES = (
    '{{__name__=~"otel_sdk_(exporter_.+_exported|processor_.+_processed)_total", '
    'error_type!="", service_name="{service}"}}'
)
LOG_LINE = "item fetched"

T = TypeVar("T")


@dataclass
class Shop:
    """The shop under test: its server, its service name and the one request the load sends."""

    server: ServerProcess
    service: str
    item_id: int
    started_ns: int  # wall clock when it started, to bound log queries

    @property
    def pid(self) -> int:
        """The uvicorn process (the server runs in one process)."""
        return self.server.process.pid

    def read(self, client: httpx.Client, number: int) -> httpx.Response:
        """The load's request: read the one item (a trace of 2 spans and one log line)."""
        return client.get(f"/items/{self.item_id}")

    def output_lines(self) -> list[str]:
        """What the app wrote to stdout and stderr, line by line."""
        return self.server.output().splitlines()


@pytest.fixture
def shop(stack: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Shop]:
    """The shop on ``stack`` under a service name of its own, with one item to read."""
    test = request.node.name.split("[")[0].removeprefix("test_")[:20].replace("_", "-")
    service = f"faults-{test}-{uuid.uuid4().hex[:6]}"
    started_ns = time.time_ns() - 60 * 10**9
    server = start_shop(stack, tmp_path, service)
    try:
        created = httpx.post(
            f"{server.base_url}/items", json={"name": "teapot", "price_cents": 100}, timeout=10
        )
        assert created.status_code == 201, created.text
        yield Shop(server, service, int(created.json()["id"]), started_ns)
    finally:
        server.stop()


def _settle(check: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    """Poll ``check`` until ``done(value)`` or ``timeout``; the last value either way.

    Unlike ``eventually`` this never fails: the test records its figures from the value, then
    asserts.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
            continue
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(2)


def _trace_ids(samples: Sequence[Sample]) -> set[str]:
    return {s.trace_id for s in samples if s.trace_id}


def _wait_for_traces(
    backends: Backends, shop: Shop, samples: Sequence[Sample], timeout: float = DELIVERY_TIMEOUT_S
) -> dict[str, int]:
    """Span count per trace the backend has, of the traces of ``samples``, once all arrived
    (or when ``timeout`` ran out)."""
    wanted = _trace_ids(samples)
    return _settle(
        lambda: found_traces(backends, shop.service, wanted),
        lambda found: found.keys() >= wanted,
        timeout,
    )


def _log_trace_ids(backends: Backends, shop: Shop) -> list[str]:
    """The trace id of every "item fetched" line in VictoriaLogs for the shop, repeats too."""
    entries = backends.logsql(
        f"service.name:={logsql_string(shop.service)} AND {logsql_string(LOG_LINE)}"
        " | fields trace_id",
        start_ns=shop.started_ns,
        end_ns=time.time_ns() + 60 * 10**9,
    )
    return [entry.get("trace_id", "") for entry in entries]


def _wait_for_log_lines(
    backends: Backends, shop: Shop, samples: Sequence[Sample], timeout: float = DELIVERY_TIMEOUT_S
) -> list[str]:
    wanted = _trace_ids(samples)
    return _settle(lambda: _log_trace_ids(backends, shop), lambda ids: set(ids) >= wanted, timeout)


def _dropped_by_metric(backends: Backends, shop: Shop) -> dict[str, int]:
    """Items the SDK's self-metrics count as dropped, per kind: ``span``, ``log``, ..."""
    totals: dict[str, int] = {}
    for series in backends.promql(DROPPED_SERIES.format(service=shop.service)):
        kind = series["metric"]["__name__"].split("_")[3]  # otel_sdk_exporter_<kind>_...
        totals[kind] = totals.get(kind, 0) + round(float(series["value"][1]))
    return totals


def _queue_size(stack: Any, exporter: str) -> int:
    """Items waiting in one of the collector's sending queues (its own metrics)."""
    text = httpx.get(stack.collector_metrics_url, timeout=5).text
    for line in text.splitlines():
        if line.startswith("otelcol_exporter_queue_size{") and f'exporter="{exporter}"' in line:
            return round(float(line.rsplit(" ", 1)[1]))
    raise ValueError(f"no otelcol_exporter_queue_size for {exporter}")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _mb(size: int) -> float:
    return round(size / 2**20, 1)


@dataclass(frozen=True)
class OutageCycle:
    """One cycle of the collector-down test, in ``time.monotonic()`` seconds: the collector up
    for a window, then down for as long, then back with its catch-up."""

    up_start: float
    down_start: float  # the collector had exited; the up window ends here
    back: float  # the collector restarted
    settled: float  # ``CATCH_UP_S`` after ``back``: the outage's after-effects are over
    steal_pct: float  # the most the hypervisor took of the app's CPU in either window, in %

    @property
    def comparable(self) -> bool:
        """Whether the machine left the app its CPU in both windows."""
        return self.steal_pct <= STEAL_MAX_PCT

    def up(self, samples: Sequence[Sample]) -> list[Sample]:
        """The requests of the collector-up window."""
        return between(samples, self.up_start, self.down_start)

    def outage(self, samples: Sequence[Sample]) -> list[Sample]:
        """The requests of the outage and of the catch-up export after it."""
        return between(samples, self.down_start, self.settled)

    def down(self, samples: Sequence[Sample]) -> list[Sample]:
        """The requests while the collector was gone."""
        return between(samples, self.down_start, self.back)

    def catch_up(self, samples: Sequence[Sample]) -> list[Sample]:
        """The requests after the collector was back, while the SDK caught up."""
        return between(samples, self.back, self.settled)

    def exported_late_or_never(self, sample: Sample) -> bool:
        """Whether ``sample``'s telemetry was due to leave while the collector was gone."""
        return self.down_start - EXPORT_LAG_S <= sample.due < self.back


@pytest.fixture
def app_cpu(stack: Any, shop: Shop) -> Iterator[CpuSplit | None]:
    """The shop on a CPU of its own, the stack and this test's main thread on the others.

    Collectors and backends run on other machines in a deployment; here their bursts would
    land in the shop's tail latency. A collector restarted by this thread inherits its CPUs.
    None on a one-CPU machine, where nothing is pinned.
    """
    split = CpuSplit.of_this_machine()
    if split is None:
        yield None
        return
    before = os.sched_getaffinity(0)
    for pid in stack_pids(stack).values():
        pin_process(pid, split.rest)
    pin_this_thread(split.rest)
    pin_process(shop.pid, split.app)
    try:
        yield split
    finally:
        pin_this_thread(before)


def _p99_ms(samples: Sequence[Sample]) -> float:
    return _ms(percentile([s.latency_s for s in samples], 99))


def _lag_ms(samples: Sequence[Sample]) -> float:
    """How late the load itself sent the latest request: its own stall, not the app's."""
    return _ms(max((s.lag_s for s in samples), default=0.0))


def _windows_over(
    cycles: Sequence[OutageCycle], samples: Sequence[Sample], ratio: float
) -> list[str]:
    """Each cycle's outage or catch-up window whose p99 exceeds ``ratio`` x its up window's."""
    over = []
    for number, cycle in enumerate(cycles):
        up = _p99_ms(cycle.up(samples))
        for name, window in (("down", cycle.down), ("catch-up", cycle.catch_up)):
            p99 = _p99_ms(window(samples))
            if p99 > ratio * up:
                over.append(f"cycle {number} {name}: p99 {p99} ms vs up {up} ms")
    return over


def _steal_pct(cpu: CpuTimes | None, *windows: tuple[float, float]) -> float:
    """The largest share of the app's CPU the hypervisor took in one of ``windows``, in %."""
    if cpu is None:
        return 0.0
    return round(max(100 * cpu.steal_share(start, end) for start, end in windows), 1)


def test_collector_down_app_serves_on_counts_drops_and_resumes(
    stack: Any,
    backends: Backends,
    shop: Shop,
    app_cpu: CpuSplit | None,
    scale: Any,
    figures: Callable[..., None],
) -> None:
    # The load shares the app's CPU: on the stack's, its bursts would delay sending, and a
    # request sent late counts as a slow one (latency is measured from when it was due).
    load_cpus = app_cpu.app if app_cpu else None
    cpu = CpuTimes(app_cpu.app).start() if app_cpu else None
    memory = ProcessMemory(shop.pid).start()
    load = Load(shop.server.base_url, scale.load_rps, shop.read, cpus=load_cpus).start()
    cycles: list[OutageCycle] = []
    max_cycles = max(
        MAX_CYCLES_FACTOR * scale.outage_cycles, scale.outage_cycles + EXTRA_CYCLES_MIN
    )
    try:
        time.sleep(CATCH_UP_S)  # the same settling time before the first window as after an outage
        rss_before = memory.rss_bytes()
        while sum(c.comparable for c in cycles) < scale.outage_cycles and len(cycles) < max_cycles:
            up_start = time.monotonic()
            time.sleep(scale.outage_s)
            down_start = stop_stack_process(stack, "otelcol")
            time.sleep(max(0.0, down_start + scale.outage_s - time.monotonic()))
            stack.restart("otelcol")
            back = time.monotonic()
            time.sleep(CATCH_UP_S)
            settled = time.monotonic()
            steal = _steal_pct(cpu, (up_start, down_start), (down_start, settled))
            cycles.append(OutageCycle(up_start, down_start, back, settled, steal))
    finally:
        samples = load.stop()
        memory.stop()
        if cpu is not None:
            cpu.stop()
    rss_peak = max(memory.peak(c.down_start, c.settled) for c in cycles)
    rss_after = memory.rss_bytes()

    compared = [c for c in cycles if c.comparable]
    if not compared and scale.compare_noisy_cycles:
        compared = cycles
    up = [s for c in compared for s in c.up(samples)]
    outage = [s for c in compared for s in c.outage(samples)]
    p99_up, p99_outage = (_p99_ms(up), _p99_ms(outage)) if compared else (0.0, 0.0)
    # Export resumes after each outage without a restart: every request but those whose
    # telemetry was due to leave during an outage must be in the backends.
    deliverable = [s for s in samples if not any(c.exported_late_or_never(s) for c in cycles)]
    recovered = _settle(
        lambda: [line for line in shop.output_lines() if line.startswith(RECOVERED)],
        lambda found: len(found) >= len(cycles),
        30,
    )
    # The exports after recovery carry the cumulative counts, failures included.
    dropped = _settle(lambda: _dropped_by_metric(backends, shop), lambda d: "span" in d, 60)
    found_deliverable = _wait_for_traces(backends, shop, deliverable)
    found = found_traces(backends, shop.service, _trace_ids(samples))
    log_ids = set(_log_trace_ids(backends, shop))
    lines = shop.output_lines()
    failing = [line for line in lines if line.startswith(FAILING)]
    # The SDK's own per-batch lines (otel-dist's summary quotes one as its reason: not counted).
    sdk_noise = [
        line
        for line in lines
        if any(text in line for text in SDK_PER_BATCH) and not line.startswith("otel-dist:")
    ]
    spans_per_trace = max(found.values(), default=0)
    spans_lost = sum(spans_per_trace - found.get(s.trace_id, 0) for s in samples)
    lines_lost = len(_trace_ids(samples) - log_ids)
    failing_allowed = sum(1 + int((c.back - c.down_start) // 60) for c in cycles)
    figures(
        f"collector down {scale.outage_s:g} s x{scale.outage_cycles} under {scale.load_rps} req/s",
        requests=len(samples),
        failed=len(failures(samples)),
        p99_up_ms=p99_up,
        p99_outage_ms=p99_outage,
        p99_ratio=round(p99_outage / p99_up, 3) if compared else "-",
        cycles_run=len(cycles),
        cycles_compared=len(compared),
        steal_pct=[c.steal_pct for c in cycles],
        p99_up_windows_ms=[_p99_ms(c.up(samples)) for c in cycles],
        p99_down_windows_ms=[_p99_ms(c.down(samples)) for c in cycles],
        p99_catch_up_windows_ms=[_p99_ms(c.catch_up(samples)) for c in cycles],
        load_lag_max_ms=[_lag_ms(between(samples, c.up_start, c.settled)) for c in cycles],
        samples_up=len(up),
        samples_outage=len(outage),
        rss_before_mb=_mb(rss_before),
        rss_peak_mb=_mb(rss_peak),
        rss_after_mb=_mb(rss_after),
        spans_lost=spans_lost,
        spans_dropped_reported=dropped.get("span", 0),
        log_lines_lost=lines_lost,
        log_records_dropped_reported=dropped.get("log", 0),
        failing_lines=len(failing),
        recovered_lines=len(recovered),
        sdk_per_batch_lines=len(sdk_noise),
        traces_deliverable_found=f"{len(found_deliverable)}/{len(_trace_ids(deliverable))}",
    )
    assert not failures(samples), describe_failures(samples)
    assert len(compared) >= scale.outage_cycles, (
        f"only {len(compared)} of {len(cycles)} cycles had at most {STEAL_MAX_PCT}% steal on "
        "the app's CPU: the machine was too busy to compare p99"
    )
    assert p99_outage <= scale.p99_ratio_max * p99_up, (p99_outage, p99_up)
    if scale.p99_window_ratio_max is not None:
        assert _windows_over(compared, samples, scale.p99_window_ratio_max) == []
    assert rss_peak - rss_before <= MEMORY_GROWTH_MAX_MB * 2**20
    assert rss_after - rss_before <= MEMORY_GROWTH_MAX_MB * 2**20
    # Dropped telemetry is counted: something was dropped, and every span and log line missing
    # from the backends is in the count.
    assert dropped.get("span", 0) > 0, f"no dropped spans counted in {DROPPED_SERIES}"
    assert spans_lost <= dropped.get("span", 0)
    assert lines_lost <= dropped.get("log", 0)
    # One line when exports start failing, then at most one per 60 s while they keep failing;
    # one when they succeed again.
    assert len(cycles) <= len(failing) <= failing_allowed, failing
    assert len(recovered) == len(cycles), recovered
    assert sdk_noise == [], sdk_noise[:5]
    missing = _trace_ids(deliverable) - found_deliverable.keys()
    assert not missing, f"{len(missing)} traces of requests outside the outages missing"


def test_collector_sigkill_restart_loses_no_accepted_span(
    stack: Any, backends: Backends, shop: Shop, scale: Any, figures: Callable[..., None]
) -> None:
    load = Load(shop.server.base_url, scale.load_rps, shop.read).start()
    try:
        time.sleep(WARMUP_S)
        reference = _wait_for_traces(backends, shop, load.samples()[:1], timeout=60)
        # Spans in every stage at the kill: in the SDK's batch, in the collector's pipeline, in
        # its disk queue. (Tail sampling, opt-in, would hold them in memory: see config.yaml.)
        time.sleep(scale.outage_s)
        killed = time.monotonic()
        stop_stack_process(stack, "otelcol", signal.SIGKILL)
        time.sleep(KILL_GAP_S)
        stack.restart("otelcol")
        back = time.monotonic()
        time.sleep(scale.outage_s)
    finally:
        samples = load.stop()
    spans_per_trace = max(reference.values(), default=0)
    wanted = _trace_ids(samples)
    # The backends stay up here: the SDK's batch delay and its retry (at most 10 s) are all a
    # delivery can take.
    found = _wait_for_traces(backends, shop, samples, timeout=60)
    log_ids = _wait_for_log_lines(backends, shop, samples, timeout=30)
    lost = [s for s in samples if s.trace_id not in found]
    partial = [t for t, n in found.items() if n < spans_per_trace]
    before_kill = [s for s in lost if s.due < killed]
    figures(
        f"collector SIGKILL, back in {back - killed:.1f} s, under {scale.load_rps} req/s",
        requests=len(samples),
        failed=len(failures(samples)),
        restart_s=round(back - killed, 2),
        traces_expected=len(wanted),
        traces_found=len(found),
        spans_expected=spans_per_trace * len(wanted),
        spans_found=sum(min(n, spans_per_trace) for n in found.values()),
        spans_duplicated=sum(max(0, n - spans_per_trace) for n in found.values()),
        loss=len(lost) + len(partial),
        lost_accepted_before_kill=len(before_kill),
        lost_due_s_before_kill=(
            f"{min(killed - s.due for s in before_kill):.1f}..."
            f"{max(killed - s.due for s in before_kill):.1f}"
            if before_kill
            else "-"
        ),
        lost_in_gap=len([s for s in lost if killed <= s.due < back]),
        lost_after=len([s for s in lost if s.due >= back]),
        log_lines_expected=len(wanted),
        log_lines_missing=len(wanted - set(log_ids)),
        failing_lines=len([line for line in shop.output_lines() if line.startswith(FAILING)]),
    )
    assert spans_per_trace >= 2, reference
    assert not failures(samples), describe_failures(samples)
    assert back - killed <= KILL_RESTART_MAX_S
    assert lost == [], f"{len(lost)} of {len(wanted)} traces never reached the trace backend"
    assert partial == []
    assert wanted <= set(log_ids), f"{len(wanted - set(log_ids))} log lines missing"


# The stack's process and the collector exporter that feeds it, per backend.
BACKENDS = {
    "trace backend": ("jaeger", "otlp_grpc/jaeger"),
    "log backend": ("victorialogs", "otlp_http/victorialogs"),
}


@pytest.mark.parametrize("broken", list(BACKENDS))
def test_backend_down_collector_queue_delivers_everything_after(
    broken: str,
    stack: Any,
    backends: Backends,
    shop: Shop,
    scale: Any,
    figures: Callable[..., None],
) -> None:
    name, exporter = BACKENDS[broken]
    # Jaeger keeps traces in memory only: a restart forgets what it had. So on Jaeger the
    # traces of the first requests are counted before the outage, the backend goes down before
    # the load starts, and after it the traces sent since must all be there. VictoriaLogs keeps
    # what it stored on disk: there the load is already running when the backend goes, and every
    # request's trace and log line must be there after.
    durable = name != "jaeger"
    with Load(shop.server.base_url, scale.load_rps, shop.read) as warmup:
        time.sleep(WARMUP_S)
    before = warmup.samples()
    delivered_before = _wait_for_traces(backends, shop, before)
    logged_before = _wait_for_log_lines(backends, shop, before)
    queued_peak = 0
    load = Load(shop.server.base_url, scale.load_rps, shop.read)
    try:
        if durable:
            load.start()
            time.sleep(WARMUP_S)
        gone = stop_stack_process(stack, name)
        if not durable:
            load.start()
        while time.monotonic() < gone + scale.outage_s:
            queued_peak = max(queued_peak, _queue_size(stack, exporter))
            time.sleep(0.5)
        stack.restart(name)
        back = time.monotonic()
        time.sleep(RECOVERY_S)
    finally:
        samples = load.stop()
    expected_traces = [*before, *samples] if durable else samples
    found = _wait_for_traces(backends, shop, expected_traces)
    log_ids = _wait_for_log_lines(backends, shop, [*before, *samples])
    wanted_traces = _trace_ids(expected_traces)
    wanted_lines = _trace_ids([*before, *samples])
    during = between(samples, gone, back)
    figures(
        f"{name} down {scale.outage_s:g} s under {scale.load_rps} req/s",
        requests=len(before) + len(samples),
        requests_during_outage=len(during),
        collector_queue_peak=queued_peak,
        failed=len(failures([*before, *samples])),
        traces_delivered_before=f"{len(delivered_before)}/{len(_trace_ids(before))}",
        traces_expected_after=len(wanted_traces),
        traces_found_after=len(found.keys() & wanted_traces),
        trace_loss=len(wanted_traces - found.keys()),
        log_lines_before=f"{len(set(logged_before) & _trace_ids(before))}/{len(before)}",
        log_lines_expected=len(wanted_lines),
        log_lines_found=len([t for t in log_ids if t in wanted_lines]),
        log_loss=len(wanted_lines - set(log_ids)),
        log_lines_duplicated=len(log_ids) - len(set(log_ids)),
    )
    assert not failures([*before, *samples]), describe_failures([*before, *samples])
    assert delivered_before.keys() >= _trace_ids(before)
    assert set(logged_before) >= _trace_ids(before)
    assert during, "no request was sent during the outage"
    assert queued_peak > 0, f"nothing waited in the collector's {exporter} queue"
    assert wanted_traces <= found.keys(), f"{len(wanted_traces - found.keys())} traces missing"
    assert wanted_lines <= set(log_ids), f"{len(wanted_lines - set(log_ids))} log lines missing"
