"""The package's shape: the runtime never loads the tools, modules stay short, no upward import."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "otel_dist"
# "About 400 lines": one screen of ideas per module, with a little slack for docstrings.
MAX_LINES = 420


def _loaded_modules(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # importtime lines: "import time: self [us] | cumulative | imported package"
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_configure_loads_no_tools_module() -> None:
    loaded = _loaded_modules("import otel_dist; otel_dist.configure")

    # import_module() (the facade's lazy names) is not timed; what it imports in turn is.
    assert "otel_dist.sqlalchemy" in loaded
    assert sorted(name for name in loaded if name.startswith("otel_dist.tools")) == []


def test_the_launcher_entry_points_load_no_tools_module() -> None:
    loaded = _loaded_modules("import otel_dist.distro; otel_dist.distro.OtelConfigurator")

    assert sorted(name for name in loaded if name.startswith("otel_dist.tools")) == []


def test_no_module_is_longer_than_one_screen_of_ideas() -> None:
    lengths = {
        str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }

    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def _is_submodule(name: str) -> bool:
    return (PACKAGE / f"{name}.py").exists() or (PACKAGE / name / "__init__.py").exists()


def test_no_module_imports_the_facade_for_its_version() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "otel_dist" and node.level == 0:
                upward += [
                    f"{path.name}: {alias.name}"
                    for alias in node.names
                    if not _is_submodule(alias.name)
                ]

    assert upward == []


def test_every_internal_message_starts_with_the_one_prefix() -> None:
    # Our own lines must be found by one grep: "otel-dist: ...", never "otel_dist: ...".
    literal = re.compile(r"""["']otel_dist(?:\.[a-z_]+)?: """)
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if literal.search(line)
    ]

    assert offenders == []
