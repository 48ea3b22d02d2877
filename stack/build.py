"""Build the local stack's binaries from source with Go, and cache them; no Docker needed.

Components: ``otelcol`` (our OCB distribution, ``collector/builder-config.yaml``), ``prometheus``
(with ``promtool``), ``jaeger`` (v2, the trace store), ``victorialogs`` (the log store) and
``postgres_exporter`` (PostgreSQL server metrics for Prometheus), at the versions pinned in
``stack/versions.env``. Loki, Tempo and Grafana are not built: the module
list marks them not-to-use (AGPL); docker-compose.yml runs their images instead.

Each lands in ``~/.cache/otel-dist-stack/<name>-<version>/bin/``; a component whose binaries are
there, answer ``--version`` and were built from the same pinned source is skipped, so a cached
run takes seconds.

Usage::

    python stack/build.py                        # build whatever is missing
    python stack/build.py --only otelcol jaeger  # a subset
    python stack/build.py --print-paths          # name=/abs/path lines for other scripts
    python stack/build.py --print-plan           # name version module@version, nothing built

The cache root can be moved with ``OTEL_DIST_STACK_CACHE`` (e.g. to time a cold build beside a
warm cache). Concurrent runs take a per-component lock, so each component is built once.

Source comes only from the Go module proxy (``go mod download``, ``go install module@version``),
never a git clone. Go's output goes to ``<name>-<version>/build.log``; on failure its last lines
are printed and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSIONS_FILE = REPO / "stack" / "versions.env"
MANIFEST = REPO / "collector" / "builder-config.yaml"
CACHE = Path(os.environ.get("OTEL_DIST_STACK_CACHE", "~/.cache/otel-dist-stack")).expanduser()

# 2 cores on the reference machine: more parallel compile jobs only add memory pressure.
JOBS = "2"
LOG_TAIL_LINES = 40
VERSION_CHECK_TIMEOUT_S = 30
READY_TIMEOUT_S = 60

OCB_MODULE = "go.opentelemetry.io/collector/cmd/builder"
CORE_PREFIX = "go.opentelemetry.io/collector/"
STABLE_PREFIX = "go.opentelemetry.io/collector/confmap/"
CONTRIB_PREFIX = "github.com/open-telemetry/opentelemetry-collector-contrib/"
PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
JAEGER_MODULE = "github.com/jaegertracing/jaeger"
VICTORIALOGS_MODULE = "github.com/VictoriaMetrics/VictoriaLogs"
VICTORIALOGS_MAIN = "app/victoria-logs"
# VictoriaLogs takes its version string from VictoriaMetrics' buildinfo package.
VICTORIALOGS_BUILDINFO = "github.com/VictoriaMetrics/VictoriaMetrics/lib/buildinfo"
POSTGRES_EXPORTER_MODULE = "github.com/prometheus-community/postgres_exporter"
BUILD_USER = "otel-dist"
# Served by the proxy, but the checksum database (also through the proxy) answers 404 for them,
# so `go` would refuse them. Exempted one by one; go.sum still records the hash of the zip.
SUMDB_UNLISTED = (f"{CONTRIB_PREFIX}connector/servicegraphconnector",)

REQUIRED_KEYS = (
    "OTELCOL_VERSION",
    "OTELCOL_STABLE_VERSION",
    "OTELCOL_CONTRIB_VERSION",
    "OCB_VERSION",
    "PROMETHEUS_VERSION",
    "PROMETHEUS_GO_VERSION",
    "JAEGER_VERSION",
    "JAEGER_GO_VERSION",
    "VICTORIALOGS_VERSION",
    "VICTORIALOGS_GO_VERSION",
    "POSTGRES_EXPORTER_VERSION",
    "POSTGRES_EXPORTER_GO_VERSION",
)


class BuildError(Exception):
    """A build step failed; the message says which and why."""


# --- pinned versions ------------------------------------------------------------------------


def load_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse ``KEY=value`` lines (``#`` comments, blank lines) and check every key we need."""
    versions: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SystemExit(f"{path}:{number}: expected KEY=value, got {raw!r}")
        versions[key.strip()] = value.strip()
    missing = [key for key in REQUIRED_KEYS if key not in versions]
    if missing:
        raise SystemExit(f"{path}: missing {', '.join(missing)}")
    return versions


