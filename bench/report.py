"""From measured rounds to medians, ratios, target verdicts and the markdown tables.

Ratios and deltas are paired: each setup is compared with the no-telemetry run of the same
round (measured minutes apart, under the same machine load), and the median of those per-round
values is reported with its min-max. ``docs/performance.md`` is rewritten only between its
``<!-- bench:... -->`` markers; the prose around them is kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ENDPOINT_LABELS = {"ping": "/ping", "items": "/items/{id}", "404": "404", "500": "500"}
OURS = ("dist-configure", "dist-instrument")
PRODUCTION = "dist-configure-10pct"
# Each telemetry setup is priced against the hand-wired floor at its own sampling.
FLOOR_OF = {
    "stock": "floor",
    "dist-configure": "floor",
    "dist-instrument": "floor",
    "dist-configure-10pct": "floor-10pct",
    "dist-configure-native": "floor",
    "dist-configure-native-10pct": "floor-10pct",
}
RESULTS_MARKERS = ("<!-- bench:results:start -->", "<!-- bench:results:end -->")
PROFILE_MARKERS = ("<!-- bench:profile:start -->", "<!-- bench:profile:end -->")

Stats = dict[str, float]


def _stats(values: Iterable[float | None]) -> Stats | None:
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    return {
        "median": round(statistics.median(kept), 3),
        "min": round(min(kept), 3),
        "max": round(max(kept), 3),
        "n": len(kept),
    }


def _get(round_: dict[str, Any], path: str) -> float | None:
    value: Any = round_
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, (int, float)) else None


def _metric_paths(rounds: list[dict[str, Any]]) -> list[str]:
    paths = ["startup_ms", "import_ms", "rss_mb", "peak_rss_mb"]
    for round_ in rounds:
        for endpoint in round_.get("http", {}):
            paths += [f"http.{endpoint}.{k}" for k in ("rps", "p50_ms", "p99_ms")]
        for endpoint in round_.get("inproc", {}):
            paths += [f"inproc.{endpoint}.cpu_us", f"inproc.{endpoint}.main_thread_us"]
    return list(dict.fromkeys(paths))


def _paired(
    rounds: list[dict[str, Any]],
    baseline: list[dict[str, Any]],
    path: str,
    combine: Callable[[float, float], float],
) -> Stats | None:
    by_round = {r["round"]: r for r in baseline}
    values = []
    for round_ in rounds:
        base = by_round.get(round_["round"])
        value, reference = _get(round_, path), _get(base, path) if base else None
        if value is not None and reference:
            values.append(combine(value, reference))
    return _stats(values)


def _ratio(value: float, reference: float) -> float:
    return value / reference


def _minus(value: float, reference: float) -> float:
    return value - reference


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Medians per setup, paired ratios/deltas against ``none``, collector-down, targets."""
    setups = results["setups"]
    baseline = setups.get("none", {}).get("rounds", [])
    per_setup: dict[str, Any] = {}
    relative: dict[str, Any] = {}
    for name, data in setups.items():
        rounds = data["rounds"]
        per_setup[name] = {p: _stats(_get(r, p) for r in rounds) for p in _metric_paths(rounds)}
        if name == "none":
            continue
        rel: dict[str, Any] = {}
        for path in _metric_paths(rounds):
            if path.endswith(".rps"):
                rel[f"rps_ratio.{path.split('.')[1]}"] = _paired(rounds, baseline, path, _ratio)
            elif path.startswith("inproc.") and path.endswith(".cpu_us"):
                rel[f"added_cpu_us.{path.split('.')[1]}"] = _paired(rounds, baseline, path, _minus)
            elif path.startswith("inproc.") and path.endswith(".main_thread_us"):
                key = f"added_main_thread_us.{path.split('.')[1]}"
                rel[key] = _paired(rounds, baseline, path, _minus)
        for path, key in (
            ("rss_mb", "rss_delta_mb"),
            ("startup_ms", "startup_delta_ms"),
            ("import_ms", "import_delta_ms"),
        ):
            rel[key] = _paired(rounds, baseline, path, _minus)
        relative[name] = rel
    if "stock" in relative:
        for name in OURS:
            if name in relative:
                relative[name]["stock_over_ours_added_cpu.ping"] = _stock_factor(setups, name)
    for name, floor in FLOOR_OF.items():
        if name in relative and floor in setups:
            for endpoint in ENDPOINT_LABELS:
                factor = _over_floor(setups, name, floor, endpoint)
                if factor is not None:
                    relative[name][f"added_cpu_over_floor.{endpoint}"] = factor
    summary: dict[str, Any] = {
        "setups": per_setup,
        "relative": relative,
        "collector_down": _down(results),
    }
    summary["targets"] = _targets(summary)
    summary["machine"] = _machine(results)
    return summary


