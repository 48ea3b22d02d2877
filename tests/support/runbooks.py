"""The alert rules and their runbook pages, for tests/test_runbooks.py and the e2e test."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from support.servers import REPO_ROOT

RULES = REPO_ROOT / "stack" / "config" / "alert-rules.yml"
RUNBOOKS = REPO_ROOT / "docs" / "runbooks"
# Fenced blocks, also indented under a list item.
FENCE = re.compile(r"^[ \t]*```(\w+)\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)


def alert_rules() -> dict[str, dict[str, str]]:
    """Alert name -> the rule (``expr``, ``for``, ``labels``, ``annotations``)."""
    document = yaml.safe_load(RULES.read_text())
    return {
        rule["alert"]: rule
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def runbook_pages() -> list[Path]:
    """Every runbook page (the index, README.md, is not one)."""
    return sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")


def code_blocks(page: Path, language: str) -> list[str]:
    """The contents of the page's fenced blocks in ``language``, each line unindented."""
    return [
        "\n".join(line.strip() for line in body.strip().splitlines())
        for lang, body in FENCE.findall(page.read_text())
        if lang == language
    ]
