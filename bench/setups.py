"""The setups compared: how each one starts the same app, and with which environment.

* ``none``: the app alone (project venv);
* ``stock``: ``opentelemetry-instrument`` with ``opentelemetry-distro`` and the contrib FastAPI,
  SQLAlchemy and logging instrumentations (``.bench/venv-stock-3.X``);
* ``dist-instrument``: otel_dist under ``opentelemetry-instrument`` (project venv);
* ``dist-configure``: otel_dist through ``configure(app=..., engine=...)`` in ``bench.serve``;
* ``floor``: the same signals wired by hand on the bare SDK (``bench.floor``): the reference
  otel_dist is priced against;
* ``dist-configure-10pct`` and ``floor-10pct``: the production profile, the same two at
  ``parentbased_traceidratio`` 0.1 with metrics and logs on;
* ``dist-configure-native`` and ``dist-configure-native-10pct``: ``dist-configure`` and its
  production profile with spans exported by fastotel (the ``[native]`` extra), off the GIL.
  The other otel_dist setups run with ``OTEL_DIST_NATIVE_EXPORT=off``: the SDK's exporter.

All telemetry setups export traces, metrics and logs over OTLP/HTTP (protobuf) to the same sink,
with 100% sampling unless their name ends in ``-10pct``. Every other ``OTEL_*`` variable is
removed from the environment, so each setup runs with its own defaults otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SETUP_NAMES = (
    "none",
    "stock",
    "floor",
    "dist-instrument",
    "dist-configure",
    "floor-10pct",
    "dist-configure-10pct",
    "dist-configure-native",
    "dist-configure-native-10pct",
)
LABELS = {
    "none": "no telemetry",
    "stock": "stock (opentelemetry-instrument + opentelemetry-distro)",
    "floor": "floor (bare SDK, hand-wired)",
    "dist-instrument": "otel_dist (opentelemetry-instrument)",
    "dist-configure": "otel_dist (configure())",
    "floor-10pct": "floor at 10% sampling",
    "dist-configure-10pct": "otel_dist (configure()) at 10% sampling",
    "dist-configure-native": "otel_dist (configure()), native span export",
    "dist-configure-native-10pct": "otel_dist (configure()), native span export, at 10% sampling",
}
# In-process telemetry: which ``BENCH_TELEMETRY`` value ``bench.serve`` acts on.
IN_PROCESS = {
    "floor": "floor",
    "dist-configure": "configure",
    "floor-10pct": "floor",
    "dist-configure-10pct": "configure",
    "dist-configure-native": "configure",
    "dist-configure-native-10pct": "configure",
}
PRODUCTION_SAMPLER = {
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.1",
}
APP = "bench.serve:app"


@dataclass(frozen=True)
class Setup:
    """One way of running the app: which venv, launcher and environment."""

    name: str
    bin_dir: Path
    launcher: bool  # wrapped in opentelemetry-instrument
    env: dict[str, str]

    @property
    def telemetry(self) -> bool:
        return self.name != "none"

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def python_argv(self, *args: str) -> list[str]:
        """``[opentelemetry-instrument] python args...`` in this setup's venv."""
        return self._launch([str(self.bin_dir / "python"), *args])

    def uvicorn_argv(self, port: int) -> list[str]:
        """uvicorn serving the app on 127.0.0.1:``port`` with one worker and no access log."""
        return self._launch(
            [
                str(self.bin_dir / "uvicorn"),
                APP,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ]
        )

    def _launch(self, argv: list[str]) -> list[str]:
        if self.launcher:
            return [str(self.bin_dir / "opentelemetry-instrument"), *argv]
        return argv


def _telemetry_env(service: str, endpoint: str) -> dict[str, str]:
    return {
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


def base_env(root: Path, bin_dir: Path) -> dict[str, str]:
    """The parent's environment minus OTel/FastAPI telemetry settings, with the venv first."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "FASTAPI_OTEL", "BENCH_", "PYTHON"))
        and key not in {"VIRTUAL_ENV"}
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(root)
    return env


def make_setup(name: str, *, root: Path, main_bin: Path, stock_bin: Path, endpoint: str) -> Setup:
    """The setup ``name`` exporting (if it has telemetry) to the OTLP base URL ``endpoint``."""
    bin_dir = stock_bin if name == "stock" else main_bin
    env = base_env(root, bin_dir)
    if name != "none":
        env |= _telemetry_env(f"bench-{name}", endpoint)
    if name == "dist-instrument":
        # Only otel_dist is installed in the project venv; naming it makes the choice explicit.
        env |= {"OTEL_PYTHON_DISTRO": "otel_dist", "OTEL_PYTHON_CONFIGURATOR": "otel_dist"}
    if name in IN_PROCESS:
        env["BENCH_TELEMETRY"] = IN_PROCESS[name]
    if name.endswith("-10pct"):
        env |= PRODUCTION_SAMPLER
    if name.startswith("dist-"):
        env["OTEL_DIST_NATIVE_EXPORT"] = "on" if "-native" in name else "off"
    return Setup(name, bin_dir, name in {"stock", "dist-instrument"}, env)
