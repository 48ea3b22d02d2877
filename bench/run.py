"""``python -m bench.run``: the overhead benchmark, every setup side by side (``make bench``).

Per round, in this order: each setup served by uvicorn and loaded over HTTP (startup time, then
throughput and latency per endpoint, then RSS), otel_dist's ``configure()`` setup again with its
collector stopped, then each setup's in-process CPU loop (and import time). Rounds repeat the
same order, so every setup is measured next to the others and drift in the machine's load hits
all of them alike; the report takes medians over rounds and shows min-max.

The app runs on CPU 0; the load tool, the OTLP sink and this runner on CPU 1 (``taskset``), so
the app's CPU does only the app's work. ``--quick`` is the CI smoke: one short round that still
fails (exit 1) on any error: a setup that does not start, a wrong status, a telemetry setup whose
spans never reach the sink. Results go to ``bench/results.json`` and the tables in
``docs/performance.md`` are regenerated (``--quick`` writes ``.bench/results-quick.json`` and
leaves the docs alone unless told otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench import report
from bench.envs import BENCH_DIR, ROOT, ensure_stock_venv, main_bin
from bench.inproc import ENDPOINTS
from bench.load import LoadTool, LoadToolError, find_load_tool
from bench.procs import (
    App,
    BenchError,
    SinkProcess,
    cpu_seconds,
    cpu_times,
    free_port,
    http_get,
    pinned,
    rss_mb,
    run_python,
    utilisation,
)
from bench.setups import SETUP_NAMES, Setup, base_env, make_setup

DEFAULT_OUTPUT = ROOT / "bench" / "results.json"
QUICK_OUTPUT = BENCH_DIR / "results-quick.json"
DEFAULT_DOCS = ROOT / "docs" / "performance.md"
RECEIVER = (
    "otel_dist.tools.sink.OtlpSink(store=False) in its own process (python -m bench.sink), "
    "OTLP/HTTP protobuf, decoding every export and keeping counts only"
)
VERSIONED = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "structlog",
    "uvicorn",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation",
    "otel-dist",
)


# (endpoint, setup, share of the profiled requests): /ping is the hot path; /items and
# the 500 show where the DB read + log line and the error path spend their time.
PROFILES = (
    ("ping", "none", 1.0),
    ("ping", "dist-configure", 1.0),
    ("items", "none", 0.2),
    ("items", "dist-configure", 0.2),
    ("500", "dist-configure", 0.06),
)


@dataclass(frozen=True)
class Config:
    """What one benchmark session does."""

    rounds: int
    duration_s: float
    warmup_s: float
    connections: int
    inproc_requests: int
    inproc_warmup: int
    http_endpoints: tuple[str, ...]
    down_endpoints: tuple[str, ...]
    profile_requests: int  # 0: no profile
    quick: bool
    app_cpu: int | None
    load_cpu: int | None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _say(message: str) -> None:
    print(f"bench: {message}", flush=True)


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    return {key: after["items"][key] - before["items"][key] for key in after["items"]}


class Bench:
    """One session: the setups, the sink, the load tool, and what was measured so far."""

    def __init__(
        self, config: Config, tool: LoadTool, setups: dict[str, Setup], sink: SinkProcess
    ) -> None:
        self.config = config
        self.tool = tool
        self.setups = setups
        self.sink = sink
        self.errors: list[str] = []
        self.setup_rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
        self.down_rounds: list[dict[str, Any]] = []
        self.profiles: dict[str, Any] = {}
        self.loadavg: list[dict[str, Any]] = []
        # Databases, logs and result files of this session: concurrent sessions never collide.
        self.work = BENCH_DIR / "work" / str(os.getpid())
        (self.work / "db").mkdir(parents=True, exist_ok=True)

    # driver ------------------------------------------------------------------------------------

    def run(self) -> None:
        for number in range(1, self.config.rounds + 1):
            self.loadavg.append({"round": number, "at": _now(), "loadavg": _loadavg()})
            _say(f"round {number}/{self.config.rounds} (load average {_loadavg()})")
            measured: dict[str, dict[str, Any]] = {name: {"round": number} for name in self.setups}
            for name, setup in self.setups.items():
                self._guarded(f"{name}: HTTP, round {number}", self._http, setup, measured[name])
            if "dist-configure" in self.setups and self.config.down_endpoints:
                self._guarded(f"collector down, round {number}", self._collector_down, number)
            for name, setup in self.setups.items():
                self._guarded(
                    f"{name}: in-process, round {number}", self._inproc, setup, measured[name]
                )
            for name in self.setups:
                self.setup_rounds[name].append(measured[name])
        if self.config.profile_requests:
            for endpoint, name, share in PROFILES:
                if name in self.setups:
                    requests = max(1, int(self.config.profile_requests * share))
                    what = f"{name}: profile of {endpoint}"
                    self._guarded(what, self._profile, self.setups[name], endpoint, requests)
        self.loadavg.append({"round": "end", "at": _now(), "loadavg": _loadavg()})

    def _guarded(self, what: str, step: Callable[..., None], *args: Any) -> None:
        started = time.perf_counter()
        try:
            step(*args)
        except (
            BenchError,
            LoadToolError,
            OSError,
            subprocess.SubprocessError,
            ValueError,
            KeyError,
        ) as error:
            message = f"{what}: {error}"
            self.errors.append(message)
            _say(f"FAILED {message}")
            if not isinstance(error, (BenchError, LoadToolError)):
                traceback.print_exc()
        else:
            _say(f"{what}: done in {time.perf_counter() - started:.1f}s")

    # steps -------------------------------------------------------------------------------------

    def _start_app(
        self, setup: Setup, endpoint_env: dict[str, str] | None = None, log_name: str = ""
    ) -> App:
        port = free_port()
        env = dict(setup.env, BENCH_DB_PATH=str(self.work / "db" / f"{setup.name}.db"))
        if endpoint_env:
            env |= endpoint_env
        app = App(
            pinned(setup.uvicorn_argv(port), self.config.app_cpu),
            env,
            ROOT,
            self.work / "logs" / f"{log_name or setup.name}.log",
        )
        return app.start(port)

    def _check_statuses(self, app: App) -> None:
        for path, expected in ENDPOINTS.values():
            status = http_get(app.port, path)
            if status != expected:
                raise BenchError(f"GET {path} answered {status}, expected {expected}\n{app.tail()}")

    def _load(self, app: App, endpoint: str, duration_s: float) -> dict[str, Any]:
        path, expected = ENDPOINTS[endpoint]
        url = f"http://127.0.0.1:{app.port}{path}"
        cpus_before, app_cpu_before = cpu_times(), cpu_seconds(app.pid)
        sink_cpu_before = cpu_seconds(self.sink.pid)
        started = time.perf_counter()
        result = self.tool.run(
            url,
            connections=self.config.connections,
            duration_s=duration_s,
            cpu=self.config.load_cpu,
        )
        elapsed = time.perf_counter() - started
        measured = result.as_dict()
        measured["cpu_busy"] = utilisation(cpus_before, cpu_times())
        measured["app_cpu_s_per_s"] = round((cpu_seconds(app.pid) - app_cpu_before) / elapsed, 3)
        measured["sink_cpu_s_per_s"] = round(
            (cpu_seconds(self.sink.pid) - sink_cpu_before) / elapsed, 3
        )
        wrong = result.non_2xx if expected == 200 else result.requests - result.non_2xx
        if result.requests == 0 or wrong or result.errors:
            raise BenchError(
                f"GET {path} under load: {result.requests} requests, {wrong} not {expected}, "
                f"{result.errors} connection errors\n{app.tail()}"
            )
        return measured

    def _http(self, setup: Setup, measured: dict[str, Any]) -> None:
        before = self.sink.stats()
        app = self._start_app(setup)
        try:
            measured["startup_ms"] = round(app.startup_ms, 1)
            self._check_statuses(app)
            http: dict[str, Any] = {}
            for endpoint in self.config.http_endpoints:
                if self.config.warmup_s:
                    self._load(app, endpoint, self.config.warmup_s)
                http[endpoint] = self._load(app, endpoint, self.config.duration_s)
            measured["http"] = http
            measured |= {key: round(value, 1) for key, value in rss_mb(app.pid).items()}
        finally:
            app.stop()
        received = _delta(self.sink.stats(), before)
        measured["sink_http"] = received
        self._check_received(setup, received, "the HTTP run")

    def _check_received(self, setup: Setup, received: dict[str, int], what: str) -> None:
        if setup.telemetry and received["traces"] == 0:
            raise BenchError(f"{setup.name}: the sink received no spans from {what} ({received})")
        if not setup.telemetry and any(received.values()):
            raise BenchError(f"{setup.name} has no telemetry but the sink received {received}")

    def _collector_down(self, number: int) -> None:
        setup = self.setups["dist-configure"]
        python = str(main_bin() / "python")
        with SinkProcess(python, base_env(ROOT, main_bin()), ROOT, self.config.load_cpu) as private:
            to_private = {"OTEL_EXPORTER_OTLP_ENDPOINT": private.endpoint}
            app = self._start_app(setup, to_private, log_name="dist-configure-collector-down")
            try:
                for endpoint in self.config.down_endpoints:
                    self._load(app, endpoint, max(self.config.warmup_s, 1.0))
                deadline = time.monotonic() + 10  # the span batch processor exports every 5 s
                while private.stats()["items"]["traces"] == 0:
                    if time.monotonic() > deadline:
                        raise BenchError("no spans reached the private sink before it was stopped")
                    time.sleep(0.2)
                private.stop()  # the collector goes down; the app keeps serving
                time.sleep(0.5)
                http = {
                    endpoint: self._load(app, endpoint, self.config.duration_s)
                    for endpoint in self.config.down_endpoints
                }
                memory = rss_mb(app.pid)
            finally:
                app.stop()
        self.down_rounds.append(
            {"round": number, "http": http, **{k: round(v, 1) for k, v in memory.items()}}
        )

    def _inproc(self, setup: Setup, measured: dict[str, Any]) -> None:
        out = self.work / "tmp" / f"inproc-{setup.name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        argv = setup.python_argv(
            "-m",
            "bench.inproc",
            "--requests",
            str(self.config.inproc_requests),
            "--warmup",
            str(self.config.inproc_warmup),
            "--out",
            str(out),
        )
        env = dict(setup.env, BENCH_DB_PATH=str(self.work / "db" / f"inproc-{setup.name}.db"))
        before = self.sink.stats()
        log = self.work / "logs" / f"inproc-{setup.name}.log"
        spawned = run_python(pinned(argv, self.config.app_cpu), env, ROOT, log, timeout=900)
        result = json.loads(out.read_text(encoding="utf-8"))
        measured["import_ms"] = round((result["import_done_at"] - spawned) * 1e3, 1)
        measured["inproc"] = {
            name: {k: round(v, 1) for k, v in values.items()}
            for name, values in result["endpoints"].items()
        }
        text = log.read_text(encoding="utf-8", errors="replace")
        measured["inproc_queue_full"] = "Queue is full" in text or "dropped" in text.lower()
        received = _delta(self.sink.stats(), before)
        measured["sink_inproc"] = received
        self._check_received(setup, received, "the in-process run")

    def _profile(self, setup: Setup, endpoint: str, requests: int) -> None:
        out = self.work / "tmp" / f"profile-{endpoint}-{setup.name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        options = ["--endpoint", endpoint, "--requests", str(requests), "--out", str(out)]
        if endpoint in {"items", "404"}:
            options.append(
                "--inline-threadpool"
            )  # the sync endpoint's work, on the profiled thread
        argv = setup.python_argv("-m", "bench.profile", *options)
        env = dict(setup.env, BENCH_DB_PATH=str(self.work / "db" / f"profile-{setup.name}.db"))
        log = self.work / "logs" / f"profile-{endpoint}-{setup.name}.log"
        run_python(pinned(argv, self.config.app_cpu), env, ROOT, log, timeout=900)
        profile = json.loads(out.read_text(encoding="utf-8"))
        self.profiles.setdefault(endpoint, {})[setup.name] = profile


# session -------------------------------------------------------------------------------------


def _versions(stock_bin: Path) -> dict[str, Any]:
    ours: dict[str, str] = {}
    for name in VERSIONED:
        try:
            ours[name] = version(name)
        except PackageNotFoundError:
            ours[name] = "not installed"
    listing = subprocess.run(
        [
            str(stock_bin / "python"),
            "-m",
            "pip",
            "list",
            "--format=json",
            "--disable-pip-version-check",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stock = {row["name"].lower(): row["version"] for row in json.loads(listing)}
    return {
        "python": platform.python_version(),
        "project_venv": ours,
        "stock_venv": {
            k: v
            for k, v in sorted(stock.items())
            if k.startswith(
                ("opentelemetry", "fastapi", "sqlalchemy", "uvicorn", "structlog", "starlette")
            )
        },
    }


def _cpus(no_pin: bool) -> tuple[int | None, int | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return cpus[0], cpus[1]


def _config(args: argparse.Namespace) -> Config:
    app_cpu, load_cpu = _cpus(args.no_pin)
    if args.quick:
        return Config(
            rounds=1,
            duration_s=2,
            warmup_s=0,
            connections=args.connections,
            # Enough requests that a busy machine's noise stays below the floor's added CPU on
            # /items (at 100, the floor once measured below no telemetry: no ratio to report).
            inproc_requests=1000,
            inproc_warmup=100,
            http_endpoints=("ping", "items"),
            down_endpoints=("items",),
            profile_requests=0,
            quick=True,
            app_cpu=app_cpu,
            load_cpu=load_cpu,
        )
    return Config(
        rounds=args.rounds,
        duration_s=args.duration,
        warmup_s=args.warmup,
        connections=args.connections,
        inproc_requests=args.inproc_requests,
        inproc_warmup=200,
        http_endpoints=tuple(ENDPOINTS),
        down_endpoints=("ping", "items"),
        profile_requests=0 if args.no_profile else 5000,
        quick=False,
        app_cpu=app_cpu,
        load_cpu=load_cpu,
    )


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--duration", type=float, default=8, help="seconds of load per endpoint (default 8)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1, help="seconds of untimed load first (default 1)"
    )
    parser.add_argument(
        "--connections", type=int, default=16, help="concurrent connections (default 16)"
    )
    parser.add_argument(
        "--inproc-requests",
        type=int,
        default=5000,
        help="in-process requests on /ping (default 5000; /items and 404 take 40%%, 500 20%%)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke: 1 round, 2 s, tiny in-process runs"
    )
    parser.add_argument("--load-tool", choices=("auto", "wrk", "hey"), default="auto")
    parser.add_argument(
        "--no-install", action="store_true", help="never install the load tool (tests)"
    )
    parser.add_argument(
        "--setups",
        default=",".join(SETUP_NAMES),
        help="comma-separated subset (none is always run)",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="results JSON (default bench/results.json)"
    )
    parser.add_argument(
        "--docs", default=None, help="markdown to update, or 'none' (default docs/performance.md)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile of /ping")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = parser.parse_args(argv)
    unknown = set(args.setups.split(",")) - set(SETUP_NAMES)
    if unknown:
        parser.error(f"unknown setups {sorted(unknown)}; choose from {', '.join(SETUP_NAMES)}")
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    config = _config(args)
    output = args.output or (QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT)
    docs = (
        None
        if args.docs == "none"
        else Path(args.docs)
        if args.docs
        else None
        if args.quick
        else DEFAULT_DOCS
    )
    if config.load_cpu is not None:
        os.sched_setaffinity(0, {config.load_cpu})  # this runner stays off the app's CPU
    started_at, started = _now(), time.perf_counter()
    tool = find_load_tool(args.load_tool, install=not args.no_install)
    stock_bin = ensure_stock_venv()
    names = [name for name in SETUP_NAMES if name == "none" or name in args.setups.split(",")]
    cpus = f"app CPU {config.app_cpu}, load CPU {config.load_cpu}"
    _say(f"setups {', '.join(names)}; {tool.version}; {cpus}")
    with SinkProcess(sys.executable, base_env(ROOT, main_bin()), ROOT, config.load_cpu) as sink:
        setups = {
            name: make_setup(
                name, root=ROOT, main_bin=main_bin(), stock_bin=stock_bin, endpoint=sink.endpoint
            )
            for name in names
        }
        bench = Bench(config, tool, setups, sink)
        bench.run()
    results: dict[str, Any] = {
        "meta": {
            "started_at": started_at,
            "elapsed_s": round(time.perf_counter() - started, 1),
            "config": asdict(config),
            "load_tool": tool.version,
            "receiver": RECEIVER,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "loadavg": bench.loadavg,
            "versions": _versions(stock_bin),
            "errors": bench.errors,
        },
        "setups": {
            name: {"label": setup.label, "rounds": bench.setup_rounds[name]}
            for name, setup in setups.items()
        },
        "collector_down": {"setup": "dist-configure", "rounds": bench.down_rounds},
        "profiles": bench.profiles,
    }
    results["summary"] = report.summarize(results)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    _say(f"wrote {output}")
    if docs is not None:
        report.update_docs(docs, results)
        _say(f"updated {docs}")
    print(report.summary_text(results), flush=True)
    if not bench.errors:
        shutil.rmtree(bench.work, ignore_errors=True)
    else:
        _say(f"{len(bench.errors)} step(s) failed; logs in {bench.work / 'logs'}:")
        for error in bench.errors:
            print(f"  - {error.splitlines()[0]}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
