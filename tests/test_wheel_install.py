"""The built wheel, installed into a fresh virtualenv, serves an app zero-code.

What a user gets from ``make dist``: the wheel is built by the PEP 517 front end, installed with
pip into a new virtualenv (no editable install; run from a temporary directory with no repo on
``sys.path``), and ``opentelemetry-instrument uvicorn`` from that virtualenv serves a tiny app
whose span must reach a real OTLP sink. Dependencies are pinned to the versions of the test's
own environment, so pip takes them from its local cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from otel_dist.tools.sink import OtlpSink
from support.servers import REPO_ROOT, ServerProcess, free_port

pytestmark = pytest.mark.integration

# The one place the version is written (tomllib is 3.11+, and the [project] table is simple).
PROJECT_VERSION = re.search(
    r'^version = "([^"]+)"$', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE
).group(1)
TINY_APP = REPO_ROOT / "tests" / "apps" / "tiny_app.py"


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _outside_env() -> dict[str, str]:
    """The environment with nothing that would put the repo or another venv on the path."""
    dropped = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("OTEL_")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _build_wheel(out: Path) -> Path:
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO_ROOT)], out)
    (wheel,) = out.glob("otel_dist-*.whl")
    return wheel


def _constraints(path: Path) -> Path:
    """This environment's versions, so the new venv gets the cached wheels the tests ran with."""
    frozen = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], path.parent)
    path.write_text(frozen)
    return path


def _fresh_venv_with(wheel: Path, venv: Path) -> Path:
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], venv.parent)
    python = venv / "bin" / "python"
    constraints = _constraints(venv.parent / "constraints.txt")
    _run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"),
            *("--constraint", str(constraints), str(wheel), "uvicorn"),
        ],
        venv.parent,
        _outside_env(),
    )
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtualenv holding the freshly built wheel and uvicorn."""
    workdir = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(workdir)
    assert wheel.name == f"otel_dist-{PROJECT_VERSION}-py3-none-any.whl"
    return _fresh_venv_with(wheel, workdir / "venv")


def test_the_wheel_is_imported_from_the_venv_not_the_repo(installed: Path, tmp_path: Path):
    probe = (
        "import json, otel_dist, sys; "
        "print(json.dumps([otel_dist.__file__, otel_dist.__version__, sys.path]))"
    )
    file, version, path = json.loads(_run([str(installed), "-c", probe], tmp_path, _outside_env()))
    venv = installed.parent.parent
    assert Path(file).is_relative_to(venv / "lib"), file
    assert version == PROJECT_VERSION
    assert not any(entry and Path(entry).resolve().is_relative_to(REPO_ROOT) for entry in path)


def test_the_installed_wheel_serves_an_app_zero_code(
    installed: Path, tmp_path: Path, server_factory: Callable[..., ServerProcess]
):
    shutil.copy(TINY_APP, tmp_path / "tiny_app.py")
    bin_dir = installed.parent
    port = free_port()
    with OtlpSink() as sink:
        server = server_factory(
            [
                *(str(bin_dir / "opentelemetry-instrument"), str(bin_dir / "uvicorn")),
                *("tiny_app:app", "--host", "127.0.0.1", "--port", str(port)),
            ],
            env={
                **_outside_env(),
                "OTEL_SERVICE_NAME": "wheel-app",
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            },
            port=port,
            cwd=tmp_path,
            ready_timeout=60,
        )
        response = httpx.get(f"{server.base_url}/hello", timeout=30)
        assert response.status_code == 200
        trace_id = response.headers["traceresponse"].split("-")[1]

        def arrived(s: OtlpSink) -> bool:
            return any(span.trace_id == trace_id for span in s.spans())

        assert sink.wait_for(arrived, timeout=60), server.output()
        server.stop()  # while the sink still answers its exit flush
    (span,) = [s for s in sink.spans() if s.trace_id == trace_id and s.kind == "SERVER"]
    assert span.name == "GET /hello"
    assert span.resource["service.name"] == "wheel-app"
    assert span.resource["telemetry.distro.name"] == "otel-dist"
    assert span.resource["telemetry.distro.version"] == PROJECT_VERSION