# --- components -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One thing to build: its pinned source, the binaries it yields and how to build them."""

    name: str
    version: str
    source: str
    binaries: tuple[str, ...]
    build: Callable[[Build], None]

    @property
    def home(self) -> Path:
        """The cache directory of this name and version."""
        return CACHE / f"{self.name}-{self.version}"

    def binary(self, binary: str) -> Path:
        """Where ``binary`` is installed."""
        return self.home / "bin" / binary


@dataclass(frozen=True)
class Build:
    """What a build function needs: the component, the pinned versions and its log file."""

    component: Component
    versions: dict[str, str]
    log: Path

    @property
    def bin_dir(self) -> Path:
        """The directory the finished binaries go to."""
        return self.component.home / "bin"

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Print when a step starts and how long it took."""
        started = time.monotonic()
        _say(self.component.name, f"{title} ...")
        yield
        _say(self.component.name, f"{title} done in {time.monotonic() - started:.1f}s")

    def go(
        self,
        *args: str,
        cwd: Path,
        extra_env: dict[str, str] | None = None,
        check: bool = True,
    ) -> str:
        """Run ``go`` with its output appended to the log; return stdout when ``-json`` is asked."""
        return _run(self.log, [_go(), *args], cwd=cwd, env=_go_env(extra_env), check=check)


def _say(name: str, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {message}", flush=True)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise SystemExit(
            "go is not on PATH: install Go 1.26.5 or newer (VictoriaLogs 1.52.2 needs it)"
        )
    return go


def _go_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Static, reproducible builds that fit a 2-core machine; module sources are not workspaces."""
    env = dict(os.environ)
    env.update(
        CGO_ENABLED="0",
        GOMAXPROCS=JOBS,
        GOFLAGS=f"-buildvcs=false -p={JOBS}",
        GOWORK="off",
    )
    env.update(extra or {})
    return env


def _run(
    log: Path, command: list[str], *, cwd: Path, env: dict[str, str], check: bool = True
) -> str:
    """Run ``command``, stderr (and stdout unless it is JSON) to ``log``; raise on failure."""
    wants_stdout = "-json" in command
    with log.open("a") as out:
        out.write(f"\n$ (cd {cwd} && {' '.join(command)})\n")
        out.flush()
        result = subprocess.run(  # noqa: S603 - argv built here from pinned versions, no shell
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE if wants_stdout else out,
            stderr=out,
            text=True,
            check=False,
        )
        if wants_stdout:
            out.write(result.stdout)
    if check and result.returncode != 0:
        raise BuildError(f"`{' '.join(command[:4])} ...` exited {result.returncode}")
    return result.stdout or ""


# --- shared steps ---------------------------------------------------------------------------


def download_module(b: Build, module: str, version: str) -> Path:
    """Fetch ``module@version`` through the module proxy; return its read-only cache dir."""
    spec = f"{module}@{version}"
    with b.step(f"download {spec}"):
        raw = b.go("mod", "download", "-json", spec, cwd=b.component.home, check=False)
        try:
            info = json.loads(raw)
        except json.JSONDecodeError:
            raise BuildError(f"cannot download {spec}: go printed no JSON (see the log)") from None
        if "Dir" not in info:
            error = " ".join(str(info.get("Error", "no module directory")).split())
            raise BuildError(f"cannot download {spec}: {error}")
    return Path(info["Dir"])


def writable_copy(source: Path, target: Path) -> Path:
    """Copy a module cache dir (read-only) to ``target`` and make it writable for go.mod edits."""
    if target.exists():
        _make_writable(target)
        shutil.rmtree(target)
    shutil.copytree(source, target, symlinks=True)
    _make_writable(target)
    return target


