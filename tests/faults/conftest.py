"""Shared parts of the fault suite (issue D): its scale and the figures each test reports.

``make faults`` runs the suite at full scale (60 s outages, 10,000 hostile requests) and renders
the figures into the README's Reliability table; CI runs ``make faults-ci``, the same tests with
shorter outages and fewer requests, which still fail on any loss, leak or 5xx.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.figures import Figures, append_line, figures_recorder
from support.servers import REPO_ROOT
from support.stack import Backends, local_stack

SCALE_VARIABLE = "OTEL_DIST_FAULTS"
RESULTS_VARIABLE = "OTEL_DIST_FAULTS_RESULTS"
DEFAULT_RESULTS = REPO_ROOT / ".faults" / "results.jsonl"


@dataclass(frozen=True)
class Scale:
    """How hard the suite pushes: ``full`` for ``make faults``, ``ci`` for CI's short run."""

    name: str
    outage_s: float  # how long the collector / a backend stays down
    outage_cycles: int  # collector-up/collector-down window pairs in the p99 comparison
    hostile_requests: int  # generated hostile requests (hypothesis examples)
    unmatched_paths: int  # distinct unmatched paths sent to check route cardinality
    load_rps: int  # steady request rate during outages
    workers: int  # workers for the multi-process checks
    worker_requests: int = 200  # requests spread over those workers
    sigterm_load_s: float = 3  # how long the load runs before SIGTERM
    # p99 with the collector down (and catching up) over p99 with it up, each pooled over
    # ``outage_cycles`` windows. Issue D's bound is 1.10 and ``make faults`` holds it. CI's one
    # 10 s cycle gives p99 from ~300 samples, which moves by ±50% between two windows where
    # nothing changes on a shared 2-core machine; there the bound catches a request path that
    # waits on the exporter (seconds per request), not noise.
    p99_ratio_max: float = 1.10
    # Each cycle's own windows too: its outage and its catch-up against its collector-up window
    # (issue G). A 15 s catch-up window's p99 is its 8th slowest request at 50 req/s, so one
    # pause of the app or of the load decides it where the pooled p99 hides it: the 1.66 s
    # catch-up window of issue G was 130x its cycle's collector-up p99, the full collections
    # fixed before it 8x. On a busy 2-core host the windows of one cycle differed by up to 1.9x
    # with nothing stalling (other processes on the app's CPU); this bound catches a
    # stall, not that noise; the 1.10 target stays on the pooled ratio. None: pooled only (CI's
    # single 10 s cycle, where any 100 ms hiccup of a neighbour would decide a 15 s window).
    p99_window_ratio_max: float | None = 3.0
    # When no cycle had the app's CPU to itself (see test_outages.STEAL_MAX_PCT): fail as too
    # busy to compare (``make faults``), or compare them all against the loose CI bound, so that
    # a busy CI host still catches an exporter that blocks requests.
    compare_noisy_cycles: bool = False


SCALES = {
    "full": Scale(
        "full",
        outage_s=60,
        outage_cycles=4,
        hostile_requests=10_000,
        unmatched_paths=10_000,
        load_rps=50,
        workers=4,
        worker_requests=1_000,
        sigterm_load_s=10,
    ),
    "ci": Scale(
        "ci",
        outage_s=10,
        outage_cycles=1,
        hostile_requests=1_500,
        unmatched_paths=1_000,
        load_rps=30,
        workers=4,
        p99_ratio_max=2.0,
        p99_window_ratio_max=None,
        compare_noisy_cycles=True,
    ),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/faults is marked ``faults``, so ``make unit`` leaves them out."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.faults)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Record each fault test's outcome next to its figures, so the table says pass or fail."""
    report = yield
    if call.when == "call" and Path(__file__).parent in item.path.parents:
        append_line(_results_path(), {"test": item.nodeid, "outcome": report.outcome})
    return report


@pytest.fixture(scope="session")
def scale() -> Scale:
    """The scale named by OTEL_DIST_FAULTS (``full`` or ``ci``; ``ci`` when unset)."""
    name = os.environ.get(SCALE_VARIABLE, "ci")
    if name not in SCALES:
        raise pytest.UsageError(f"{SCALE_VARIABLE}={name!r}: expected one of {sorted(SCALES)}")
    return SCALES[name]


def _results_path() -> Path:
    return Path(os.environ.get(RESULTS_VARIABLE, str(DEFAULT_RESULTS)))


@pytest.fixture
def figures(request: pytest.FixtureRequest, scale: Scale) -> Figures:
    """Report this test's figures: printed (``pytest -s`` shows them) and appended to the results.

    Call it with the check's one-line description and its figures as keywords, for example
    ``figures("collector down 60 s", requests=3000, failed=0, p99_ratio=1.03)``. Record figures
    *before* asserting on them, so a failing run still reports what it measured.
    """
    return figures_recorder(request.node.nodeid, scale.name, _results_path)


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh local stack for this test alone; stopped at teardown.

    Indirect parameters, if any, are collector variables (``TAIL_SAMPLING_PERCENT``...).
    """
    collector_env: dict[str, str] = getattr(request, "param", {})
    with local_stack(tmp_path / "stack", **collector_env) as running:
        yield running


@pytest.fixture
def backends(stack: Any) -> Iterator[Backends]:
    """The stack's backends' HTTP APIs: Prometheus, Jaeger and VictoriaLogs."""
    result = Backends(stack.prometheus_url, stack.jaeger_url, stack.victorialogs_url)
    yield result
    result.client.close()
