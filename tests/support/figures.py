"""The figures a measuring suite reports (faults, scale): printed and appended as JSON lines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Figures = Callable[..., None]


def figures_recorder(test_id: str, scale_name: str, results: Callable[[], Path]) -> Figures:
    """``record(check, **values)`` for one test: printed (``pytest -s`` shows it) and appended to
    the file ``results()`` names. Call it before asserting, so a failing run still reports."""

    def record(check: str, **values: Any) -> None:
        line = {
            "test": test_id,
            "check": check,
            "scale": scale_name,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "figures": values,
        }
        shown = ", ".join(f"{key}={value}" for key, value in values.items())
        print(f"\nFIGURES [{scale_name}] {check}: {shown}")
        append_line(results(), line)

    return record


def append_line(path: Path, line: dict[str, Any]) -> None:
    """Append ``line`` to the JSON-lines file ``path`` (its folder made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line, sort_keys=True) + "\n")