def _make_writable(root: Path) -> None:
    for directory, _, files in os.walk(root):
        Path(directory).chmod(0o755)
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)


def go_build(b: Build, src: Path, package: str, binary: str, ldflags: str = "") -> None:
    """``go build`` one main package of a copied module tree into the component's bin dir."""
    with b.step(f"go build {package}"):
        b.go(
            "build",
            "-mod=mod",
            "-trimpath",
            f"-ldflags=-s -w {ldflags}".strip(),
            "-o",
            str(b.bin_dir / binary),
            package,
            cwd=src,
        )


def _xflags(package: str, **values: str) -> str:
    return " ".join(f"-X {package}.{key}={value}" for key, value in values.items())


# --- otelcol ---------------------------------------------------------------------------------


def build_otelcol(b: Build) -> None:
    """Install OCB, render the manifest with an output path under the cache, run it."""
    check_manifest_versions(MANIFEST.read_text(), b.versions)
    ocb = install_ocb(b, b.versions["OCB_VERSION"])
    src = b.component.home / "src"
    manifest = b.component.home / "builder-config.yaml"
    manifest.write_text(render_manifest(MANIFEST.read_text(), src))
    with b.step("ocb generate + go build (strict versioning)"):
        _run(
            b.log,
            [str(ocb), "--config", str(manifest), "--skip-strict-versioning=false", "--verbose"],
            cwd=b.component.home,
            env=_go_env({"GONOSUMDB": _nosumdb()}),
        )
    shutil.move(src / "otelcol-otel-dist", b.bin_dir / "otelcol-otel-dist")


def _nosumdb() -> str:
    """``GONOSUMDB`` with our exemptions added to the user's own."""
    return ",".join(filter(None, [os.environ.get("GONOSUMDB", ""), *SUMDB_UNLISTED]))


def install_ocb(b: Build, version: str) -> Path:
    """``go install`` the builder once per version into ``<cache>/tools/ocb-<version>``."""
    gobin = CACHE / "tools" / f"ocb-{version}"
    builder = gobin / "builder"
    if builder.exists():
        return builder
    with b.step(f"go install {OCB_MODULE}@v{version}"):
        b.go(
            "install",
            "-trimpath",
            "-ldflags=-s -w",
            f"{OCB_MODULE}@v{version}",
            cwd=b.component.home,
            extra_env={"GOBIN": str(gobin)},
        )
    return builder


_GOMOD_LINE = re.compile(r"^\s*-\s*gomod:\s*(\S+)\s+v(\S+)", re.MULTILINE)
_DIST_VERSION = re.compile(r"^\s+version:\s*(\S+)", re.MULTILINE)
_OUTPUT_PATH = re.compile(r"^(\s*output_path:).*$", re.MULTILINE)


def check_manifest_versions(manifest: str, versions: dict[str, str]) -> None:
    """Refuse a manifest whose versions drift from versions.env (the one place they live)."""
    drift = [
        f"{module} v{found} (versions.env says v{_expected_version(module, versions)})"
        for module, found in _GOMOD_LINE.findall(manifest)
        if found != _expected_version(module, versions)
    ]
    dist = _DIST_VERSION.search(manifest)
    if dist is None or dist.group(1) != versions["OTELCOL_VERSION"]:
        drift.append(f"dist.version (versions.env says {versions['OTELCOL_VERSION']})")
    if drift:
        raise BuildError(f"{MANIFEST.name} disagrees with versions.env: " + "; ".join(drift))


def _expected_version(module: str, versions: dict[str, str]) -> str:
    if module.startswith(STABLE_PREFIX):
        return versions["OTELCOL_STABLE_VERSION"]
    if module.startswith(CORE_PREFIX):
        return versions["OTELCOL_VERSION"]
    if module.startswith(CONTRIB_PREFIX):
        return versions["OTELCOL_CONTRIB_VERSION"]
    raise BuildError(f"{MANIFEST.name}: no version rule for module {module}")


