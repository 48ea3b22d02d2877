"""Shared parts of the two-tier suite (issue I): its scale, its stack and the figures it reports.

``make scale`` runs it at full scale and ``make scale-ci`` (CI) at a short one; both run the real
binaries: the agent (collector/agent.yaml) routing by trace id onto gateways (collector/config.yaml
+ collector/gateway.yaml), Prometheus, VictoriaLogs and Jaeger v2, and two instrumented services,
the shop and the stock service it calls over httpx.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.figures import Figures, figures_recorder
from support.servers import REPO_ROOT
from support.twotier import SCALES, Scale

SCALE_VARIABLE = "OTEL_DIST_SCALE"
RESULTS_VARIABLE = "OTEL_DIST_SCALE_RESULTS"
DEFAULT_RESULTS = REPO_ROOT / ".scale" / "results.jsonl"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/scale is marked ``scale``, so the other targets leave them out."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.scale)


@pytest.fixture(scope="session")
def scale() -> Scale:
    """The scale named by OTEL_DIST_SCALE (``full`` or ``ci``; ``ci`` when unset)."""
    name = os.environ.get(SCALE_VARIABLE, "ci")
    if name not in SCALES:
        raise pytest.UsageError(f"{SCALE_VARIABLE}={name!r}: expected one of {sorted(SCALES)}")
    return SCALES[name]


@pytest.fixture
def figures(request: pytest.FixtureRequest, scale: Scale) -> Figures:
    """Report this test's figures: printed (``pytest -s`` shows them) and appended as JSON lines
    to .scale/results.jsonl. Recorded before the asserts, so a failing run still reports."""
    return figures_recorder(request.node.nodeid, scale.name, _results_path)


def _results_path() -> Path:
    return Path(os.environ.get(RESULTS_VARIABLE, str(DEFAULT_RESULTS)))
