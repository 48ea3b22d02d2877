"""Which part of otel_dist costs what: the in-process loop with one feature switched off at a time.

``python -m bench.ablate [--repeats 3] [--requests 5000]`` runs ``bench.inproc`` for
``dist-configure`` in several variants that differ only in environment variables (each signal's
exporter set to ``none``, the response trace headers off, runtime metrics off, scrubbing off,
other export batch sizes...), interleaved, and prints the median CPU µs per request next to
``none`` and the full setup: for the whole process, and for the event-loop thread alone (the
rest is the exporters' threads and, for sync endpoints, the worker thread). The difference to
the full setup is what that feature costs on the request path. Needs no source change; the
variants are the documented settings. ``--variants full`` with ``--compare-tree DIR``
(an earlier version's tree, e.g. ``git archive HEAD src | tar -x -C DIR``) gives before/after
numbers taken in one interleaved run, so machine load affects both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from bench.envs import BENCH_DIR, ROOT, main_bin
from bench.procs import SinkProcess, pinned, run_python
from bench.setups import base_env, make_setup

# What bench.inproc reports per endpoint, and how each table is titled.
MEASURES = {
    "cpu_us": "CPU µs per request, whole process (exporter threads included)",
    "main_thread_us": "CPU µs per request on the event-loop thread",
}
VARIANTS: dict[str, dict[str, str]] = {
    "full": {},
    "traces exporter none": {"OTEL_TRACES_EXPORTER": "none"},
    "metrics exporter none": {"OTEL_METRICS_EXPORTER": "none"},
    "logs exporter none": {"OTEL_LOGS_EXPORTER": "none"},
    "no response trace headers": {"OTEL_DIST_RESPONSE_TRACE_HEADERS": "false"},
    "no runtime metrics": {"OTEL_DIST_RUNTIME_METRICS": "false"},
    "no scrubbing": {"OTEL_DIST_SCRUB": "false"},
    "contrib middleware": {"OTEL_DIST_HTTP_INSTRUMENTATION": "contrib"},
    "SDK self-metrics on": {"OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED": "true"},
    "export batches of 128": {
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "128",
        "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "128",
    },
    "export batches of 2048 (queues 4096)": {
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2048",
        "OTEL_BSP_MAX_QUEUE_SIZE": "4096",
        "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "2048",
        "OTEL_BLRP_MAX_QUEUE_SIZE": "4096",
    },
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ablate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--endpoints", default="ping,items")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset of the variants (a before/after check needs only 'full')",
    )
    parser.add_argument(
        "--compare-tree",
        metavar="DIR",
        help="also run the full setup with otel_dist imported from DIR/src (e.g. a `git archive` "
        "of an earlier commit), interleaved with the others: before/after numbers from one run",
    )
    args = parser.parse_args(argv)
    chosen = {label: VARIANTS[label] for label in args.variants.split(",") if label}
    if args.compare_tree:
        tree = Path(args.compare_tree).resolve()
        chosen[f"full, otel_dist from {tree}"] = {"PYTHONPATH": f"{tree / 'src'}{os.pathsep}{ROOT}"}
    work = BENCH_DIR / "work" / "ablate"
    (work / "db").mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    app_cpu = cpus[0] if len(cpus) > 1 else None
    # (measure, variant, endpoint) -> one value per repeat
    results: dict[str, dict[str, dict[str, list[float]]]] = {m: {} for m in MEASURES}
    with SinkProcess(sys.executable, base_env(ROOT, main_bin()), ROOT, cpus[-1]) as sink:
        setups = {
            name: make_setup(
                name, root=ROOT, main_bin=main_bin(), stock_bin=main_bin(), endpoint=sink.endpoint
            )
            for name in ("none", "dist-configure")
        }
        runs: list[tuple[str, str, dict[str, str]]] = [("none", "none", {})] + [
            (label, "dist-configure", env) for label, env in chosen.items()
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
                    for measure, by_variant in results.items():
                        by_variant.setdefault(label, {}).setdefault(endpoint, []).append(
                            values[measure]
                        )
    names = args.endpoints.split(",")
    for measure, title in MEASURES.items():
        _print_table(title, results[measure], names)


def _print_table(title: str, results: dict[str, dict[str, list[float]]], names: list[str]) -> None:
    reference = "full" if "full" in results else next(label for label in results if label != "none")
    base = {e: statistics.median(results[reference][e]) for e in names}
    print(f"\n{title}, median of the repeats (difference to {reference}):\n")
    print("| variant | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, by_endpoint in results.items():
        cells = []
        for endpoint in names:
            median = statistics.median(by_endpoint[endpoint])
            cells.append(f"{median:,.0f} ({median - base[endpoint]:+,.0f})")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
