"""The launcher's entry points: our configurator wins over others, and nothing runs twice.

The conflicts are real: a fake distribution with its own distro and configurator entry points
(and a fake ``opentelemetry-distro``) is put on ``PYTHONPATH``, where ``importlib.metadata`` and
``opentelemetry-instrument`` find it before the virtualenv's packages.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from otel_dist.distro import HANDLED_BY_OTEL_DIST, OtelDistro, conflicts
from otel_dist.tools.doctor import diagnose
from support.servers import clean_env, venv_bin

FAKE_MODULE = '''\
"""A vendor distro installed beside otel-dist."""

from opentelemetry.instrumentation.distro import BaseDistro


class Distro(BaseDistro):
    def _configure(self, **kwargs):
        print("FAKE DISTRO RAN", flush=True)


class Configurator:
    def configure(self, **kwargs):
        print("FAKE CONFIGURATOR RAN", flush=True)
'''

DISTRO_CONFLICT = (
    "opentelemetry_distro entry point(s) other installed beside otel_dist: "
    "set OTEL_PYTHON_DISTRO=otel_dist (or uninstall them)"
)
CONFIGURATOR_CONFLICT = (
    "opentelemetry_configurator entry point(s) other installed beside otel_dist: "
    "set OTEL_PYTHON_CONFIGURATOR=otel_dist (or uninstall them)"
)
UPSTREAM_DISTRO_CONFLICT = (
    "opentelemetry-distro 9.9 is installed: otel-dist replaces it; uninstall it or set "
    "OTEL_PYTHON_DISTRO=otel_dist and OTEL_PYTHON_CONFIGURATOR=otel_dist"
)
CHOOSE_OURS = {"OTEL_PYTHON_DISTRO": "otel_dist", "OTEL_PYTHON_CONFIGURATOR": "otel_dist"}


@pytest.fixture
def fake_packages(tmp_path: Path) -> Path:
    """A directory holding ``fakedistro`` 1.0 (a distro and a configurator) and a fake
    ``opentelemetry-distro`` 9.9, laid out as installed distributions."""
    info = tmp_path / "fakedistro-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakedistro\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[opentelemetry_configurator]\nother = fakedistro:Configurator\n\n"
        "[opentelemetry_distro]\nother = fakedistro:Distro\n"
    )
    (tmp_path / "fakedistro.py").write_text(FAKE_MODULE)
    upstream = tmp_path / "opentelemetry_distro-9.9.dist-info"
    upstream.mkdir()
    (upstream / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: opentelemetry-distro\nVersion: 9.9\n"
    )
    return tmp_path


def _run(argv: list[str], packages: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=clean_env({"PYTHONPATH": str(packages), **env}),
        cwd=packages,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _doctor(packages: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return _run([venv_bin("otel-dist"), "doctor", "--no-network"], packages, **env)


def _section(output: str, title: str) -> list[str]:
    lines = output.splitlines()
    start = lines.index(f"{title}:") + 1
    end = lines.index("", start)
    return [line.strip() for line in lines[start:end]]


# --- conflict detection ---------------------------------------------------------------------


def test_doctor_names_installed_conflicts_and_the_fix(fake_packages: Path) -> None:
    result = _doctor(fake_packages)

    assert result.returncode == 1, result.stdout + result.stderr
    assert _section(result.stdout, "distros and configurators") == [
        DISTRO_CONFLICT,
        CONFIGURATOR_CONFLICT,
        UPSTREAM_DISTRO_CONFLICT,
    ]
    assert result.stdout.endswith(
        f"3 problem(s):\n  - {DISTRO_CONFLICT}\n  - {CONFIGURATOR_CONFLICT}\n"
        f"  - {UPSTREAM_DISTRO_CONFLICT}\n"
    )


def test_doctor_is_satisfied_once_both_variables_choose_otel_dist(fake_packages: Path) -> None:
    result = _doctor(fake_packages, **CHOOSE_OURS)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "entry point(s)" not in result.stdout
    assert "opentelemetry-distro 9.9" not in result.stdout
    assert _section(result.stdout, "distros and configurators") == [
        "opentelemetry_distro: OTEL_PYTHON_DISTRO=otel_dist chooses otel_dist over other",
        "opentelemetry_configurator: OTEL_PYTHON_CONFIGURATOR=otel_dist chooses otel_dist "
        "over other",
    ]
    assert result.stdout.endswith("\nno problems found\n")


def test_each_variable_silences_only_its_own_conflict(fake_packages: Path) -> None:
    result = _doctor(fake_packages, OTEL_PYTHON_DISTRO="otel_dist")

    assert result.returncode == 1
    assert _section(result.stdout, "distros and configurators") == [
        CONFIGURATOR_CONFLICT,
        UPSTREAM_DISTRO_CONFLICT,
    ]


def test_conflicts_and_diagnose_read_the_environment_they_are_given(
    fake_packages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(fake_packages))
    monkeypatch.delenv("OTEL_PYTHON_DISTRO", raising=False)
    monkeypatch.delenv("OTEL_PYTHON_CONFIGURATOR", raising=False)

    assert conflicts({}) == [DISTRO_CONFLICT, CONFIGURATOR_CONFLICT, UPSTREAM_DISTRO_CONFLICT]
    assert conflicts(CHOOSE_OURS) == []
    assert diagnose(env=CHOOSE_OURS, network=False).problems == []
    assert diagnose(env={}, network=False).problems == [
        DISTRO_CONFLICT,
        CONFIGURATOR_CONFLICT,
        UPSTREAM_DISTRO_CONFLICT,
    ]


# --- the launcher -----------------------------------------------------------------------------

CHILD = """
import logging
import os
import opentelemetry.trace
import otel_dist
print(type(opentelemetry.trace.get_tracer_provider()).__name__)
print(otel_dist.active() is not None)
print(os.environ.get("OTEL_PYTHON_CONFIGURATOR"))
"""
LAUNCHER_ENV = {
    "OTEL_TRACES_EXPORTER": "console",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
}


def _instrumented_python(packages: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return _run(
        [venv_bin("opentelemetry-instrument"), sys.executable, "-c", CHILD],
        packages,
        **LAUNCHER_ENV,
        **env,
    )


def test_launcher_runs_our_configurator_not_the_one_found_first(fake_packages: Path) -> None:
    result = _instrumented_python(fake_packages, OTEL_PYTHON_DISTRO="otel_dist")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert result.stdout.splitlines() == ["TracerProvider", "True", "otel_dist"]
    assert "FAKE" not in output
    # Both variables name otel_dist now: nothing left to warn about.
    assert "otel-dist: " not in result.stderr
    # The launcher's own note on the configurator it passed over.
    assert (
        "Configuration of other not loaded because otel_dist is set by OTEL_PYTHON_CONFIGURATOR"
    ) in result.stderr
    # The contrib SQLAlchemy instrumentor declares sqlalchemy<2.1; otel-dist instruments
    # SQLAlchemy itself, so the launcher's error about that range is not shown.
    assert "only instruments" not in result.stderr


def test_fake_configurator_would_win_without_our_distro(fake_packages: Path) -> None:
    # The control: with the fake distro chosen, nobody sets OTEL_PYTHON_CONFIGURATOR and the
    # launcher takes the first configurator it finds, the fake one on PYTHONPATH.
    result = _instrumented_python(fake_packages, OTEL_PYTHON_DISTRO="other")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "FAKE DISTRO RAN",
        "FAKE CONFIGURATOR RAN",
        "ProxyTracerProvider",
        "False",
        "None",
    ]


# --- OtelDistro -------------------------------------------------------------------------------


class _FakeEntryPoint:
    """Just what ``BaseDistro.load_instrumentor`` uses: a name and ``load()``."""

    def __init__(self, name: str, instrumentor: type | None = None) -> None:
        self.name = name
        self.instrumentor = instrumentor

    def load(self) -> type:
        if self.instrumentor is None:
            raise AssertionError(f"entry point {self.name!r} must not be loaded")
        return self.instrumentor


@pytest.mark.parametrize("name", sorted(HANDLED_BY_OTEL_DIST))
def test_load_instrumentor_skips_what_otel_dist_does_itself(name: str) -> None:
    OtelDistro().load_instrumentor(_FakeEntryPoint(name), skip_dep_check=True)


def test_load_instrumentor_delegates_other_instrumentors() -> None:
    calls: list[dict[str, Any]] = []

    class Instrumentor:
        def instrument(self, **kwargs: Any) -> None:
            calls.append(kwargs)

    OtelDistro().load_instrumentor(_FakeEntryPoint("requests", Instrumentor), skip_dep_check=True)

    assert calls == [{"skip_dep_check": True}]


def test_distro_chooses_our_configurator_unless_one_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_PYTHON_CONFIGURATOR", raising=False)
    OtelDistro().configure()
    assert os.environ["OTEL_PYTHON_CONFIGURATOR"] == "otel_dist"

    monkeypatch.setenv("OTEL_PYTHON_CONFIGURATOR", "other")
    OtelDistro().configure()
    assert os.environ["OTEL_PYTHON_CONFIGURATOR"] == "other"


def test_launcher_range_errors_are_dropped_only_for_replaced_instrumentors(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    launcher_log = logging.getLogger("opentelemetry.instrumentation.auto_instrumentation._load")
    monkeypatch.setattr(launcher_log, "filters", [])
    monkeypatch.setenv("OTEL_PYTHON_CONFIGURATOR", "otel_dist")
    OtelDistro().configure()
    OtelDistro().configure()  # once is enough: no second filter

    range_error = ' only instruments "x<1", but currently installed version ("x 2") falls outside'
    with caplog.at_level(logging.DEBUG, logger=launcher_log.name):
        launcher_log.error("sqlalchemy" + range_error)
        launcher_log.error("requests" + range_error)

    assert len(launcher_log.filters) == 1
    assert [record.getMessage() for record in caplog.records] == ["requests" + range_error]
