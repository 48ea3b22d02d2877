"""Every alert rule links a runbook, and every runbook's PromQL parses.

The rules are ``stack/config/alert-rules.yml``; the runbooks ``docs/runbooks/<alert>.md``. Each
rule's ``runbook_url`` annotation must name its page, each page must have the parts an on-call
engineer looks for (first checks, mitigations, when to escalate), and each ```promql block must
parse: promtool checks them as the expressions of recording rules. The page structure needs no
tools; the PromQL check needs the stack's promtool (``python stack/build.py``) and is marked
``stack``, so it runs in ``make e2e`` with the other promtool checks. The LogsQL blocks are run
against a live VictoriaLogs in tests/e2e/test_stack.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.runbooks import RUNBOOKS, alert_rules, code_blocks, runbook_pages

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("## First checks", "## Mitigations", "## Escalate")


def promql_errors(queries: dict[str, str], promtool: Path, workdir: Path) -> list[str]:
    """Check each ``name -> PromQL`` with ``promtool check rules``; one message per bad query.

    Each query becomes a recording rule in a group of its own, so promtool's error names the
    group, which is the query's name here.
    """
    groups = [
        {"name": name, "rules": [{"record": "runbook:query", "expr": query}]}
        for name, query in queries.items()
    ]
    rule_file = workdir / "runbook-queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    result = subprocess.run(
        [str(promtool), "check", "rules", "--lint=none", str(rule_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode == 0:
        return []
    output = (result.stdout + result.stderr).strip()
    failing = [name for name in queries if f'group "{name}"' in output]
    return [f"{name}: {queries[name]}" for name in failing] or [output]


# --- structure: no tools needed -------------------------------------------------------------


def test_every_rule_links_its_runbook_page() -> None:
    rules = alert_rules()
    assert len(rules) >= 7
    urls = {name: rule.get("annotations", {}).get("runbook_url") for name, rule in rules.items()}
    wrong = {name: url for name, url in urls.items() if url != f"docs/runbooks/{name}.md"}
    assert wrong == {}, "runbook_url must be docs/runbooks/<alert>.md"
    missing = [name for name in rules if not (RUNBOOKS / f"{name}.md").is_file()]
    assert missing == [], f"rules without a runbook page: {missing}"


def test_every_runbook_page_belongs_to_a_rule_and_is_indexed() -> None:
    rules = set(alert_rules())
    pages = {page.stem for page in runbook_pages()}
    assert pages - rules == set(), "runbook pages for no rule"
    index = (RUNBOOKS / "README.md").read_text()
    assert [name for name in sorted(rules) if f"]({name}.md)" not in index] == []


@pytest.mark.parametrize("page", runbook_pages(), ids=lambda p: p.stem)
def test_runbook_has_three_first_checks_mitigations_and_escalation(page: Path) -> None:
    text = page.read_text()
    assert text.startswith(f"# {page.stem}\n")
    positions = [text.find(section) for section in SECTIONS]
    assert -1 not in positions, f"{page.name} lacks one of {SECTIONS}"
    assert positions == sorted(positions), f"{page.name}: sections out of order"
    first_checks = text[positions[0] : positions[1]]
    steps = re.findall(r"^(\d)\. \*\*", first_checks, re.MULTILINE)
    assert steps == ["1", "2", "3"], f"{page.name}: first checks numbered {steps}"
    assert code_blocks(page, "promql"), f"{page.name} has no PromQL query"


@pytest.mark.parametrize("page", runbook_pages(), ids=lambda p: p.stem)
def test_runbook_gives_log_queries_for_both_stacks(page: Path) -> None:
    # The Docker-free stack stores logs in VictoriaLogs (LogsQL), compose in Loki (LogQL); the
    # collector's own log is a file or `docker compose logs`, searched with grep.
    has_store_queries = code_blocks(page, "logsql") and code_blocks(page, "logql")
    has_collector_log = [b for b in code_blocks(page, "sh") if "docker compose logs" in b] and [
        b for b in code_blocks(page, "sh") if "otel-dist-stack/run/current/logs" in b
    ]
    assert has_store_queries or has_collector_log, page.name


# --- PromQL through promtool ------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> Path:
    result = subprocess.run(
        [sys.executable, str(ROOT / "stack" / "build.py"), "--print-paths", "--only", "prometheus"],
        capture_output=True,
        text=True,
        check=False,
    )
    paths = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    path = Path(paths.get("promtool", ""))
    if not path.is_file():
        pytest.fail(
            f"promtool is not built ({path}); build the stack first: python stack/build.py",
            pytrace=False,
        )
    return path


@pytest.mark.stack
def test_every_runbook_promql_query_parses(promtool: Path, tmp_path: Path) -> None:
    queries = {
        f"{page.stem}#{number}": query
        for page in runbook_pages()
        for number, query in enumerate(code_blocks(page, "promql"), start=1)
    }
    assert len(queries) >= 2 * len(runbook_pages())
    assert promql_errors(queries, promtool, tmp_path) == []


@pytest.mark.stack
def test_a_query_that_does_not_parse_is_named(promtool: Path, tmp_path: Path) -> None:
    queries = {
        "Good#1": 'sum by (job) (up{job="otelcol"})',
        "Broken#2": "sum by (job) (rate(up[5m])",
    }
    assert promql_errors(queries, promtool, tmp_path) == ["Broken#2: sum by (job) (rate(up[5m])"]
