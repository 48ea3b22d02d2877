"""Every README shell block marked runnable runs, as written, and succeeds.

A block is marked by an HTML comment on the line before its fence:

- ``<!-- runnable -->``: run with this test's venv first on PATH (so ``python``, ``pip`` and
  ``otel-dist`` are the project's), in a copy of the repository's tracked files;
- ``<!-- runnable in a new venv -->``: the same, but with a new empty virtualenv first on PATH,
  for blocks that install things. pip is constrained to this venv's versions so it takes them
  from its cache.

Each block runs under ``bash -euo pipefail`` (every line must succeed), without OTEL_* variables.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.servers import REPO_ROOT

pytestmark = pytest.mark.integration

MARKERS = {"<!-- runnable -->": "project venv", "<!-- runnable in a new venv -->": "new venv"}
FENCE = re.compile(r"^```(sh|bash|shell)\s*$")
BLOCK_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    line: int
    where: str
    script: str

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def runnable_blocks(readme: str) -> list[Block]:
    """The shell blocks whose fence follows a runnable marker, with their first line number."""
    lines = readme.splitlines()
    blocks: list[Block] = []
    for index, line in enumerate(lines[:-1]):
        where = MARKERS.get(line.strip())
        if where is None:
            continue
        assert FENCE.match(lines[index + 1]), f"README.md:{index + 1}: marker not before ```sh"
        end = lines.index("```", index + 2)
        blocks.append(Block(index + 3, where, "\n".join(lines[index + 2 : end]) + "\n"))
    return blocks


BLOCKS = runnable_blocks((REPO_ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_marks_its_runnable_blocks() -> None:
    # The marker of each kind is in use; losing them all would make the test below vacuous.
    assert {block.where for block in BLOCKS} == set(MARKERS.values())


def copy_of_repository(target: Path) -> Path:
    """The tracked files of the repository (as in a fresh clone, plus uncommitted edits)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def constraints(path: Path) -> Path:
    """This venv's package versions, so a new venv installs exactly these, from pip's cache."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path.write_text(frozen, encoding="utf-8")
    return path


def block_env(tmp_path: Path, where: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    if where == "new venv":
        bin_dir = tmp_path / "venv" / "bin"
        venv.EnvBuilder(with_pip=True).create(bin_dir.parent)
        env["PIP_CONSTRAINT"] = str(constraints(tmp_path / "constraints.txt"))
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    else:
        bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_runnable_readme_block_succeeds(block: Block, tmp_path: Path) -> None:
    checkout = copy_of_repository(tmp_path / "otel-dist")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.script],
        cwd=checkout,
        env=block_env(tmp_path, block.where),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )
    report = f"{block} ({block.where}):\n{block.script}"
    report += f"\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, report
    assert "Traceback" not in result.stderr, report


def stack_versions() -> dict[str, str]:
    lines = (REPO_ROOT / "stack" / "versions.env").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_stacks_table_shows_the_pinned_versions() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- stacks:start -->")[1].split("<!-- stacks:end -->")[0]
    versions = stack_versions()
    expected = {
        "OCB": versions["OCB_VERSION"],
        "Tempo": versions["TEMPO_VERSION"],
        "Jaeger": versions["JAEGER_VERSION"],
        "Loki": versions["LOKI_VERSION"],
        "VictoriaLogs": versions["VICTORIALOGS_VERSION"],
        "Prometheus": versions["PROMETHEUS_VERSION"],
        "Grafana": versions["GRAFANA_VERSION"],
    }
    shown = dict(
        re.findall(r"\b(OCB|Tempo|Jaeger|Loki|VictoriaLogs|Prometheus|Grafana) (\d[\w.]*)", table)
    )
    assert shown == expected
