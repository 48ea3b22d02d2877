"""Run the otel-dist stack without Docker: backends, our collector, PostgreSQL and its exporter.

Everything listens on loopback. Traces go to Jaeger v2 (``stack/config/jaeger.yaml``, in
memory), logs to VictoriaLogs (OTLP in, LogsQL out), metrics to Prometheus. PostgreSQL
(Debian's server, through ``stack/postgres.py``) holds the shop's database, as in
docker-compose.yml; postgres_exporter reads its statistics as a ``pg_monitor`` role and
Prometheus scrapes it. docker-compose.yml runs Tempo and Loki instead; the collector config is
the same file, and the local stack selects its ``otlp_grpc/jaeger`` and
``otlp_http/victorialogs`` exporters through ``OTELCOL_TRACES_EXPORTERS`` and
``OTELCOL_LOGS_EXPORTERS``.

The binaries come from ``stack/build.py`` (built first, with its progress shown, if any is
missing); the collector and Prometheus configs are the ones docker-compose.yml mounts
(``collector/config.yaml``, ``stack/config/*``), pointed at 127.0.0.1 through their environment
variables. Prometheus' config cannot read the environment, so a copy with the targets rewritten
is written to the data directory.

Usage::

    python stack/run.py start [--data-dir DIR] [--foreground]
    python stack/run.py start --topology scaled [--gateways 3]   # an agent routing onto gateways
    python stack/run.py status
    python stack/run.py stop

Data (TSDB, log partitions, the collector's queue, one log per process, the PostgreSQL cluster)
goes under ``~/.cache/otel-dist-stack/run/<timestamp>/`` unless ``--data-dir`` is given.
``postgres.env`` there holds the shop's ``DATABASE_URL`` (passwords are made anew at each
start). ``start`` writes the pids to ``state.json`` there and points
``~/.cache/otel-dist-stack/run/current`` at it; ``stop`` sends SIGTERM, then SIGKILL to what
is left after 10 s, and stops PostgreSQL.

From Python (the end-to-end tests)::

    with LocalStack(ports=Ports.free()) as stack:
        send_otlp(stack.otlp_http_endpoint)
        query(stack.prometheus_url)

Every process started is stopped on exit, also when starting failed half-way.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "stack" / "build.py"
COLLECTOR_CONFIG = REPO / "collector" / "config.yaml"
CONFIG_DIR = REPO / "stack" / "config"
RUN_ROOT = Path.home() / ".cache" / "otel-dist-stack" / "run"
CURRENT = RUN_ROOT / "current"
HOST = "127.0.0.1"

READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
POLL_S = 0.25
LOG_TAIL_LINES = 30
BINARIES = ("otelcol", "prometheus", "jaeger", "victorialogs", "postgres_exporter")
# The exporters the local stack selects in collector/config.yaml; compose keeps the defaults
# (Tempo and Loki).
LOCAL_EXPORTERS = {
    "OTELCOL_TRACES_EXPORTERS": "[otlp_grpc/jaeger]",
    "OTELCOL_LOGS_EXPORTERS": "[otlp_http/victorialogs]",
}


class StackError(RuntimeError):
    """The stack could not be built, started or found; the message says which part and why."""


@dataclass(frozen=True)
class Ports:
    """Every loopback port the stack listens on; the defaults are the usual ones."""

    otlp_grpc: int = 4317
    otlp_http: int = 4318
    collector_health: int = 13133
    collector_metrics: int = 8888
    collector_pprof: int = 1777
    prometheus: int = 9090
    # The collector owns 4317 on this host, so Jaeger's OTLP receiver moves to 4417. Its health
    # and own metrics are off the collector's 13133 and 8888.
    jaeger_otlp_grpc: int = 4417
    jaeger_query_http: int = 16686
    jaeger_query_grpc: int = 16685
    jaeger_health: int = 13134
    jaeger_metrics: int = 8889
    # VictoriaLogs' one HTTP port: OTLP ingestion, LogsQL, /health and its own /metrics.
    victorialogs_http: int = 9428
    # Not 5432: a distribution's own cluster (Debian's package starts one) usually has it.
    postgres: int = 15432
    postgres_exporter: int = 9187

    @classmethod
    def free(cls) -> Ports:
        """Ports the kernel reports free right now, for tests that run beside a live stack."""
        with contextlib.ExitStack() as stack:
            socks = []
            for _ in fields(cls):
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind((HOST, 0))
                socks.append(sock)
            # All held open at once, so no two fields get the same port.
            return cls(*(sock.getsockname()[1] for sock in socks))


@dataclass(frozen=True)
class Service:
    """One process of the stack: how to start it and how to tell it is ready."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    ready_url: str