def render_manifest(manifest: str, output_path: Path) -> str:
    """The manifest with ``dist.output_path`` pointed at ``output_path``.

    OCB's ``--output-path`` flag still works but is deprecated in favour of the manifest key,
    so the build uses a rendered copy instead.
    """
    rendered, count = _OUTPUT_PATH.subn(rf"\g<1> {output_path}", manifest, count=1)
    if count != 1:
        raise BuildError(f"{MANIFEST.name}: no dist.output_path line to override")
    return rendered


# --- prometheus, jaeger, victorialogs --------------------------------------------------------


def build_prometheus(b: Build) -> None:
    """Prometheus and promtool without the ``builtinassets`` tag: HTTP API, no embedded UI."""
    module_dir = download_module(b, PROMETHEUS_MODULE, b.versions["PROMETHEUS_GO_VERSION"])
    src = writable_copy(module_dir, b.component.home / "src")
    ldflags = _xflags(
        "github.com/prometheus/common/version",
        Version=b.versions["PROMETHEUS_VERSION"],
        BuildUser=BUILD_USER,
    )
    go_build(b, src, "./cmd/prometheus", "prometheus", ldflags)
    go_build(b, src, "./cmd/promtool", "promtool", ldflags)
    with b.step("smoke test: prometheus answers /-/ready"):
        check_prometheus_ready(b.bin_dir / "prometheus")


def build_jaeger(b: Build) -> None:
    """Jaeger v2 (``cmd/jaeger``, an OTel-collector-based all-in-one), the trace store.

    Its module resolves only the v1.x tag of each release (JAEGER_GO_VERSION); the v2 version
    goes into ``jaeger --version``. No UI assets: the HTTP API is what the stack uses.
    """
    module_dir = download_module(b, JAEGER_MODULE, b.versions["JAEGER_GO_VERSION"])
    src = writable_copy(module_dir, b.component.home / "src")
    ldflags = _xflags(
        "github.com/jaegertracing/jaeger/internal/version",
        latestVersion=f"v{b.versions['JAEGER_VERSION']}",
    )
    go_build(b, src, "./cmd/jaeger", "jaeger", ldflags)


def build_victorialogs(b: Build) -> None:
    """VictoriaLogs' single-node server, ``go install``ed from the proxy into the bin dir.

    Its go.mod has no ``replace``, so unlike the others it needs no writable copy of the source.
    The embedded web UI comes with the module; the stack uses only the HTTP API.
    """
    spec = f"{VICTORIALOGS_MODULE}/{VICTORIALOGS_MAIN}@{b.versions['VICTORIALOGS_GO_VERSION']}"
    version = f"victoria-logs-v{b.versions['VICTORIALOGS_VERSION']}"
    with b.step(f"go install {spec}"):
        b.go(
            "install",
            "-trimpath",
            f"-ldflags=-s -w {_xflags(VICTORIALOGS_BUILDINFO, Version=version)}",
            spec,
            cwd=b.component.home,
            extra_env={"GOBIN": str(b.bin_dir)},
        )


def build_postgres_exporter(b: Build) -> None:
    """postgres_exporter, the Prometheus exporter of PostgreSQL's statistics views.

    Built from a downloaded copy rather than ``go install module@version``: the proxy answers
    403 for the module's version list, which ``go install`` reads to check for deprecation,
    while the pinned version's own files download.
    """
    module_dir = download_module(
        b, POSTGRES_EXPORTER_MODULE, b.versions["POSTGRES_EXPORTER_GO_VERSION"]
    )
    src = writable_copy(module_dir, b.component.home / "src")
    ldflags = _xflags(
        "github.com/prometheus/common/version",
        Version=b.versions["POSTGRES_EXPORTER_VERSION"],
        BuildUser=BUILD_USER,
    )
    go_build(b, src, "./cmd/postgres_exporter", "postgres_exporter", ldflags)