def _machine(results: dict[str, Any]) -> dict[str, Stats | None]:
    """How busy the CPUs were during the load runs: was the app alone on its CPU?"""
    config = results["meta"]["config"]
    runs = [
        run
        for data in results["setups"].values()
        for round_ in data["rounds"]
        for run in round_.get("http", {}).values()
    ]
    load_cpu = f"cpu{config['load_cpu']}"
    return {
        # CPU seconds the app got per second of load: below ~0.95, something else ran on its CPU.
        "app_cpu_share": _stats(run.get("app_cpu_s_per_s") for run in runs),
        "load_cpu_busy": _stats(run.get("cpu_busy", {}).get(load_cpu) for run in runs),
        "sink_cpu_share": _stats(run.get("sink_cpu_s_per_s") for run in runs),
    }


def _stock_factor(setups: dict[str, Any], name: str) -> Stats | None:
    """Per round: (stock - none) / (ours - none) added CPU on /ping."""
    return _added_ratio(setups, "stock", name, "ping")


def _over_floor(setups: dict[str, Any], name: str, floor: str, endpoint: str) -> Stats | None:
    """Per round: (ours - none) / (floor - none) added in-process CPU on ``endpoint``."""
    return _added_ratio(setups, name, floor, endpoint)


def _added_ratio(setups: dict[str, Any], top: str, bottom: str, endpoint: str) -> Stats | None:
    """Per round: ``top``'s added in-process CPU over ``bottom``'s (both against ``none``)."""
    path = f"inproc.{endpoint}.cpu_us"

    def by_round(name: str) -> dict[int, float | None]:
        return {r["round"]: _get(r, path) for r in setups[name]["rounds"]}

    none, tops, bottoms = by_round("none"), by_round(top), by_round(bottom)
    values = []
    for round_, t in tops.items():
        n, b = none.get(round_), bottoms.get(round_)
        if n is not None and b is not None and t is not None and b > n:
            values.append((t - n) / (b - n))
    return _stats(values)


def _down(results: dict[str, Any]) -> dict[str, Any]:
    down_rounds = results.get("collector_down", {}).get("rounds", [])
    up_rounds = results["setups"].get("dist-configure", {}).get("rounds", [])
    endpoints = sorted({e for r in down_rounds for e in r.get("http", {})})
    out: dict[str, Any] = {}
    for endpoint in endpoints:
        entry: dict[str, Any] = {}
        for key in ("p50_ms", "p99_ms", "rps"):
            path = f"http.{endpoint}.{key}"
            entry[f"up_{key}"] = _stats(_get(r, path) for r in up_rounds)
            entry[f"down_{key}"] = _stats(_get(r, path) for r in down_rounds)
        entry["p99_ratio"] = _paired(down_rounds, up_rounds, f"http.{endpoint}.p99_ms", _ratio)
        out[endpoint] = entry
    return out


def _target(
    name: str, setup: str, stats: Stats | None, limit: float, *, at_least: bool, unit: str
) -> dict[str, Any]:
    if stats is None:
        return {"target": name, "setup": setup, "value": None, "limit": limit, "met": None}
    value = stats["median"]
    met = value >= limit if at_least else value <= limit
    return {
        "target": name,
        "setup": setup,
        "value": value,
        "spread": [stats["min"], stats["max"]],
        "limit": limit,
        "unit": unit,
        "met": met,
        "missed_by": None if met else round(abs(value - limit), 3),
    }