def binary_paths(build_if_missing: bool = True) -> dict[str, Path]:
    """``stack/build.py --print-paths`` as a dict; builds first (progress shown) if needed."""

    def read() -> dict[str, Path]:
        result = subprocess.run(  # noqa: S603 - our own script, fixed argv
            [sys.executable, str(BUILD_SCRIPT), "--print-paths"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"stack/build.py --print-paths failed:\n{result.stderr.strip()}")
        pairs = (line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        return {name.strip(): Path(path.strip()) for name, path in pairs}

    paths = read()
    missing = _missing(paths)
    if missing and build_if_missing:
        print(f"building {', '.join(missing)} with stack/build.py ...", flush=True)
        # Output not captured: the build's own progress lines are the progress shown.
        if subprocess.run([sys.executable, str(BUILD_SCRIPT)], check=False).returncode != 0:  # noqa: S603
            raise StackError("stack/build.py failed; see its output above")
        paths = read()
        missing = _missing(paths)
    if missing:
        raise StackError(
            f"binaries missing: {', '.join(missing)}; build them with `python stack/build.py`"
        )
    return paths


def _missing(paths: Mapping[str, Path]) -> list[str]:
    return [name for name in BINARIES if not _executable(paths.get(name))]


def _executable(path: Path | None) -> bool:
    return path is not None and path.is_file() and os.access(path, os.X_OK)


def render_prometheus_config(data_dir: Path, ports: Ports) -> Path:
    """Write prometheus.yml with the compose targets replaced by the local processes.

    Prometheus does not expand environment variables in its config, so the shared file keeps
    the compose targets and this copy points them at the local processes: the ``tempo`` job
    scrapes Jaeger's own metrics and the ``loki`` job VictoriaLogs', each renamed after what it
    scrapes. Each target must be found; a config that no longer has one is an error here rather
    than a silent missing scrape.
    """
    source = (CONFIG_DIR / "prometheus.yml").read_text()
    replacements = {
        '"collector:8888"': f'"{HOST}:{ports.collector_metrics}"',
        '"tempo:3200"': f'"{HOST}:{ports.jaeger_metrics}"',
        "job_name: tempo": "job_name: jaeger",
        '"loki:3100"': f'"{HOST}:{ports.victorialogs_http}"',
        "job_name: loki": "job_name: victorialogs",
        '"localhost:9090"': f'"{HOST}:{ports.prometheus}"',
        '"postgres-exporter:9187"': f'"{HOST}:{ports.postgres_exporter}"',
        "- alert-rules.yml": f"- {CONFIG_DIR / 'alert-rules.yml'}",
    }
    for old, new in replacements.items():
        if old not in source:
            raise StackError(f"stack/config/prometheus.yml no longer contains {old}")
        source = source.replace(old, new)
    target = data_dir / "prometheus.yml"
    target.write_text(source)
    return target


def services(
    paths: Mapping[str, Path],
    data_dir: Path,
    ports: Ports,
    collector_env: Mapping[str, str] | None = None,
) -> list[Service]:
    """The four processes, configured for loopback ``ports`` and data under ``data_dir``.

    The backends first, the collector last.
    """
    prometheus_config = render_prometheus_config(data_dir, ports)
    prometheus = Service(
        "prometheus",
        (
            str(paths["prometheus"]),
            f"--config.file={prometheus_config}",
            f"--storage.tsdb.path={data_dir / 'prometheus'}",
            f"--web.listen-address={HOST}:{ports.prometheus}",
            "--web.enable-otlp-receiver",
            "--web.enable-remote-write-receiver",
            "--enable-feature=exemplar-storage",
        ),
        {},
        f"http://{HOST}:{ports.prometheus}/-/ready",
    )
    return [
        prometheus,
        victorialogs_service(paths, data_dir, ports),
        jaeger_service(paths, ports),
        collector_service(paths, data_dir, ports, collector_env),
    ]


def collector_env_for(ports: Ports, data_dir: Path) -> dict[str, str]:
    """The collector's variables for the local stack: loopback addresses, the local exporters."""
    return {
        "OTELCOL_LISTEN_HOST": HOST,
        "OTELCOL_OTLP_GRPC_PORT": str(ports.otlp_grpc),
        "OTELCOL_OTLP_HTTP_PORT": str(ports.otlp_http),
        "OTELCOL_HEALTH_PORT": str(ports.collector_health),
        "OTELCOL_METRICS_PORT": str(ports.collector_metrics),
        "OTELCOL_PPROF_ENDPOINT": f"{HOST}:{ports.collector_pprof}",
        "OTELCOL_QUEUE_DIR": str(data_dir / "otelcol" / "queue"),
        "JAEGER_OTLP_ENDPOINT": f"{HOST}:{ports.jaeger_otlp_grpc}",
        "VICTORIALOGS_OTLP_ENDPOINT": (
            f"http://{HOST}:{ports.victorialogs_http}/insert/opentelemetry"
        ),
        "PROMETHEUS_OTLP_ENDPOINT": f"http://{HOST}:{ports.prometheus}/api/v1/otlp",
        **LOCAL_EXPORTERS,
    }


def collector_service(
    paths: Mapping[str, Path],
    data_dir: Path,
    ports: Ports,
    collector_env: Mapping[str, str] | None = None,
) -> Service:
    """Our collector on ``collector/config.yaml``; ``collector_env`` adds or overrides variables."""
    return Service(
        "otelcol",
        (str(paths["otelcol"]), f"--config={COLLECTOR_CONFIG}"),
        {**collector_env_for(ports, data_dir), **(collector_env or {})},
        f"http://{HOST}:{ports.collector_health}/",
    )


def victorialogs_service(paths: Mapping[str, Path], data_dir: Path, ports: Ports) -> Service:
    """VictoriaLogs, single node, with its data under ``data_dir``; configured by flags alone."""
    return Service(
        "victorialogs",
        (
            str(paths["victorialogs"]),
            f"-httpListenAddr={HOST}:{ports.victorialogs_http}",
            f"-storageDataPath={data_dir / 'victorialogs'}",
            # Its default: a development stack keeps a week of logs.
            "-retentionPeriod=7d",
        ),
        {},
        f"http://{HOST}:{ports.victorialogs_http}/health",
    )


def jaeger_service(paths: Mapping[str, Path], ports: Ports) -> Service:
    """Jaeger v2, in memory, receiving OTLP gRPC; ready when /status says so."""
    return Service(
        "jaeger",
        (str(paths["jaeger"]), f"--config={CONFIG_DIR / 'jaeger.yaml'}"),
        {
            "JAEGER_OTLP_GRPC_ENDPOINT": f"{HOST}:{ports.jaeger_otlp_grpc}",
            "JAEGER_QUERY_HTTP_ENDPOINT": f"{HOST}:{ports.jaeger_query_http}",
            "JAEGER_QUERY_GRPC_ENDPOINT": f"{HOST}:{ports.jaeger_query_grpc}",
            "JAEGER_HEALTH_ENDPOINT": f"{HOST}:{ports.jaeger_health}",
            "JAEGER_LISTEN_HOST": HOST,
            "JAEGER_METRICS_PORT": str(ports.jaeger_metrics),
        },
        f"http://{HOST}:{ports.jaeger_health}/status",
    )


# --- PostgreSQL (stack/postgres.py) and postgres_exporter -----------------------------------------
POSTGRES_SCRIPT = REPO / "stack" / "postgres.py"
SHOP_DATABASE = "shop"
SHOP_ROLE = "shop"
MONITOR_ROLE = "otel_monitor"
POSTGRES_ENV_FILE = "postgres.env"


def postgres_module() -> ModuleType:
    """stack/postgres.py as a module (a script beside this one, not a package)."""
    name = "otel_dist_stack_postgres"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, POSTGRES_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class PostgresSetup:
    """The stack's running PostgreSQL: its cluster directory, port and the roles' passwords."""

    directory: Path
    port: int
    app_password: str
    monitor_password: str

    def database_url(self, driver: str = "postgresql+psycopg") -> str:
        """The shop's database as its owner, over TCP on loopback."""
        return f"{driver}://{SHOP_ROLE}:{self.app_password}@{HOST}:{self.port}/{SHOP_DATABASE}"

    def exporter_env(self) -> dict[str, str]:
        """postgres_exporter's connection, as the monitoring role (no password on argv)."""
        return {
            "DATA_SOURCE_URI": f"{HOST}:{self.port}/postgres?sslmode=disable",
            "DATA_SOURCE_USER": MONITOR_ROLE,
            "DATA_SOURCE_PASS": self.monitor_password,
        }


def postgres_directory(data_dir: Path) -> Path:
    """Where the cluster lives: ``data_dir/postgres``, or a link there to a reachable directory.

    PostgreSQL refuses to run as root, so as root stack/postgres.py runs it as the ``postgres``
    user, which must be able to enter every parent directory. The default data dir is under
    the home directory, which root keeps closed (mode 0700); the cluster then goes to a
    directory under the temporary directory, named after ``data_dir`` so the same data dir
    finds it again, and ``data_dir/postgres`` links to it.
    """
    link = data_dir / "postgres"
    if link.is_symlink() or os.geteuid() != 0 or _enterable_by_others(data_dir):
        return link
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    outside = Path(os.environ.get("TMPDIR", "/tmp")) / f"otel-dist-stack-postgres-{digest}"  # noqa: S108
    outside.mkdir(mode=0o700, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    return link


def _enterable_by_others(directory: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [directory, *directory.parents] if p.exists())


def start_postgres(data_dir: Path, ports: Ports, say: Callable[[str], object]) -> PostgresSetup:
    """Start the cluster (initialised on first use), create the shop's and the monitoring roles.

    Passwords are made anew at each start and written to ``data_dir/postgres.env`` (mode 0600)
    as the shop's ``DATABASE_URL``; the monitoring role gets ``pg_monitor`` and reads only.
    """
    pg = postgres_module()
    started = time.monotonic()
    directory = postgres_directory(data_dir)
    try:
        cluster = pg.start(directory, ports.postgres)
        setup = PostgresSetup(
            directory, ports.postgres, secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        )
        pg.create_app_database(cluster, SHOP_DATABASE, SHOP_ROLE, setup.app_password)
        pg.create_monitoring_role(cluster, MONITOR_ROLE, setup.monitor_password)
    except pg.PostgresError as error:
        with contextlib.suppress(pg.PostgresError):
            pg.stop(directory)
        raise StackError(f"PostgreSQL: {error}") from None
    env_file = data_dir / POSTGRES_ENV_FILE
    env_file.touch(mode=0o600)
    env_file.write_text(f"DATABASE_URL={setup.database_url()}\n")
    say(f"{'postgres':<12} ready in {time.monotonic() - started:.1f}s ({HOST}:{ports.postgres})")
    return setup


def stop_postgres(directory: Path, say: Callable[[str], object]) -> None:
    """Stop the server on ``directory`` if it runs (fast shutdown: sessions are ended)."""
    pg = postgres_module()
    try:
        stopped = pg.stop(directory)
    except pg.PostgresError as error:
        say(f"{'postgres':<12} could not be stopped: {error}")
        return
    if stopped:
        say(f"{'postgres':<12} stopped")


def postgres_exporter_service(
    paths: Mapping[str, Path], ports: Ports, setup: PostgresSetup
) -> Service:
    """postgres_exporter on loopback, reading the server as the monitoring role."""
    return Service(
        "postgres_exporter",
        (
            str(paths["postgres_exporter"]),
            f"--web.listen-address={HOST}:{ports.postgres_exporter}",
            "--log.level=warn",
        ),
        setup.exporter_env(),
        f"http://{HOST}:{ports.postgres_exporter}/metrics",
    )


class LocalStack:
    """Prometheus, VictoriaLogs, Jaeger and the collector as child processes, for ``with``.

    ``collector_env`` adds or overrides the collector's variables (``TAIL_SAMPLING_PERCENT``,
    ``OTELCOL_LOGS_EXPORTERS`` ...). ``data_dir`` defaults to a fresh timestamped directory.
    ``postgres=False`` leaves out PostgreSQL and postgres_exporter (for tests of the telemetry
    path alone, whose apps use SQLite).
    On leaving the block every process is stopped (SIGTERM, then SIGKILL after 10 s), also when
    the block or the start-up raised.
    """

    def __init__(
        self,
        ports: Ports | None = None,
        data_dir: Path | None = None,
        collector_env: Mapping[str, str] | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        quiet: bool = False,
        *,
        postgres: bool = True,
    ) -> None:
        self.ports = ports or Ports()
        self.with_postgres = postgres
        self.postgres: PostgresSetup | None = None
        self.data_dir = (data_dir or _fresh_data_dir()).resolve()
        self.collector_env = dict(collector_env or {})
        self.ready_timeout_s = ready_timeout_s
        self.quiet = quiet
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._services: dict[str, Service] = {}

    # --- addresses the tests and the CLI print --------------------------------------------
    @property
    def otlp_http_endpoint(self) -> str:
        """Base URL for OTLP/HTTP exporters (``/v1/traces`` etc. are appended by them)."""
        return f"http://{HOST}:{self.ports.otlp_http}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        """Address for OTLP/gRPC exporters."""
        return f"http://{HOST}:{self.ports.otlp_grpc}"

    @property
    def prometheus_url(self) -> str:
        """Prometheus HTTP API base URL."""
        return f"http://{HOST}:{self.ports.prometheus}"

    @property
    def jaeger_url(self) -> str:
        """Jaeger query HTTP API base URL (``/api/traces``)."""
        return f"http://{HOST}:{self.ports.jaeger_query_http}"

    @property
    def victorialogs_url(self) -> str:
        """VictoriaLogs HTTP API base URL (``/select/logsql/query``)."""
        return f"http://{HOST}:{self.ports.victorialogs_http}"

    @property
    def collector_metrics_url(self) -> str:
        """The collector's own Prometheus metrics."""
        return f"http://{HOST}:{self.ports.collector_metrics}/metrics"

    @property
    def database_url(self) -> str:
        """The shop's SQLAlchemy URL on the stack's PostgreSQL (psycopg driver)."""
        if self.postgres is None:
            raise StackError("this stack runs no PostgreSQL (started with postgres=False)")
        return self.postgres.database_url()

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> LocalStack:
        """Start everything; on any failure stop what was started and re-raise."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop every process."""
        self.stop()

    def start(self) -> None:
        """Start the backends, wait for them, then the collector; raise if one is not ready."""
        paths = binary_paths()
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        planned = services(paths, self.data_dir, self.ports, self.collector_env)
        if self.with_postgres:
            self.postgres = start_postgres(self.data_dir, self.ports, self._say)
            planned.insert(0, postgres_exporter_service(paths, self.ports, self.postgres))
        self._services = {service.name: service for service in planned}
        backends, collector = planned[:-1], planned[-1]
        # The backends are independent: start all, then wait for each. The collector last, so
        # its first exports find them listening (it would retry anyway).
        for service in backends:
            self._spawn(service)
        for service in backends:
            self._wait_ready(service)
        self._spawn(collector)
        self._wait_ready(collector)
        self._write_state()

    def stop(self) -> None:
        """Stop every started process, the collector first so it flushes to the backends."""
        for name in reversed(list(self._processes)):
            _terminate(self._processes[name].pid, self._say, name)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._processes[name].wait(timeout=1)
        self._processes.clear()
        if self.postgres is not None:
            stop_postgres(self.postgres.directory, self._say)

    def restart(self, name: str, env: Mapping[str, str] | None = None) -> None:
        """Stop one process (e.g. ``otelcol``) and start it again with the same settings.

        ``env`` adds or overrides variables, on top of what it had (for ``otelcol``, the
        ``collector_env`` given at start); they stay for later restarts.
        """
        service = self._services[name]
        if env:
            service = replace(service, env={**service.env, **env})
            self._services[name] = service
            if name == "otelcol":
                self.collector_env.update(env)
        process = self._processes.pop(name, None)
        if process is not None:
            _terminate(process.pid, self._say, name)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1)
        self._spawn(service)
        self._wait_ready(service)
        self._write_state()

    def running(self) -> bool:
        """Every started process is still alive."""
        return bool(self._processes) and all(p.poll() is None for p in self._processes.values())

    def log_path(self, name: str) -> Path:
        """Where a process' stdout and stderr go (PostgreSQL's: ``postgres/postgres.log``)."""
        return self.data_dir / "logs" / f"{name}.log"

    def stop_postgres(self) -> None:
        """Stop the PostgreSQL server alone (fast shutdown), e.g. to see the app without it."""
        if self.postgres is None:
            raise StackError("this stack runs no PostgreSQL (started with postgres=False)")
        stop_postgres(self.postgres.directory, self._say)

    def start_postgres(self) -> None:
        """Start the PostgreSQL server again on the same cluster, roles and passwords."""
        if self.postgres is None:
            raise StackError("this stack runs no PostgreSQL (started with postgres=False)")
        postgres_module().start(self.postgres.directory, self.ports.postgres)

    def remove_postgres_cluster(self) -> None:
        """Stop PostgreSQL and delete its cluster, also where ``data_dir/postgres`` links to.

        For tests: their data dirs are temporary, but a cluster outside the data dir (see
        ``postgres_directory``) would outlive them.
        """
        if self.postgres is None:
            return
        stop_postgres(self.postgres.directory, self._say)
        directory = self.postgres.directory
        shutil.rmtree(directory.resolve(), ignore_errors=True)
        if directory.is_symlink():
            directory.unlink()

    # --- internals ---------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    def _spawn(self, service: Service) -> None:
        env = {**os.environ, **service.env}
        with self.log_path(service.name).open("ab") as log:
            process = subprocess.Popen(  # noqa: S603 - our cached binaries, argv built here
                service.argv,
                env=env,
                cwd=self.data_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own session: a Ctrl-C in the terminal reaches run.py, which stops them in order.
                start_new_session=True,
            )
        self._processes[service.name] = process
        self._say(f"{service.name:<12} started (pid {process.pid})")

    def _wait_ready(self, service: Service) -> None:
        process = self._processes[service.name]
        started = time.monotonic()
        deadline = started + self.ready_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StackError(
                    f"{service.name} exited with status {process.returncode} before it was ready"
                    f"\n{_tail(self.log_path(service.name))}"
                )
            if _http_ok(service.ready_url):
                self._say(f"{service.name:<12} ready in {time.monotonic() - started:.1f}s")
                return
            time.sleep(POLL_S)
        raise StackError(
            f"{service.name} not ready at {service.ready_url} after {self.ready_timeout_s:.0f}s"
            f"\n{_tail(self.log_path(service.name))}"
        )

    def _write_state(self) -> None:
        state = {
            "data_dir": str(self.data_dir),
            "ports": asdict(self.ports),
            "processes": {
                name: {"pid": process.pid, "argv": list(self._services[name].argv)}
                for name, process in self._processes.items()
            },
            "ready_urls": {name: service.ready_url for name, service in self._services.items()},
        }
        if self.postgres is not None:
            state["postgres"] = {
                "directory": str(self.postgres.directory),
                "port": self.postgres.port,
            }
        (self.data_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")


def _fresh_data_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return RUN_ROOT / stamp


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback http
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return f"(no log at {path})"
    return f"last lines of {path}:\n" + "\n".join(f"  | {line}" for line in lines)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _terminate(pid: int, say: Callable[[str], object], name: str) -> None:
    """SIGTERM, wait up to STOP_GRACE_S, then SIGKILL; only ever this one pid."""
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        if not _alive(pid):
            say(f"{name:<12} stopped")
            return
        time.sleep(POLL_S)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    say(f"{name:<12} killed after {STOP_GRACE_S:.0f}s")


def _owned_by_state(pid: int, argv0: str) -> bool:
    """The pid still runs the binary we started (pids get reused after a reboot or a crash)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _alive(pid) and not Path("/proc").is_dir()
    # argv[0], or argv[1] when the kernel ran a script through its interpreter.
    return argv0 in (part.decode(errors="replace") for part in cmdline[:2])


# --- scaled topology: one agent, a pool of gateways ---------------------------------------------
# `start --topology scaled`: the apps send to an agent (collector/agent.yaml) on the usual OTLP
# ports, which routes by trace id onto GATEWAYS gateways (config.yaml + gateway.yaml), each
# exporting to the same backends. Kept apart from the single-collector stack above: it reuses
# its backends and its process handling, and only plans different collectors.
AGENT_CONFIG = REPO / "collector" / "agent.yaml"
GATEWAY_OVERLAY = REPO / "collector" / "gateway.yaml"
TOPOLOGIES = ("single", "scaled")
DEFAULT_GATEWAYS = 3
# The sampling rate for the pool: errors and slow traces whole, 10 % of the rest.
SCALED_TAIL_SAMPLING_PERCENT = "10"
# A port found free can be taken before the gateway binds it (other programs, outgoing
# connections): the gateway then exits with this error and is started again on other ports.
PORT_TAKEN = "address already in use"
PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class GatewayPorts:
    """The loopback ports of one gateway; the agent reaches it on ``otlp_grpc``."""

    otlp_grpc: int
    otlp_http: int
    health: int
    metrics: int
    pprof: int

    @classmethod
    def free(cls, avoid: Iterable[int] = ()) -> GatewayPorts:
        """Ports the kernel reports free right now, all different and none of ``avoid``.

        ``avoid``: the ports already chosen for the rest of the stack, released but not bound yet.
        """
        taken = set(avoid)
        with contextlib.ExitStack() as stack:
            chosen: list[int] = []
            while len(chosen) < len(fields(cls)):
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind((HOST, 0))
                port = int(sock.getsockname()[1])
                if port not in taken:
                    chosen.append(port)
                    taken.add(port)
            return cls(*chosen)


def gateway_name(index: int) -> str:
    """``gateway-1`` ... : the process name in state.json and the ``otel_dist.gateway`` value."""
    return f"gateway-{index + 1}"


def gateway_service(
    paths: Mapping[str, Path],
    data_dir: Path,
    ports: Ports,
    name: str,
    own: GatewayPorts,
    *,
    gateway_env: Mapping[str, str] | None = None,
) -> Service:
    """One gateway: the stack's collector variables, its own ports, queue directory and name."""
    env = {
        **collector_env_for(ports, data_dir),
        "OTELCOL_OTLP_GRPC_PORT": str(own.otlp_grpc),
        "OTELCOL_OTLP_HTTP_PORT": str(own.otlp_http),
        "OTELCOL_HEALTH_PORT": str(own.health),
        "OTELCOL_METRICS_PORT": str(own.metrics),
        "OTELCOL_PPROF_ENDPOINT": f"{HOST}:{own.pprof}",
        "OTELCOL_QUEUE_DIR": str(data_dir / name / "queue"),
        "OTELCOL_GATEWAY_ID": name,
        "TAIL_SAMPLING_PERCENT": SCALED_TAIL_SAMPLING_PERCENT,
        **(gateway_env or {}),
    }
    return Service(
        name,
        (str(paths["otelcol"]), f"--config={COLLECTOR_CONFIG}", f"--config={GATEWAY_OVERLAY}"),
        env,
        f"http://{HOST}:{own.health}/",
    )


def agent_service(
    paths: Mapping[str, Path],
    ports: Ports,
    gateways: Mapping[str, GatewayPorts],
    agent_env: Mapping[str, str] | None = None,
) -> Service:
    """The agent on the stack's own collector ports, routing onto ``gateways``."""
    pool = ", ".join(f"{HOST}:{own.otlp_grpc}" for own in gateways.values())
    env = {
        "OTELCOL_LISTEN_HOST": HOST,
        "OTELCOL_OTLP_GRPC_PORT": str(ports.otlp_grpc),
        "OTELCOL_OTLP_HTTP_PORT": str(ports.otlp_http),
        "OTELCOL_HEALTH_PORT": str(ports.collector_health),
        "OTELCOL_METRICS_PORT": str(ports.collector_metrics),
        "OTELCOL_PPROF_ENDPOINT": f"{HOST}:{ports.collector_pprof}",
        "OTELCOL_GATEWAYS": f"[{pool}]",
        "OTELCOL_HOST_NAME": socket.gethostname(),
        "PROMETHEUS_OTLP_ENDPOINT": f"http://{HOST}:{ports.prometheus}/api/v1/otlp",
        **(agent_env or {}),
    }
    return Service(
        "agent",
        (str(paths["otelcol"]), f"--config={AGENT_CONFIG}"),
        env,
        f"http://{HOST}:{ports.collector_health}/",
    )


def scrape_collectors(prometheus_config: Path, ports: Ports, gateways: Iterable[int]) -> None:
    """Point the rendered Prometheus config's ``otelcol`` job at the agent and every gateway."""
    agent = f'"{HOST}:{ports.collector_metrics}"'
    source = prometheus_config.read_text()
    if agent not in source:
        raise StackError(f"rendered prometheus.yml has no collector target {agent}")
    targets = ", ".join([agent, *(f'"{HOST}:{port}"' for port in gateways)])
    prometheus_config.write_text(source.replace(agent, targets, 1))


class ScaledStack(LocalStack):
    """The local stack with an agent and ``gateways`` gateways in place of the one collector.

    Same backends, same ports for the apps (the agent takes the collector's), same ``with``
    and ``restart(name)``; the gateways are named ``gateway-1`` ... ``gateway-N``.
    ``gateway_env`` adds or overrides every gateway's variables, ``agent_env`` the agent's.
    """

    def __init__(
        self,
        gateways: int = DEFAULT_GATEWAYS,
        gateway_env: Mapping[str, str] | None = None,
        agent_env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if gateways < 1:
            raise StackError(f"a scaled stack needs at least one gateway, got {gateways}")
        self.gateway_ports: dict[str, GatewayPorts] = {}
        for index in range(gateways):
            self.gateway_ports[gateway_name(index)] = GatewayPorts.free(self._ports_in_use())
        self.gateway_env = dict(gateway_env or {})
        self.agent_env = dict(agent_env or {})

    def gateway_metrics_url(self, name: str) -> str:
        """One gateway's own Prometheus metrics."""
        return f"http://{HOST}:{self.gateway_ports[name].metrics}/metrics"

    def start(self) -> None:
        """Backends first, then the gateways, then the agent; raise if one is not ready."""
        paths = binary_paths()
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        planned = services(paths, self.data_dir, self.ports)
        backends = [service for service in planned if service.name != "otelcol"]
        self._services = {service.name: service for service in backends}
        for service in backends:
            self._spawn(service)
        for service in backends:
            self._wait_ready(service)
        for name in self.gateway_ports:
            self._start_gateway(paths, name)
        self._scrape_gateways()
        agent = agent_service(paths, self.ports, self.gateway_ports, self.agent_env)
        self._services[agent.name] = agent
        self._spawn(agent)
        self._wait_ready(agent)
        self._write_state()

    def _start_gateway(self, paths: Mapping[str, Path], name: str) -> None:
        """Start one gateway; on a port taken since it was chosen, again on fresh ports."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            service = gateway_service(
                paths,
                self.data_dir,
                self.ports,
                name,
                self.gateway_ports[name],
                gateway_env=self.gateway_env,
            )
            self._services[name] = service
            self._spawn(service)
            try:
                self._wait_ready(service)
            except StackError as error:
                if PORT_TAKEN not in str(error) or attempt == PORT_ATTEMPTS:
                    raise
                self._processes.pop(name)
                self.gateway_ports[name] = GatewayPorts.free(avoid=self._ports_in_use())
                self._say(f"{name:<12} port taken meanwhile; again on other ports")
            else:
                return

    def _ports_in_use(self) -> set[int]:
        taken = {int(port) for port in asdict(self.ports).values()}
        for own in self.gateway_ports.values():
            taken.update(int(port) for port in asdict(own).values())
        return taken

    def _scrape_gateways(self) -> None:
        """Add the gateways to Prometheus' ``otelcol`` job and have it reload (SIGHUP)."""
        scrape_collectors(
            self.data_dir / "prometheus.yml",
            self.ports,
            (own.metrics for own in self.gateway_ports.values()),
        )
        os.kill(self._processes["prometheus"].pid, signal.SIGHUP)


def new_stack(topology: str, data_dir: Path | None, gateways: int = DEFAULT_GATEWAYS) -> LocalStack:
    """The stack ``start`` runs: the single collector, or the agent and its gateways."""
    if topology == "scaled":
        return ScaledStack(gateways=gateways, data_dir=data_dir)
    return LocalStack(data_dir=data_dir)


def describe_gateways(stack: LocalStack) -> str:
    """Lines for ``start``'s summary: each gateway's OTLP and metrics address."""
    if not isinstance(stack, ScaledStack):
        return ""
    return "".join(
        f"  {name:<12} grpc {HOST}:{own.otlp_grpc}  {stack.gateway_metrics_url(name)}\n"
        for name, own in stack.gateway_ports.items()
    )


# --- command line ------------------------------------------------------------------------------
def _load_state(data_dir: Path | None) -> tuple[Path, dict[str, object]]:
    directory = data_dir or (CURRENT.resolve() if CURRENT.exists() else None)
    if directory is None or not (directory / "state.json").exists():
        raise StackError("no local stack found; start one with `python stack/run.py start`")
    return directory, json.loads((directory / "state.json").read_text())


def _processes(state: Mapping[str, object]) -> Iterator[tuple[str, int, str]]:
    processes = state.get("processes", {})
    assert isinstance(processes, dict)
    for name, info in processes.items():
        yield name, int(info["pid"]), str(info["argv"][0])


def _cmd_start(args: argparse.Namespace) -> int:
    stack = new_stack(args.topology, args.data_dir, args.gateways)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    CURRENT.unlink(missing_ok=True)
    CURRENT.symlink_to(stack.data_dir, target_is_directory=True)
    print(
        f"\nlocal stack up, data in {stack.data_dir}\n"
        f"  OTLP         grpc {HOST}:{stack.ports.otlp_grpc}  http {stack.otlp_http_endpoint}\n"
        f"  Prometheus   {stack.prometheus_url}\n"
        f"  Jaeger       {stack.jaeger_url}  (traces)\n"
        f"  VictoriaLogs {stack.victorialogs_url}  (logs, LogsQL)\n"
        f"  collector    {stack.collector_metrics_url}\n"
        f"{_postgres_summary(stack)}"
        f"{describe_gateways(stack)}"
        f"stop with: python stack/run.py stop"
    )
    if not args.foreground:
        return 0
    print("running in the foreground; Ctrl-C stops the stack")
    # SIGTERM too: exit through the finally below, which stops the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while stack.running():
            time.sleep(1)
        print("a process exited; stopping the stack", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()
        CURRENT.unlink(missing_ok=True)


def _postgres_summary(stack: LocalStack) -> str:
    if stack.postgres is None:
        return ""
    return (
        f"  PostgreSQL   {HOST}:{stack.ports.postgres}  (metrics: postgres_exporter on"
        f" {HOST}:{stack.ports.postgres_exporter})\n"
        f"  the shop on it: set -a; . {stack.data_dir / POSTGRES_ENV_FILE}; set +a\n"
    )


def _postgres_status(state: Mapping[str, object]) -> bool | None:
    """Print whether the stack's PostgreSQL accepts connections; None if it runs none."""
    postgres = state.get("postgres")
    if not isinstance(postgres, dict):
        return None
    pg = postgres_module()
    cluster = pg.Cluster(Path(str(postgres["directory"])), int(postgres["port"]), pg.install())
    ready = bool(pg.accepts_connections(cluster))
    print(f"  {'postgres':<12} port {cluster.port:<7} {'ready' if ready else 'not accepting'}")
    return ready


def _stop_postgres_of_state(state: Mapping[str, object]) -> None:
    postgres = state.get("postgres")
    if isinstance(postgres, dict):
        stop_postgres(Path(str(postgres["directory"])), print)


def _cmd_status(args: argparse.Namespace) -> int:
    directory, state = _load_state(args.data_dir)
    urls = state.get("ready_urls", {})
    assert isinstance(urls, dict)
    print(f"data: {directory}")
    healthy = True
    for name, pid, argv0 in _processes(state):
        running = _owned_by_state(pid, argv0)
        ready = running and _http_ok(str(urls.get(name, "")))
        healthy = healthy and ready
        status = "ready" if ready else ("running, not ready" if running else "stopped")
        print(f"  {name:<12} pid {pid:<8} {status}")
    postgres_ready = _postgres_status(state)
    return 0 if healthy and postgres_ready is not False else 1


def _cmd_stop(args: argparse.Namespace) -> int:
    directory, state = _load_state(args.data_dir)
    for name, pid, argv0 in reversed(list(_processes(state))):
        if _owned_by_state(pid, argv0):
            _terminate(pid, print, name)
        else:
            print(f"{name:<12} not running")
    _stop_postgres_of_state(state)
    if CURRENT.is_symlink() and CURRENT.resolve() == directory.resolve():
        CURRENT.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``start`` / ``status`` / ``stop``; non-zero when the stack is not (or no longer) healthy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="build if needed, start and wait until ready")
    start.add_argument("--data-dir", type=Path, help="default: ~/.cache/otel-dist-stack/run/<ts>")
    start.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops")
    start.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="single",
        help="single: one collector; scaled: an agent routing by trace id onto gateways",
    )
    start.add_argument(
        "--gateways", type=int, default=DEFAULT_GATEWAYS, help="gateways of --topology scaled"
    )
    for name, help_text in (("status", "show each process"), ("stop", "SIGTERM, then SIGKILL")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--data-dir", type=Path, help="default: the last started stack")
    args = parser.parse_args(argv)
    handler = {"start": _cmd_start, "status": _cmd_status, "stop": _cmd_stop}[args.command]
    try:
        return handler(args)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
