"""Start real servers (uvicorn, gunicorn, opentelemetry-instrument, the sink CLI) in subprocesses.

Every server binds 127.0.0.1 on a port chosen by the test, runs in its own session (process
group) so stragglers such as gunicorn workers can be killed together, and writes stdout+stderr to
a file rather than a pipe so a chatty server can never block on a full pipe buffer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

NATIVE_EXPORT_VARIABLE = "OTEL_DIST_NATIVE_EXPORT"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def venv_bin(name: str) -> str:
    """The path of console script ``name`` installed next to the running interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed in {path.parent}")
    return str(path)


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """``os.environ`` without OTEL_* variables (but OTEL_DIST_NATIVE_EXPORT), then ``env``."""
    merged = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    # The suite's choice of span export path (make faults-ci NATIVE=off) reaches every app.
    if NATIVE_EXPORT_VARIABLE in os.environ:
        merged[NATIVE_EXPORT_VARIABLE] = os.environ[NATIVE_EXPORT_VARIABLE]
    merged["PYTHONUNBUFFERED"] = "1"  # so output() shows what the server printed so far
    merged.update(env)
    return merged


@dataclass
class ServerProcess:
    """A server started by ``start_server``; ``stop`` it (the fixtures do it for you)."""

    process: subprocess.Popen[bytes]
    port: int
    base_url: str
    output_path: Path

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.output_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, path: str = "/healthz", timeout: float = 20) -> None:
        """Poll ``path`` until the server answers anything; raise with its output otherwise."""
        deadline = time.monotonic() + timeout
        url = self.base_url + path
        while True:
            returncode = self.process.poll()
            if returncode is not None:
                raise RuntimeError(
                    f"server exited with code {returncode} before answering {url}\n"
                    f"--- output ---\n{self.output()}"
                )
            try:
                httpx.get(url, timeout=1.0)
            except httpx.TransportError:
                pass
            else:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"server did not answer {url} within {timeout}s\n"
                    f"--- output ---\n{self.output()}"
                )
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send ``sig`` to the server, wait, then kill its whole process group; the exit code.

        The signal goes to the main process only (a gunicorn master must get to stop its
        workers itself); whatever is left of the group afterwards, or if the wait times out, is
        SIGKILLed.
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.process.wait(timeout=10)
        self._kill_group()
        return self.process.returncode

    def _kill_group(self) -> None:
        # start_new_session=True made the server the leader of a group with its own pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


# How long a server may take to answer its first request: a spawned worker under the launcher
# needs about 2 s of CPU before it serves, which took over 20 s with the stack's Go build and
# other suites sharing the 2 cores (uvicorn --workers 2 under 3.13 at load 14).
READY_TIMEOUT_S = 60


def start_server(
    argv: list[str],
    *,
    env: Mapping[str, str],
    port: int,
    cwd: str | Path | None = None,
    ready_path: str | None = "/healthz",
    ready_timeout: float = READY_TIMEOUT_S,
    output_dir: str | Path | None = None,
) -> ServerProcess:
    """Run ``argv`` (which must listen on 127.0.0.1:``port``) and wait until it answers.

    ``env`` is merged over ``clean_env``. With ``ready_path=None`` the call returns at once (for
    servers expected to fail at startup). If the server is not ready in time it is stopped and
    the error carries its output. The output file is kept after ``stop`` so tests can read it.
    """
    fd, output_name = tempfile.mkstemp(prefix="server-", suffix=".log", dir=output_dir)
    with os.fdopen(fd, "wb") as output_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output_file,
            stderr=subprocess.STDOUT,
            env=clean_env(env),
            cwd=cwd,
            start_new_session=True,
        )
    server = ServerProcess(
        process=process,
        port=port,
        base_url=f"http://127.0.0.1:{port}",
        output_path=Path(output_name),
    )
    if ready_path is not None:
        try:
            server.wait_ready(ready_path, timeout=ready_timeout)
        except BaseException:
            server.stop(timeout=5)
            raise
    return server


REPO_ROOT = Path(__file__).resolve().parent.parent.parent
PID_APP = "tests.apps.pid_app:app"


def pid_app_env(endpoint: str, **extra: str) -> dict[str, str]:
    """Environment for ``tests/apps/pid_app.py`` exporting to ``endpoint`` quickly."""
    return {
        "PYTHONPATH": str(REPO_ROOT),
        "OTEL_SERVICE_NAME": "pid-app",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        **extra,
    }


# uvicorn's supervisor kills a worker that does not answer its ping within 5 s of starting, and
# a spawned worker answers only once its interpreter has started: under the launcher that
# includes setting OpenTelemetry up (about 1 s of CPU), which on a machine at load 14 takes
# longer. The workers were then killed and respawned without end.
WORKER_HEALTHCHECK_S = "60"


def uvicorn_argv(app: str, port: int, *options: str, zero_code: bool = True) -> list[str]:
    """``uvicorn APP`` on 127.0.0.1:port, under ``opentelemetry-instrument`` when zero-code."""
    argv = [venv_bin("uvicorn"), app, *options, "--host", "127.0.0.1", "--port", str(port)]
    if "--workers" in options:
        argv += ["--timeout-worker-healthcheck", WORKER_HEALTHCHECK_S]
    return [venv_bin("opentelemetry-instrument"), *argv] if zero_code else argv


def gunicorn_argv(app: str, port: int, *options: str, zero_code: bool = False) -> list[str]:
    """Two uvicorn workers under gunicorn on 127.0.0.1:port (zero-code: under the launcher)."""
    argv = [
        venv_bin("gunicorn"),
        app,
        "-w",
        "2",
        "-k",
        "uvicorn.workers.UvicornWorker",
        *options,
        "-b",
        f"127.0.0.1:{port}",
    ]
    return [venv_bin("opentelemetry-instrument"), *argv] if zero_code else argv
