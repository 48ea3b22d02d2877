"""The stock setup's own virtualenv, ``.bench/venv-stock-3.X``, pinned to the versions we run.

The app's libraries are pinned to the versions installed in the running (main) venv, so both
sides serve the same code; the OpenTelemetry packages to the SDK and contrib releases otel_dist
depends on. The venv is rebuilt when the pin list changes (it is recorded in a stamp file).
"""

from __future__ import annotations

import subprocess
import sys
import venv
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
# One per Python version: the stock venv is made with the interpreter running the benchmark, and
# the suites of several Pythons may run at once in one checkout.
STOCK_VENV = BENCH_DIR / f"venv-stock-{sys.version_info[0]}.{sys.version_info[1]}"

# The app runtime: same versions on both sides (uvloop/httptools only if the main venv has them).
APP_PACKAGES = (
    "fastapi",
    "starlette",
    "pydantic",
    "pydantic-core",
    "sqlalchemy",
    "greenlet",
    "structlog",
    "uvicorn",
    "h11",
    "anyio",
    "uvloop",
    "httptools",
)
# SDK-train packages (1.45.x) and contrib-train packages (0.66bN), as the stock user installs them.
SDK_PACKAGES = ("opentelemetry-api", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http")
CONTRIB_PACKAGES = (
    "opentelemetry-distro",
    "opentelemetry-instrumentation",
    "opentelemetry-instrumentation-fastapi",
    "opentelemetry-instrumentation-sqlalchemy",
    "opentelemetry-instrumentation-logging",
)


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def stock_requirements() -> list[str]:
    """``name==version`` lines for the stock venv, read from the running environment."""
    sdk = _installed("opentelemetry-sdk")
    contrib = _installed("opentelemetry-instrumentation")
    if sdk is None or contrib is None:
        raise RuntimeError("run the benchmark from the project venv (make bench)")
    pins = [f"{name}=={v}" for name in APP_PACKAGES if (v := _installed(name)) is not None]
    pins += [f"{name}=={sdk}" for name in SDK_PACKAGES]
    pins += [f"{name}=={contrib}" for name in CONTRIB_PACKAGES]
    return pins


def venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def ensure_stock_venv(*, quiet: bool = True) -> Path:
    """Create or update ``.bench/venv-stock-3.X``; returns its ``bin`` directory."""
    pins = stock_requirements()
    stamp = STOCK_VENV / "bench-requirements.txt"
    wanted = "\n".join(pins) + "\n"
    if stamp.exists() and stamp.read_text(encoding="utf-8") == wanted:
        return STOCK_VENV / "bin"
    print(
        f"bench: creating {STOCK_VENV.relative_to(ROOT)} ({len(pins)} pinned packages)", flush=True
    )
    venv.EnvBuilder(clear=True, with_pip=True).create(STOCK_VENV)
    python = str(venv_python(STOCK_VENV))
    flags = ["--quiet"] if quiet else []
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", *flags]
    subprocess.run([*pip, *pins], check=True)
    stamp.write_text(wanted, encoding="utf-8")
    return STOCK_VENV / "bin"


def main_bin() -> Path:
    """The ``bin`` directory of the venv running the benchmark (the project venv)."""
    return Path(sys.executable).parent


if __name__ == "__main__":
    print(ensure_stock_venv(quiet=False))