def _targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for setup in OURS:
        rel = summary["relative"].get(setup)
        if rel is None:
            continue
        rows += [
            _target(
                "DB endpoint throughput ≥ 0.85x",
                setup,
                rel.get("rps_ratio.items"),
                0.85,
                at_least=True,
                unit="x",
            ),
            _target(
                "trivial endpoint throughput ≥ 0.60x",
                setup,
                rel.get("rps_ratio.ping"),
                0.60,
                at_least=True,
                unit="x",
            ),
            _target(
                "added CPU on /ping ≤ 100 µs",
                setup,
                rel.get("added_cpu_us.ping"),
                100,
                at_least=False,
                unit="µs",
            ),
            _target(
                "added CPU on /ping ≥ 3x less than stock",
                setup,
                rel.get("stock_over_ours_added_cpu.ping"),
                3.0,
                at_least=True,
                unit="x",
            ),
            _target(
                "added CPU on /ping ≤ 0.6x the floor's",
                setup,
                rel.get("added_cpu_over_floor.ping"),
                0.6,
                at_least=False,
                unit="x",
            ),
            _target(
                "added CPU on /items ≤ 0.6x the floor's",
                setup,
                rel.get("added_cpu_over_floor.items"),
                0.6,
                at_least=False,
                unit="x",
            ),
            _target("RSS ≤ +20 MB", setup, rel.get("rss_delta_mb"), 20, at_least=False, unit="MB"),
            _target(
                "startup (first 200) ≤ +300 ms",
                setup,
                rel.get("startup_delta_ms"),
                300,
                at_least=False,
                unit="ms",
            ),
            _target(
                "import ≤ +300 ms",
                setup,
                rel.get("import_delta_ms"),
                300,
                at_least=False,
                unit="ms",
            ),
        ]
    production = summary["relative"].get(PRODUCTION)
    if production is not None:
        for endpoint, limit in (("ping", 0.80), ("items", 0.92)):
            rows.append(
                _target(
                    f"{ENDPOINT_LABELS[endpoint]} throughput at 10% sampling ≥ {limit:.2f}x",
                    PRODUCTION,
                    production.get(f"rps_ratio.{endpoint}"),
                    limit,
                    at_least=True,
                    unit="x",
                )
            )
    for endpoint, entry in summary["collector_down"].items():
        rows.append(
            _target(
                f"p99 {ENDPOINT_LABELS[endpoint]} with collector down ≤ +10%",
                "dist-configure",
                entry.get("p99_ratio"),
                1.10,
                at_least=False,
                unit="x",
            )
        )
    return rows


# markdown --------------------------------------------------------------------------------------


