"""Which part of otel_dist costs what: the in-process loop with one feature switched off at a time.

``python -m bench.ablate [--repeats 3] [--requests 5000]`` runs ``bench.inproc`` for
``dist-configure`` in several variants that differ only in environment variables (each signal's
exporter set to ``none``, the response trace headers off, runtime metrics off, scrubbing off),
interleaved, and prints the median CPU µs per request next to ``none`` and the full setup. The
difference to the full setup is what that feature costs on the request path. Needs no source
change; the variants are the documented settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from bench.envs import BENCH_DIR, ROOT, main_bin
from bench.procs import SinkProcess, pinned, run_python
from bench.setups import base_env, make_setup

VARIANTS: dict[str, dict[str, str]] = {
    "full": {},
    "traces exporter none": {"OTEL_TRACES_EXPORTER": "none"},
    "metrics exporter none": {"OTEL_METRICS_EXPORTER": "none"},
    "logs exporter none": {"OTEL_LOGS_EXPORTER": "none"},
    "no response trace headers": {"OTEL_DIST_RESPONSE_TRACE_HEADERS": "false"},
    "no runtime metrics": {"OTEL_DIST_RUNTIME_METRICS": "false"},
    "no scrubbing": {"OTEL_DIST_SCRUB": "false"},
    "contrib middleware": {"OTEL_DIST_HTTP_INSTRUMENTATION": "contrib"},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ablate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--endpoints", default="ping,items")
    args = parser.parse_args(argv)
    work = BENCH_DIR / "work" / "ablate"
    (work / "db").mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    app_cpu = cpus[0] if len(cpus) > 1 else None
    results: dict[str, dict[str, list[float]]] = {}
    with SinkProcess(sys.executable, base_env(ROOT, main_bin()), ROOT, cpus[-1]) as sink:
        setups = {
            name: make_setup(
                name, root=ROOT, main_bin=main_bin(), stock_bin=main_bin(), endpoint=sink.endpoint
            )
            for name in ("none", "dist-configure")
        }
        runs: list[tuple[str, str, dict[str, str]]] = [("none", "none", {})] + [
            (label, "dist-configure", env) for label, env in VARIANTS.items()
        ]
        for _ in range(args.repeats):
            for label, name, extra in runs:
                out = work / "result.json"
                argv_ = setups[name].python_argv(
                    "-m", "bench.inproc", "--requests", str(args.requests),
                    "--endpoints", args.endpoints, "--out", str(out),
                )  # fmt: skip
                env = dict(setups[name].env, BENCH_DB_PATH=str(work / "db" / "ablate.db"), **extra)
                run_python(pinned(argv_, app_cpu), env, ROOT, work / "run.log", timeout=600)
                endpoints = json.loads(out.read_text(encoding="utf-8"))["endpoints"]
                for endpoint, values in endpoints.items():
                    results.setdefault(label, {}).setdefault(endpoint, []).append(values["cpu_us"])
    names = args.endpoints.split(",")
    full = {e: statistics.median(results["full"][e]) for e in names}
    print("| variant | " + " | ".join(f"{e} CPU µs (vs full)" for e in names) + " |")
    print("|---|" + "---|" * len(names))
    for label, by_endpoint in results.items():
        cells = []
        for endpoint in names:
            median = statistics.median(by_endpoint[endpoint])
            cells.append(f"{median:,.0f} ({median - full[endpoint]:+,.0f})")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
