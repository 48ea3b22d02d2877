"""``make demo`` runs to the end and prints a tour whose every step is whole and consistent.

The demo is run as ``make demo`` runs it (``python -m examples.demo``, real uvicorn, real sink);
its output is parsed back: six numbered steps, each with the response's ids, then its spans as
one tree whose request span carries the ids of the response and whose SQL spans are children of
that request span, its log records, its metric series; the metric summary once, at the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.servers import REPO_ROOT, free_port

pytestmark = pytest.mark.integration

STEP = re.compile(r"^Step (\d+)\. (.+)$")
RESPONSE = re.compile(r"^  (GET|POST) (\S+) -> (\d{3})$")
IDS = re.compile(r"^  ids: trace_id=([0-9a-f]{32}) span_id=([0-9a-f]{16}) request_id=(\S+)$")
SPANS_HEADER = re.compile(r"^  spans of trace ([0-9a-f]{32}) ")
SPAN = re.compile(
    r"^    [ │├└─]*(?P<name>.+?)  (?P<kind>[A-Z]+)  span=(?P<id>[0-9a-f]{16})  "
    r"parent=(?P<parent>[0-9a-f]{16}|-)  (?P<ms>[0-9.]+) ms  (?P<status>UNSET|OK|ERROR)"
)
LOG = re.compile(r"^    (?P<severity>[A-Z]+)  (?P<body>.+?)  span=(?P<span>[0-9a-f]{16}|-)")
SERIES = re.compile(r"^    (?P<name>[a-z][\w.]+) \{(?P<attributes>.*)\} (count|value)=")
SUMMARY = "Metrics: "


@dataclass
class SpanLine:
    name: str
    kind: str
    span_id: str
    parent: str
    status: str


@dataclass
class StepBlock:
    number: int
    title: str
    lines: list[str] = field(default_factory=list)

    def match(self, pattern: re.Pattern[str]) -> re.Match[str]:
        found = [m for m in map(pattern.match, self.lines) if m]
        assert len(found) == 1, f"step {self.number}: {pattern.pattern!r} in\n" + self.text()
        return found[0]

    def section(self, header: str) -> list[str]:
        start = next(i for i, line in enumerate(self.lines) if line.startswith(header))
        rest = self.lines[start + 1 :]
        end = next((i for i, line in enumerate(rest) if not line.startswith("    ")), len(rest))
        return rest[:end]

    def spans(self) -> list[SpanLine]:
        lines = self.section("  spans of trace ")
        spans = [SPAN.match(line) for line in lines]
        assert all(spans), f"step {self.number}: unparsed span line in\n" + self.text()
        return [
            SpanLine(m["name"], m["kind"], m["id"], m["parent"], m["status"])
            for m in spans
            if m is not None
        ]

    def text(self) -> str:
        return "\n".join(self.lines)


def run_demo(workdir: Path) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    # A port of its own: the demo's default, 8000, may be another test's at the same moment.
    env |= {"DEMO_SECONDS": "0", "DEMO_DIR": str(workdir), "DEMO_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout


def split_steps(output: str) -> tuple[list[str], list[StepBlock], list[str]]:
    """The lines before the first step, the steps, and the lines from the metric summary on."""
    intro: list[str] = []
    steps: list[StepBlock] = []
    summary: list[str] = []
    for line in output.splitlines():
        step = STEP.match(line)
        if step:
            steps.append(StepBlock(int(step[1]), step[2]))
        elif line.startswith(SUMMARY) or summary:
            summary.append(line)
        elif steps:
            steps[-1].lines.append(line)
        else:
            intro.append(line)
    return intro, steps, summary


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    return run_demo(tmp_path_factory.mktemp("demo"))


def test_demo_prints_six_numbered_steps_then_one_metric_summary(demo_output: str) -> None:
    intro, steps, summary = split_steps(demo_output)
    assert [step.number for step in steps] == [1, 2, 3, 4, 5, 6]
    statuses = [int(step.match(RESPONSE)[3]) for step in steps]
    assert statuses == [201, 200, 200, 404, 422, 500]
    assert "its telemetry is printed below" in "\n".join(intro)
    assert "above" not in demo_output
    # The summary comes once, after the last step, one line per metric name.
    assert demo_output.count(SUMMARY) == 1
    names = [line.split()[0] for line in summary[1:] if line.strip()]
    assert "http.server.request.duration" in names
    assert "db.client.operation.duration" in names
    assert len(names) == len(set(names))


def test_each_step_shows_its_spans_as_one_tree_under_the_request_span(demo_output: str) -> None:
    _, steps, _ = split_steps(demo_output)
    for step in steps:
        trace_id, span_id, request_id = step.match(IDS).groups()
        response_line = step.match(RESPONSE)
        assert step.match(SPANS_HEADER)[1] == trace_id
        spans = step.spans()
        roots = [span for span in spans if span.parent == "-"]
        assert len(roots) == 1, step.text()
        (root,) = roots
        # The request span is the one the response named in traceresponse.
        assert (root.kind, root.span_id) == ("SERVER", span_id), step.text()
        assert root.name.startswith(response_line[1]), step.text()
        ids = {span.span_id for span in spans}
        assert all(span.parent in ids for span in spans if span is not root), step.text()
        sql = [span for span in spans if span.kind == "CLIENT"]
        if step.number == 5:  # FastAPI refuses the body before the handler runs: no SQL
            assert sql == [], step.text()
        else:
            assert [span.name.split()[0] for span in sql] in (["INSERT"], ["SELECT"]), step.text()
            assert all(span.parent == root.span_id for span in sql), step.text()
        assert root.status == ("ERROR" if step.number == 6 else "UNSET"), step.text()
        headers = "\n".join(step.lines)
        assert f"traceresponse: 00-{trace_id}-{span_id}-" in headers
        assert f"x-request-id: {request_id}" in headers


def test_each_step_shows_its_log_records_and_metric_series(demo_output: str) -> None:
    _, steps, _ = split_steps(demo_output)
    for step in steps:
        _, span_id, request_id = step.match(IDS).groups()
        log_lines = step.section("  log records of trace ")
        if step.number == 5:
            assert log_lines == ["    (none)"], step.text()
        else:
            logs = [LOG.match(line) for line in log_lines]
            assert logs, step.text()
            assert all(m and m["span"] == span_id for m in logs), step.text()
            assert all(f"request_id={request_id}" in line for line in log_lines), step.text()
        series = [SERIES.match(line) for line in step.section("  metric series ")]
        names = {m["name"] for m in series if m}
        assert "http.server.request.duration" in names, step.text()
        assert (step.number != 5) == ("db.client.operation.duration" in names), step.text()


def test_bodies_are_whole_and_the_500_body_names_the_trace(demo_output: str) -> None:
    _, steps, _ = split_steps(demo_output)
    bodies = {
        step.number: json.loads(step.match(re.compile(r"^  body: (.*)$"))[1]) for step in steps
    }
    assert [error["loc"] for error in bodies[5]["detail"]] == [
        ["body", "name"],
        ["body", "price_cents"],
    ]
    trace_id, _, request_id = steps[5].match(IDS).groups()
    assert bodies[6] == {
        "detail": "Internal Server Error",
        "trace_id": trace_id,
        "request_id": request_id,
    }
    unhandled = [line for line in steps[5].lines if "unhandled exception: GET /fail" in line]
    assert len(unhandled) == 1
    assert f"trace_id={trace_id}" in unhandled[0]
