"""Processes the benchmark starts: the app under uvicorn, the sink, one-shot Python runs.

Each runs in its own session so it can be stopped with its children; the app and the one-shot
runs are pinned to the app CPU, the sink to the load CPU. Output goes to files, never pipes a
chatty app could fill (the sink's control pipe carries only its own short replies).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any


class BenchError(RuntimeError):
    """A benchmark step failed: a setup did not start, answered wrongly or exported nothing."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """``argv`` under ``taskset -c cpu`` when pinning is possible."""
    if cpu is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


def http_get(port: int, path: str, timeout: float = 5.0) -> int:
    """Status of ``GET path`` on 127.0.0.1:``port`` over a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _kill_group(process: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def stop_process(
    process: subprocess.Popen[Any], timeout: float = 15.0, sig: int = signal.SIGTERM
) -> int:
    """Send ``sig``, wait up to ``timeout`` (exit flushes), SIGKILL the group; the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.wait(timeout=10)
    _kill_group(process)
    return int(process.returncode)


def rss_mb(pid: int) -> dict[str, float]:
    """Resident set size now (VmRSS) and at peak (VmHWM), in MiB, from /proc/<pid>/status."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            values[key] = int(rest.split()[0]) / 1024  # kB
    return {"rss_mb": values["VmRSS"], "peak_rss_mb": values["VmHWM"]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat, to compute utilisation between two calls."""
    times: dict[str, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text(encoding="utf-8").splitlines():
        name, *numbers = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        values = [int(n) for n in numbers]
        idle = values[3] + values[4]  # idle + iowait
        times[name] = (sum(values) - idle, sum(values))
    return times


def utilisation(
    before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]]
) -> dict[str, float]:
    """Busy fraction of each CPU between two ``cpu_times()`` snapshots."""
    result: dict[str, float] = {}
    for name, (busy, total) in after.items():
        busy0, total0 = before.get(name, (0, 0))
        result[name] = round((busy - busy0) / max(total - total0, 1), 3)
    return result


class App:
    """The app under uvicorn in one setup, from spawn to first 200 on ``/ping``."""

    def __init__(self, argv: list[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> None:
        self.argv = argv
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_ms = 0.0

    def start(self, port: int, timeout: float = 60.0) -> App:
        self.port = port
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            started = time.perf_counter()
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        deadline = started + timeout
        while True:
            if self.process.poll() is not None:
                raise BenchError(
                    f"app exited with {self.process.returncode} before serving\n{self.tail()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_get(port, "/ping", timeout=1.0) == 200:
                    break
            if time.perf_counter() > deadline:
                self.stop()
                raise BenchError(
                    f"app did not answer 200 on /ping within {timeout}s\n{self.tail()}"
                )
            time.sleep(0.005)
        self.startup_ms = (time.perf_counter() - started) * 1e3
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> int:
        """Stop uvicorn with SIGINT and wait for its exit flush.

        Not SIGTERM: uvicorn re-raises the signal it stopped on after its graceful shutdown, and
        a re-raised SIGTERM kills the process before ``atexit`` runs, so the stock setup's
        providers would never flush (otel_dist hooks SIGTERM itself). A re-raised SIGINT becomes
        KeyboardInterrupt, and every setup's ``atexit`` flush runs.
        """
        if self.process is None:
            return 0
        return stop_process(self.process, sig=signal.SIGINT)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class SinkProcess:
    """``python -m bench.sink`` (OtlpSink with store=False) in its own process, pinned."""

    def __init__(self, python: str, env: Mapping[str, str], cwd: Path, cpu: int | None) -> None:
        self._argv = pinned([python, "-m", "bench.sink"], cpu)
        self._env = dict(env)
        self._cwd = cwd
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> SinkProcess:
        self.process = subprocess.Popen(
            self._argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=self._env,
            cwd=self._cwd,
            start_new_session=True,
        )
        self.port = int(json.loads(self._readline())["port"])
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stats(self) -> dict[str, Any]:
        """Counts received so far: requests and decoded items per signal, bad requests."""
        self._write("stats")
        return dict(json.loads(self._readline()))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            self._write("quit")
        stop_process(self.process, timeout=5)

    def _write(self, line: str) -> None:
        stream = self._pipe(self.process.stdin if self.process else None)
        stream.write(line + "\n")
        stream.flush()

    def _readline(self) -> str:
        line = self._pipe(self.process.stdout if self.process else None).readline()
        if not line:
            raise BenchError("the OTLP sink process exited")
        return line

    @staticmethod
    def _pipe(stream: IO[str] | None) -> IO[str]:
        if stream is None:
            raise BenchError("the OTLP sink process is not running")
        return stream

    def __enter__(self) -> SinkProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_python(
    argv: list[str], env: Mapping[str, str], cwd: Path, log_path: Path, timeout: float
) -> float:
    """Run a one-shot process to completion; returns its spawn time (``time.time()``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        spawned = time.time()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.wait()
            raise BenchError(f"{' '.join(argv)} took more than {timeout}s") from None
    if code != 0:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        tail = "\n".join(text.splitlines()[-30:])
        raise BenchError(f"{' '.join(argv)} exited with {code}\n{tail}")
    return spawned
