"""The benchmark's quick mode end to end, so ``make bench`` cannot rot between full runs.

Runs ``python -m bench.run --quick`` (every setup, one short round: the stock venv, the load tool,
the sink, uvicorn, the in-process loop) and checks that the JSON it writes has every setup with
sane numbers. The first run creates ``.bench/venv-stock-3.X``. The load tool is the pinned wrk that
``make bench-tools`` installs before the tests (``make integration`` does): the test itself never
installs one (``--no-install``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The wrk that make bench-tools installs (Makefile WRK_VERSION).
WRK_VERSION = "4.1.0"
SETUPS = (
    "none",
    "stock",
    "floor",
    "dist-instrument",
    "dist-configure",
    "floor-10pct",
    "dist-configure-10pct",
    "dist-configure-native",
    "dist-configure-native-10pct",
)
TELEMETRY_SETUPS = SETUPS[1:]
FLOOR_PRICED = (
    "dist-configure",
    "dist-instrument",
    "dist-configure-10pct",
    "dist-configure-native",
    "dist-configure-native-10pct",
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.run", "--quick", "--load-tool", "wrk", "--no-install"),
            *("--output", str(out), "--docs", "none"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return json.loads(out.read_text(encoding="utf-8"))


def test_quick_bench_uses_the_pinned_load_tool(quick_results: dict) -> None:
    # wrk names itself with its package version: "wrk debian/4.1.0-3+b2 [epoll]".
    load_tool = quick_results["meta"]["load_tool"]
    assert load_tool.startswith("wrk ")
    assert WRK_VERSION in load_tool


def test_quick_bench_reports_every_setup_without_errors(quick_results: dict) -> None:
    assert set(quick_results["setups"]) == set(SETUPS)
    assert quick_results["meta"]["errors"] == []
    for name in SETUPS:
        assert len(quick_results["setups"][name]["rounds"]) == 1, name


def test_quick_bench_numbers_are_sane(quick_results: dict) -> None:
    for name in SETUPS:
        measured = quick_results["setups"][name]["rounds"][0]
        for endpoint in ("ping", "items"):
            http = measured["http"][endpoint]
            assert http["rps"] > 10, (name, endpoint, http)
            assert 0 < http["p50_ms"] <= http["p99_ms"] < 10_000, (name, endpoint, http)
            assert http["non_2xx"] == 0
        for endpoint in ("ping", "items", "404", "500"):
            assert 1 < measured["inproc"][endpoint]["cpu_us"] < 1_000_000, (name, endpoint)
        assert 10 < measured["rss_mb"] < 2_000
        assert 0 < measured["startup_ms"] < 60_000
        assert 0 < measured["import_ms"] < 60_000


def test_quick_bench_prices_otel_dist_against_the_floor(quick_results: dict) -> None:
    relative = quick_results["summary"]["relative"]
    for name in FLOOR_PRICED:
        for endpoint in ("ping", "items"):
            factor = relative[name].get(f"added_cpu_over_floor.{endpoint}")
            assert factor is not None, f"{name} /{endpoint}: the floor added no CPU over none"
            assert 0 < factor["median"] < 100, (name, endpoint, factor)
    targets = {(row["target"], row["setup"]) for row in quick_results["summary"]["targets"]}
    assert ("added CPU on /ping ≤ 0.6x the floor's", "dist-configure") in targets
    assert ("/ping throughput at 10% sampling ≥ 0.80x", "dist-configure-10pct") in targets


def test_quick_bench_telemetry_reaches_the_sink_only_from_telemetry_setups(
    quick_results: dict,
) -> None:
    assert not any(quick_results["setups"]["none"]["rounds"][0]["sink_http"].values())
    for name in TELEMETRY_SETUPS:
        measured = quick_results["setups"][name]["rounds"][0]
        assert measured["sink_http"]["traces"] > 0, name
        assert measured["sink_inproc"]["traces"] > 0, name


def test_quick_bench_summarises_ratios_targets_and_collector_down(quick_results: dict) -> None:
    summary = quick_results["summary"]
    for name in TELEMETRY_SETUPS:
        ratio = summary["relative"][name]["rps_ratio.ping"]["median"]
        assert 0 < ratio < 2, name
    assert quick_results["collector_down"]["rounds"]
    assert summary["collector_down"]["items"]["p99_ratio"]["median"] > 0
    targets = {(row["setup"], row["target"]) for row in summary["targets"]}
    assert ("dist-configure", "added CPU on /ping ≤ 100 µs") in targets