def check_prometheus_ready(prometheus: Path) -> None:
    """Start Prometheus on a free loopback port with a minimal config; wait for /-/ready; stop."""
    with tempfile.TemporaryDirectory(prefix="otel-dist-prom-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
        port = _free_port()
        command = [
            str(prometheus),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp}/data",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with (Path(tmp) / "prometheus.log").open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=out)  # noqa: S603
            try:
                _wait_ready(f"http://127.0.0.1:{port}/-/ready", process)
            finally:
                process.terminate()
                process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BuildError(f"prometheus exited {process.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback http
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    raise BuildError(f"{url} not ready after {READY_TIMEOUT_S}s")


# --- cache -----------------------------------------------------------------------------------


def components(versions: dict[str, str]) -> list[Component]:
    """Every buildable component, in build order."""
    return [
        Component(
            "otelcol",
            versions["OTELCOL_VERSION"],
            _otelcol_source(versions),
            ("otelcol-otel-dist",),
            build_otelcol,
        ),
        Component(
            "prometheus",
            versions["PROMETHEUS_VERSION"],
            f"{PROMETHEUS_MODULE}@{versions['PROMETHEUS_GO_VERSION']}",
            ("prometheus", "promtool"),
            build_prometheus,
        ),
        Component(
            "jaeger",
            versions["JAEGER_VERSION"],
            f"{JAEGER_MODULE}@{versions['JAEGER_GO_VERSION']}",
            ("jaeger",),
            build_jaeger,
        ),
        Component(
            "victorialogs",
            versions["VICTORIALOGS_VERSION"],
            f"{VICTORIALOGS_MODULE}@{versions['VICTORIALOGS_GO_VERSION']}",
            ("victoria-logs",),
            build_victorialogs,
        ),
        Component(
            "postgres_exporter",
            versions["POSTGRES_EXPORTER_VERSION"],
            f"{POSTGRES_EXPORTER_MODULE}@{versions['POSTGRES_EXPORTER_GO_VERSION']}",
            ("postgres_exporter",),
            build_postgres_exporter,
        ),
    ]


def _otelcol_source(versions: dict[str, str]) -> str:
    """The builder version plus a hash of the manifest, so editing the manifest rebuilds."""
    digest = hashlib.sha256(MANIFEST.read_bytes()).hexdigest()[:16]
    return f"ocb v{versions['OCB_VERSION']} + {MANIFEST.name} sha256:{digest}"


def is_cached(component: Component) -> bool:
    """The binaries exist, run, and were built from the same source as pinned now."""
    info = read_build_info(component.home / "BUILD_INFO")
    if info.get("source") != component.source:
        return False
    return all(_runs(component.binary(name)) for name in component.binaries)


def _runs(binary: Path) -> bool:
    if not binary.exists():
        return False
    try:
        result = subprocess.run(  # noqa: S603 - our own cached binary
            [str(binary), "--version"],
            capture_output=True,
            timeout=VERSION_CHECK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def read_build_info(path: Path) -> dict[str, str]:
    """``BUILD_INFO`` as a dict; empty when there is none."""
    if not path.exists():
        return {}
    pairs = (line.partition("=") for line in path.read_text().splitlines())
    return {key: value for key, _, value in pairs if key}


def write_build_info(component: Component, seconds: float) -> None:
    """Record what was built, from what, how long it took and with which Go."""
    go_version = subprocess.run(  # noqa: S603 - fixed argv
        [_go(), "env", "GOVERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()
    lines = {
        "name": component.name,
        "version": component.version,
        "source": component.source,
        "build_seconds": f"{seconds:.1f}",
        "go_version": go_version,
        "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "binaries": ",".join(str(component.binary(name)) for name in component.binaries),
    }
    text = "".join(f"{key}={value}\n" for key, value in lines.items())
    (component.home / "BUILD_INFO").write_text(text)


# --- driver ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one component went: ``cached``, ``built`` or ``FAILED``, and how long it took."""

    component: Component
    status: str
    seconds: float


def ensure(component: Component, versions: dict[str, str]) -> Outcome:
    """Skip a component that is cached, else build it; never raise for a build failure."""
    started = time.monotonic()
    with _exclusive(component):
        return _ensure_locked(component, versions, started)


@contextmanager
def _exclusive(component: Component) -> Iterator[None]:
    """Hold the component's lock, so concurrent runs build it once and the others reuse it."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{component.name}-{component.version}.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(component.name, "another build.py is building it; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ensure_locked(component: Component, versions: dict[str, str], started: float) -> Outcome:
    if is_cached(component):
        _say(component.name, f"{component.version} cached in {component.home}")
        return Outcome(component, "cached", time.monotonic() - started)
    component.home.mkdir(parents=True, exist_ok=True)
    (component.home / "bin").mkdir(exist_ok=True)
    log = component.home / "build.log"
    log.write_text(f"# {component.name} {component.version} from {component.source}\n")
    _say(component.name, f"building {component.version} (log: {log})")
    try:
        component.build(Build(component, versions, log))
        missing = [name for name in component.binaries if not _runs(component.binary(name))]
        if missing:
            raise BuildError(f"built, but {', '.join(missing)} does not answer --version")
    except BuildError as error:
        _report_failure(component, str(error), log)
        return Outcome(component, "FAILED", time.monotonic() - started)
    seconds = time.monotonic() - started
    write_build_info(component, seconds)
    _say(component.name, f"built {component.version} in {seconds:.1f}s")
    return Outcome(component, "built", seconds)


def _report_failure(component: Component, reason: str, log: Path) -> None:
    tail = log.read_text().splitlines()[-LOG_TAIL_LINES:]
    print(
        f"\nFAILED {component.name} {component.version}: {reason}\n"
        f"log: {log} (last {len(tail)} lines below)\n" + "\n".join(f"  | {line}" for line in tail),
        file=sys.stderr,
        flush=True,
    )


def print_paths(selected: list[Component]) -> None:
    """``name=/abs/path`` per binary; a missing one is reported on stderr, not hidden."""
    for component in selected:
        for name in component.binaries:
            path = component.binary(name)
            key = component.name if name == component.binaries[0] else name
            print(f"{key}={path}")
            if not path.exists():
                print(f"missing: {path} (run python stack/build.py)", file=sys.stderr)


def build_plan(versions: dict[str, str]) -> list[str]:
    """Every Go module the build fetches by name, as ``module@version``.

    Each component's source, OCB and every module of the collector manifest (their own
    dependencies come from their go.sum). Nothing is downloaded to list them.
    """
    plan = [f"{OCB_MODULE}@v{versions['OCB_VERSION']}"]
    plan += [
        f"{module}@v{version}" for module, version in _GOMOD_LINE.findall(MANIFEST.read_text())
    ]
    plan += [c.source for c in components(versions) if c.name != "otelcol"]
    return plan


def print_plan(selected: list[Component], versions: dict[str, str]) -> None:
    """``component name version source`` per component, then ``module module@version`` lines."""
    for component in selected:
        print(f"component {component.name} {component.version} {component.source}")
    for module in build_plan(versions):
        print(f"module {module}")


def main(argv: list[str] | None = None) -> int:
    """Build (or find cached) every selected component; non-zero if any failed."""
    versions = load_versions()
    known = components(versions)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", nargs="+", choices=[c.name for c in known], metavar="NAME")
    parser.add_argument("--print-paths", action="store_true", help="print name=path and exit")
    parser.add_argument(
        "--print-plan", action="store_true", help="print what would be built, from which modules"
    )
    args = parser.parse_args(argv)
    selected = [c for c in known if not args.only or c.name in args.only]
    if args.print_paths:
        print_paths(selected)
        return 0
    if args.print_plan:
        print_plan(selected, versions)
        return 0
    outcomes = [ensure(component, versions) for component in selected]
    print("\nsummary:")
    for outcome in outcomes:
        c = outcome.component
        print(f"  {c.name:<13} {c.version:<9} {outcome.status:<7} {outcome.seconds:8.1f}s")
    failed = [o.component.name for o in outcomes if o.status == "FAILED"]
    if failed:
        print(f"\nbuild failed for: {', '.join(failed)} (see the logs above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