def _num(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def _cell(stats: Stats | None, digits: int = 0, suffix: str = "") -> str:
    if stats is None:
        return "—"
    median = _num(stats["median"], digits) + suffix
    if stats["n"] < 2:
        return median
    return f"{median} ({_num(stats['min'], digits)}-{_num(stats['max'], digits)})"


def _signed(stats: Stats | None, digits: int = 0, suffix: str = "") -> str:
    if stats is None:
        return "—"
    return f"{stats['median']:+,.{digits}f}{suffix}"


def _table(summary: dict[str, Any], names: list[str], labels: dict[str, str]) -> list[str]:
    per, rel = summary["setups"], summary["relative"]
    lines = [
        "| | " + " | ".join(labels[n] for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def row(title: str, cells: list[str]) -> None:
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    def added(n: str, key: str, digits: int = 0) -> str:
        return "" if n == "none" else f"; {_signed(rel[n].get(key), digits)}"

    endpoints = [e for e in ENDPOINT_LABELS if any(per[n].get(f"http.{e}.rps") for n in names)]
    for e in endpoints:
        label = ENDPOINT_LABELS[e]
        row(f"{label} req/s", [_cell(per[n].get(f"http.{e}.rps")) for n in names])
        row(
            f"{label} vs none",
            ["1x" if n == "none" else _cell(rel[n].get(f"rps_ratio.{e}"), 2, "x") for n in names],
        )
        row(
            f"{label} p50 / p99 ms",
            [
                " / ".join(_cell(per[n].get(f"http.{e}.{k}"), 2) for k in ("p50_ms", "p99_ms"))
                for n in names
            ],
        )
    inproc = [e for e in ENDPOINT_LABELS if any(per[n].get(f"inproc.{e}.cpu_us") for n in names)]
    for e in inproc:
        row(
            f"CPU µs/request, {ENDPOINT_LABELS[e]} (in-process; added)",
            [
                _cell(per[n].get(f"inproc.{e}.cpu_us")) + added(n, f"added_cpu_us.{e}")
                for n in names
            ],
        )
        if any(rel.get(n, {}).get(f"added_cpu_over_floor.{e}") for n in names):
            row(
                f"added CPU / floor's added, {ENDPOINT_LABELS[e]} (in-process)",
                [_cell(rel.get(n, {}).get(f"added_cpu_over_floor.{e}"), 2, "x") for n in names],
            )
        if e == "ping":
            row(
                "of which on the event-loop thread, /ping (added)",
                [
                    _cell(per[n].get("inproc.ping.main_thread_us"))
                    + added(n, "added_main_thread_us.ping")
                    for n in names
                ],
            )
    for path, delta, title, digits in (
        ("rss_mb", "rss_delta_mb", "RSS after load, MB (added)", 1),
        ("startup_ms", "startup_delta_ms", "start → first 200 on /ping, ms (added)", 0),
        ("import_ms", "import_delta_ms", "start → app imported, ms (added)", 0),
    ):
        row(title, [_cell(per[n].get(path), digits) + added(n, delta, digits) for n in names])
    return lines


def _verdict(row: dict[str, Any]) -> str:
    if row["met"] is None:
        return "not measured"
    digits = 0 if row["unit"] in {"µs", "ms"} else 2 if row["unit"] == "x" else 1
    value = (
        f"{_num(row['value'], digits)}{row['unit'] if row['unit'] == 'x' else ' ' + row['unit']}"
    )
    spread = row.get("spread")
    if spread and spread[0] != spread[1]:
        value += f" ({_num(spread[0], digits)}-{_num(spread[1], digits)})"
    if row["met"]:
        return f"{value}: met"
    unit = "x" if row["unit"] == "x" else " " + row["unit"]
    return f"{value}: **missed** by {_num(row['missed_by'], digits)}{unit}"


def _machine_line(machine: dict[str, Stats | None]) -> str:
    app, load, sink = (machine.get(k) for k in ("app_cpu_share", "load_cpu_busy", "sink_cpu_share"))
    if not app or not load:
        return ""
    return (
        f"During the load runs the app got {app['median']:.2f} CPU-s/s of its CPU (min "
        f"{app['min']:.2f}); the load CPU was {load['median']:.0%} busy (max {load['max']:.0%}), "
        f"the sink using {sink['median'] if sink else 0:.0%} of it."
    )


def results_markdown(results: dict[str, Any]) -> str:
    """The generated part of docs/performance.md: tables of medians, ratios and targets."""
    meta, summary = results["meta"], results["summary"]
    config = meta["config"]
    names = list(results["setups"])
    labels = {n: f"{results['setups'][n]['label']}" for n in names}
    loads = ", ".join(f"{x['round']}: {x['loadavg'][0]}" for x in meta["loadavg"])
    lines = [
        f"Measured {meta['started_at']} ({meta['elapsed_s']:.0f} s): {config['rounds']} "
        "interleaved "
        f"round(s), {config['duration_s']:g} s of load per endpoint after {config['warmup_s']:g} s "
        f"of warm-up, {config['connections']} connections, {meta['load_tool']}; in-process "
        f"{config['inproc_requests']} requests on /ping (40% of that on /items and 404, 20% on "
        f"the 500). App on CPU {config['app_cpu']}, load "
        f"tool + sink on CPU {config['load_cpu']}. 1-minute load average at each round: {loads}."
        + (" **Quick smoke run: numbers are indicative only.**" if config["quick"] else ""),
        "",
        "Medians over rounds, (min-max) when there are several; ratios and added costs are paired "
        "with the no-telemetry run of the same round. " + _machine_line(summary.get("machine", {})),
        "",
        *_table(summary, names, labels),
    ]
    down = summary["collector_down"]
    if down:
        lines += [
            "",
            "Collector down (otel_dist `configure()`; the sink it exported to is stopped after "
            "warm-up, so every export is refused):",
            "",
            "| endpoint | p99 up, ms | p99 down, ms | down / up (paired) | req/s up | req/s down |",
            "|---|---|---|---|---|---|",
        ]
        for endpoint, entry in down.items():
            lines.append(
                f"| {ENDPOINT_LABELS[endpoint]} | {_cell(entry['up_p99_ms'], 2)} | "
                f"{_cell(entry['down_p99_ms'], 2)} | {_cell(entry['p99_ratio'], 2, 'x')} | "
                f"{_cell(entry['up_rps'])} | {_cell(entry['down_rps'])} |"
            )
    targets = summary["targets"]
    if targets:
        columns = list(dict.fromkeys(row["setup"] for row in targets))
        lines += [
            "",
            "Targets:",
            "",
            "| target | " + " | ".join(columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        by_target: dict[str, dict[str, str]] = {}
        for row in targets:
            by_target.setdefault(row["target"], {})[row["setup"]] = _verdict(row)
        for target, cells in by_target.items():
            lines.append(f"| {target} | " + " | ".join(cells.get(s, "—") for s in columns) + " |")
    if meta["errors"]:
        lines += ["", "Errors in this run:", ""] + [
            f"- {e.splitlines()[0]}" for e in meta["errors"]
        ]
    return "\n".join(lines)


_TELEMETRY_CODE = ("src/otel_dist/", "opentelemetry/", "fastapi/telemetry/")


def _telemetry_rows(profile: dict[str, Any], top: int) -> list[dict[str, Any]]:
    rows = profile.get("telemetry_by_cumulative_time") or [
        r for r in profile["by_cumulative_time"] if r["where"].startswith(_TELEMETRY_CODE)
    ]
    return list(rows[:top])


def _function_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| function | calls/request | own µs | cumulative µs |", "|---|---|---|---|"]
    lines += [
        f"| `{r['where']}` | {r['calls_per_request']} | {r['own_us']} | {r['cumulative_us']} |"
        for r in rows
    ]
    return lines


def profile_markdown(results: dict[str, Any], top: int = 15) -> str:
    """Top costs of otel_dist's hot paths from the cProfile runs, µs per request."""
    profiles = results.get("profiles") or {}
    ping = profiles.get("ping", {})
    ours = ping.get("dist-configure")
    if not ours:
        return "No profile in this run."
    none = ping.get("none")
    lines = [
        f"cProfile of {ours['requests']} in-process `GET /ping` calls, timed with the event loop "
        "thread's CPU time (profiler overhead included, so about 2-3x the real cost; exporter "
        f"threads not included): {ours['profiled_us_per_request']} µs/request with otel_dist "
        "`configure()`"
        + (f", {none['profiled_us_per_request']} µs without telemetry." if none else "."),
        "",
        "Telemetry code by cumulative time (µs per request; nested rows overlap):",
        "",
        *_function_table(_telemetry_rows(ours, top)),
        "",
        "All code by own time:",
        "",
        *_function_table(ours["by_own_time"][:top]),
    ]
    none_files = {r["file"]: r["own_us"] for r in (none or {}).get("by_file", [])}
    lines += ["", "Own time per file, µs per request:", ""]
    lines += ["| file | otel_dist configure() | no telemetry |", "|---|---|---|"]
    lines += [
        f"| `{r['file']}` | {r['own_us']} | {none_files.get(r['file'], '-')} |"
        for r in ours["by_file"][:top]
    ]
    for endpoint, title in (("items", "`GET /items/{id}`"), ("500", "the 500 (`GET /fail`)")):
        profile = profiles.get(endpoint, {}).get("dist-configure")
        if not profile:
            continue
        baseline = profiles.get(endpoint, {}).get("none")
        inline = (
            " (sync endpoint run inline on the profiled thread)"
            if profile.get("inline_threadpool")
            else ""
        )
        lines += [
            "",
            f"{title}{inline}: {profile['profiled_us_per_request']} µs/request profiled with "
            "otel_dist"
            + (f", {baseline['profiled_us_per_request']} µs without telemetry" if baseline else "")
            + ". Telemetry code by cumulative time:",
            "",
            *_function_table(_telemetry_rows(profile, 12)),
        ]
    return "\n".join(lines)


def _replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    start, end = markers
    if start not in text or end not in text:
        return text.rstrip("\n") + f"\n\n{start}\n{body}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def update_docs(path: Path, results: dict[str, Any]) -> None:
    """Rewrite the generated sections of ``path`` (created with just them if missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n"
    text = _replace_between(text, RESULTS_MARKERS, results_markdown(results))
    if results.get("profiles"):
        text = _replace_between(text, PROFILE_MARKERS, profile_markdown(results))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def summary_text(results: dict[str, Any]) -> str:
    """A few lines for the terminal: throughput ratios, added CPU and the target verdicts."""
    summary = results["summary"]
    lines = []
    for name, rel in summary["relative"].items():
        parts = [
            f"{ENDPOINT_LABELS[key.split('.')[1]]} {stats['median']:.2f}x"
            for key, stats in rel.items()
            if key.startswith("rps_ratio.") and stats
        ]
        added = rel.get("added_cpu_us.ping")
        if added:
            parts.append(f"+{added['median']:.0f} µs CPU on /ping")
        lines.append(f"  {name}: " + ", ".join(parts))
    for row in summary["targets"]:
        lines.append(f"  [{row['setup']}] {row['target']}: {_verdict(row)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.report [RESULTS] [DOCS]``: re-summarise results, rewrite the docs."""
    parser = argparse.ArgumentParser(prog="python -m bench.report")
    parser.add_argument("results", nargs="?", type=Path, default=Path("bench/results.json"))
    parser.add_argument("docs", nargs="?", type=Path, default=Path("docs/performance.md"))
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    results["summary"] = summarize(results)
    args.results.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    update_docs(args.docs, results)
    print(summary_text(results))


if __name__ == "__main__":
    main()
