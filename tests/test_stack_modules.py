"""The Docker-free stack builds only Go modules the project may use.

The project's module list marks Loki, Tempo and Grafana not-to-use (AGPL) and approves one
Jaeger release, v1.75.0 (Jaeger v2.12.0); newer Jaeger tags are served but not approved. These
tests read what stack/build.py would fetch (``--print-plan``: every component's source module,
OCB and every module of the collector manifest, at the versions of stack/versions.env) and the
files that drive builds and CI, and fail on any module outside those rules. docker-compose.yml
may name the Loki, Tempo and Grafana *images*: users pull those; nothing here builds or runs them.

No Go toolchain and no network are needed: nothing is downloaded or built.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "stack"
THIS_FILE = Path(__file__).resolve()

# Module paths (and everything under them) the module list marks not-to-use.
NOT_TO_USE = ("github.com/grafana/loki", "github.com/grafana/tempo", "github.com/grafana/grafana")
# Modules of which exactly one release is approved.
APPROVED_ONLY = {"github.com/jaegertracing/jaeger": "v1.75.0"}
# What the session hook greps for in the files that build and run the stack.
HOOK_PATTERN = re.compile(r"grafana/(loki|tempo|grafana)")
MODULE_MENTION = re.compile(r"github\.com/grafana/(loki|tempo|grafana)\b")


def module_violations(specs: list[str]) -> list[str]:
    """One message per ``module@version`` that the module list forbids."""
    violations = []
    for spec in specs:
        module, _, version = spec.partition("@")
        if any(module == denied or module.startswith(f"{denied}/") for denied in NOT_TO_USE):
            violations.append(f"{spec}: not-to-use (AGPL) in the module list")
        approved = APPROVED_ONLY.get(module)
        if approved is not None and version != approved:
            violations.append(
                f"{spec}: not an approved release; the module list approves {approved}"
            )
    return violations


def _print_plan() -> tuple[dict[str, str], list[str]]:
    """``stack/build.py --print-plan``: (component name -> source, every module@version)."""
    result = subprocess.run(
        [sys.executable, str(STACK / "build.py"), "--print-plan"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    components: dict[str, str] = {}
    modules: list[str] = []
    for line in result.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "component":
            name, _version, source = rest.split(" ", 2)
            components[name] = source
        elif kind == "module":
            modules.append(rest)
    return components, modules


def test_the_check_names_each_forbidden_module() -> None:
    assert module_violations(
        [
            "github.com/grafana/loki/v3@v3.7.8",
            "github.com/grafana/tempo@1900ed7bb5cad1a3edc285783d7d4ac4278337dc",
            "github.com/grafana/grafana/apps/dashboard@v0.0.1",
            "github.com/jaegertracing/jaeger@v1.76.0",
            "github.com/grafana/regexp@v0.0.0-20250905093917-f7b3be9d1853",
            "github.com/jaegertracing/jaeger@v1.75.0",
        ]
    ) == [
        "github.com/grafana/loki/v3@v3.7.8: not-to-use (AGPL) in the module list",
        "github.com/grafana/tempo@1900ed7bb5cad1a3edc285783d7d4ac4278337dc: not-to-use (AGPL)"
        " in the module list",
        "github.com/grafana/grafana/apps/dashboard@v0.0.1: not-to-use (AGPL) in the module list",
        "github.com/jaegertracing/jaeger@v1.76.0: not an approved release; the module list"
        " approves v1.75.0",
    ]


def test_build_plan_holds_only_allowed_modules() -> None:
    components, modules = _print_plan()
    assert set(components) == {
        "otelcol",
        "prometheus",
        "jaeger",
        "victorialogs",
        "postgres_exporter",
    }
    assert "github.com/jaegertracing/jaeger@v1.75.0" in modules
    assert "github.com/VictoriaMetrics/VictoriaLogs@v1.52.2" in modules
    assert "github.com/prometheus-community/postgres_exporter@v0.17.1" in modules
    assert module_violations(modules) == []
    assert len(modules) > len(components), "the collector manifest's modules are in the plan"


def test_versions_file_pins_no_forbidden_module() -> None:
    text = (STACK / "versions.env").read_text()
    pairs = dict(
        line.split("=", 1)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert pairs["JAEGER_GO_VERSION"] == APPROVED_ONLY["github.com/jaegertracing/jaeger"]
    # Loki, Tempo and Grafana keep image tags for docker-compose.yml, never a module version.
    assert not [key for key in pairs if re.match(r"(LOKI|TEMPO|GRAFANA)_(GO_VERSION|COMMIT)", key)]
    assert HOOK_PATTERN.findall(text) == []


def _build_and_ci_files() -> list[Path]:
    return [
        *sorted(STACK.glob("*.py")),
        STACK / "versions.env",
        ROOT / ".ci" / "run",
        ROOT / "Makefile",
    ]


@pytest.mark.parametrize("path", _build_and_ci_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_build_and_ci_files_name_no_forbidden_module(path: Path) -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if HOOK_PATTERN.search(line)
    ]
    assert hits == []


def test_no_test_or_tool_fetches_a_forbidden_module() -> None:
    # Image names (grafana/loki:3.7.8) may appear; Go module paths may not, outside this file.
    sources = [
        *sorted((ROOT / "tests").rglob("*.py")),
        *sorted((STACK / "compose-check").iterdir()),
    ]
    hits = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sources
        if path.resolve() != THIS_FILE and path.is_file()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if MODULE_MENTION.search(line)
    ]
    assert hits == []
