"""The HTTP load generator: wrk (preferred) or hey, installed on first use, and its output parsed.

wrk comes from the system package manager (``apt-get install wrk``, needs root or password-less
sudo); hey from the Go module proxy (``go install github.com/rakyll/hey@v0.1.5`` into
``~/.cache/otel-dist-bench/bin``, needs Go). ``auto`` takes wrk when it is or can be installed,
else hey. Both run one thread with a fixed number of keep-alive connections for a fixed time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HEY_MODULE = "github.com/rakyll/hey@v0.1.5"
HEY_BIN_DIR = Path.home() / ".cache" / "otel-dist-bench" / "bin"


class LoadToolError(RuntimeError):
    """No load tool could be found or installed, or a run failed."""


@dataclass(frozen=True)
class LoadResult:
    """One load run: throughput, latency percentiles (ms) and what went wrong."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoadTool:
    """A load tool found on this machine."""

    name: str
    path: str
    version: str

    def run(self, url: str, *, connections: int, duration_s: float, cpu: int | None) -> LoadResult:
        """Load ``url`` for ``duration_s`` seconds with ``connections`` concurrent connections."""
        seconds = max(1, round(duration_s))
        if self.name == "wrk":
            argv = [self.path, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
        else:
            argv = [self.path, "-c", str(connections), "-z", f"{seconds}s", url]
        if cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        env = dict(os.environ, GOMAXPROCS="1")
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise LoadToolError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
        parse = parse_wrk if self.name == "wrk" else parse_hey
        try:
            return parse(done.stdout)
        except (ValueError, AttributeError) as error:
            raise LoadToolError(
                f"unreadable {self.name} output ({error}):\n{done.stdout}"
            ) from None


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def _search(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise ValueError(f"no match for {pattern!r}")
    return match


def parse_wrk(text: str) -> LoadResult:
    """Read ``wrk --latency`` output."""
    errors = 0
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if sockets is not None:
        # A read error is the server closing a connection (uvicorn does after every unhandled
        # exception), not a failed request: wrk reconnects. Connect/write/timeout are failures.
        errors = int(sockets.group(1)) + int(sockets.group(3)) + int(sockets.group(4))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return LoadResult(
        requests=int(_search(r"^\s*(\d+) requests in", text).group(1)),
        rps=float(_search(r"^Requests/sec:\s+([\d.]+)", text).group(1)),
        p50_ms=_ms(_search(r"^\s+50%\s+(\S+)", text).group(1)),
        p99_ms=_ms(_search(r"^\s+99%\s+(\S+)", text).group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=errors,
    )


def parse_hey(text: str) -> LoadResult:
    """Read hey's default summary output."""
    statuses = {
        int(code): int(count) for code, count in re.findall(r"\[(\d+)\]\s+(\d+) responses", text)
    }
    error_counts = re.findall(r"^\s+\[(\d+)\]\s+(?!\d+ responses)", text, re.MULTILINE)
    return LoadResult(
        requests=sum(statuses.values()),
        rps=float(_search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        p50_ms=float(_search(r"50%+ in ([\d.]+) secs", text).group(1)) * 1e3,
        p99_ms=float(_search(r"99%+ in ([\d.]+) secs", text).group(1)) * 1e3,
        non_2xx=sum(count for code, count in statuses.items() if not 200 <= code < 400),
        errors=sum(int(count) for count in error_counts),
    )


def _apt_install(package: str) -> bool:
    apt = shutil.which("apt-get")
    if apt is None:
        return False
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None or subprocess.run([sudo, "-n", "true"], check=False).returncode != 0:
            return False
        prefix = [sudo, "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", package]):
        if subprocess.run([*prefix, *argv], env=env, check=False).returncode != 0:
            return False
    return shutil.which(package) is not None


def _wrk(install: bool) -> LoadTool | None:
    path = shutil.which("wrk")
    if path is None and not install:
        return None
    if path is None:
        print("bench: wrk not found; installing it with apt-get", flush=True)
        if not _apt_install("wrk"):
            return None
        path = shutil.which("wrk")
        if path is None:
            return None
    # wrk has no --version; its usage text names the version and exits non-zero.
    usage = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    first = (usage.stdout or usage.stderr).splitlines()
    return LoadTool("wrk", path, first[0].split("Copyright")[0].strip() if first else "wrk")


def _hey(install: bool) -> LoadTool | None:
    path = HEY_BIN_DIR / "hey"
    if not path.exists() and not install:
        return None
    if not path.exists():
        go = shutil.which("go")
        if go is None:
            return None
        print(f"bench: installing hey ({HEY_MODULE}) into {HEY_BIN_DIR}", flush=True)
        env = dict(os.environ, GOBIN=str(HEY_BIN_DIR))
        if subprocess.run([go, "install", HEY_MODULE], env=env, check=False).returncode != 0:
            return None
    version = subprocess.run(
        ["go", "version", "-m", str(path)], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"^\s+mod\s+\S+\s+(\S+)", version, re.MULTILINE)
    return LoadTool("hey", str(path), f"hey {match.group(1) if match else '?'}")


def find_load_tool(preference: str = "auto", *, install: bool = True) -> LoadTool:
    """The load tool to use, installing it if needed and allowed; ``LoadToolError`` if none.

    ``install=False`` (the test smoke) only takes a tool already on the machine: tests never
    install anything; ``make bench-tools`` installs the pinned wrk beforehand.
    """
    finders = {"wrk": [_wrk], "hey": [_hey], "auto": [_wrk, _hey]}[preference]
    for finder in finders:
        tool = finder(install)
        if tool is not None:
            return tool
    hint = "run make bench-tools" if not install else "install wrk (apt-get install wrk) or Go"
    raise LoadToolError(f"no load tool ({preference}): {hint}")
