"""Render the fault suite's figures into README.md's Reliability table.

``python tests/faults/readme.py RESULTS README`` reads the JSON lines the ``figures`` fixture wrote
(one per check) and replaces the text between the ``faults:start``/``faults:end`` markers. It
fails when the results are empty or the markers are missing, so a broken run can't leave an old
table looking current. ``make faults`` calls it after the suite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

START = "<!-- faults:start -->"
END = "<!-- faults:end -->"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def render(records: list[dict[str, Any]]) -> str:
    """The Markdown table: one row per check (its latest run), in the order the suite runs them."""
    outcomes = {r["test"]: r["outcome"] for r in records if "outcome" in r}
    # One row per check; a check run again (pytest --lf after a fix) shows its latest run.
    latest = {(r["test"], r["check"]): r for r in records if "figures" in r}
    lines = list(latest.values())  # in the order first run; a dict keeps the first position
    scales = sorted({line["scale"] for line in lines})
    # A check run again later (pytest -k after a fix) is shown with its own, later time.
    first, last = min(line["at"] for line in lines), max(line["at"] for line in lines)
    rows = [
        f"Measured {first} to {last} by `make faults` (scale: {', '.join(scales)}).",
        "",
        "| check | figures | result | test |",
        "|---|---|---|---|",
    ]
    for line in lines:
        figures = ", ".join(f"{k}={_value(v)}" for k, v in line["figures"].items())
        test = line["test"].split("::")[-1]
        result = outcomes.get(line["test"], "not finished")
        rows.append(f"| {line['check']} | {figures} | {result} | `{test}` |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    results, readme = Path(argv[0]), Path(argv[1])
    lines = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    if not [line for line in lines if "figures" in line]:
        print(f"{results}: no figures recorded; README left unchanged", file=sys.stderr)
        return 1
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"{readme}: markers {START} / {END} missing", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{render(lines)}\n{END}{tail}")
    print(f"{readme}: Reliability table written from {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
