"""Full collections skip the server's startup heap (``gc.freeze`` after lifespan startup).

Each case runs in a fresh interpreter: the collector's generations are process-wide, and the
figures are object counts (what a full collection has to walk), not timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from support.servers import REPO_ROOT, clean_env

# Runs the app's lifespan as a server does, on the main thread, and reports the collector's
# state when startup completes, after the lifespan ends and after ``shutdown()``.
SCRIPT = """
import asyncio, gc, json, sys, threading, weakref
frozen_by_the_interpreter = gc.get_freeze_count()  # CPython 3.12: a few hundred; else none
from fastapi import FastAPI
from fastapi.testclient import TestClient
from otel_dist import configure

case = sys.argv[1]
telemetry = configure(
    traces_exporter="none",
    metrics_exporter="none",
    logs_exporter="none",
    freeze_startup_heap=case != "opted out",
)
app = FastAPI()


class Node:
    pass


cycle = Node()
cycle.me = cycle
garbage = weakref.ref(cycle)
del cycle
if case == "app froze":
    gc.freeze()
if case == "collector off":
    gc.disable()
report = {
    "walked_before": len(gc.get_objects()),
    "frozen_before": gc.get_freeze_count(),
    "frozen_by_the_interpreter": frozen_by_the_interpreter,
}


async def lifespan() -> None:
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive():
        return inbox.pop(0)

    async def send(message):
        if message["type"] == "lifespan.startup.complete":
            report["walked_at_start"] = len(gc.get_objects())
            report["frozen_at_start"] = gc.get_freeze_count()
            report["garbage_alive_at_start"] = garbage() is not None

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)


if case == "test client":
    with TestClient(app):
        report["walked_at_start"] = len(gc.get_objects())
        report["frozen_at_start"] = gc.get_freeze_count()
else:
    asyncio.run(lifespan())
telemetry.shutdown()
report["frozen_after_shutdown"] = gc.get_freeze_count()
print(json.dumps(report))
"""


def _run(case: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, case],
        capture_output=True,
        text=True,
        env=clean_env({}),
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def test_a_server_start_leaves_full_collections_a_small_heap_and_shutdown_restores_it() -> None:
    report = _run("server")

    # What a full collection walks: tens of thousands of objects before (FastAPI, pydantic,
    # the SDK), a few percent of them once the startup heap is frozen.
    assert report["walked_before"] > 20_000, report
    assert report["walked_at_start"] < report["walked_before"] // 20, report
    assert report["frozen_at_start"] > report["walked_before"] * 9 // 10, report
    # Garbage is collected first, not frozen with the rest.
    assert report["garbage_alive_at_start"] is False, report
    assert report["frozen_after_shutdown"] == 0, report


def test_an_app_that_froze_objects_itself_keeps_its_own_freeze() -> None:
    report = _run("app froze")

    # Nothing more frozen, nothing unfrozen (reference counting may free a few frozen objects).
    assert report["frozen_before"] > 20_000, report
    assert report["frozen_before"] - 1_000 < report["frozen_at_start"] <= report["frozen_before"]
    assert report["frozen_after_shutdown"] > report["frozen_before"] - 1_000, report


def test_a_collector_the_app_turned_off_stays_as_it_is() -> None:
    report = _run("collector off")

    assert report["frozen_at_start"] == report["frozen_by_the_interpreter"], report
    assert report["garbage_alive_at_start"] is True, report


def test_a_test_clients_lifespan_freezes_nothing() -> None:
    # Test suites start the app's lifespan in a test client, often once per test: that is not
    # a server process, and a full collection each time would slow the suite down.
    report = _run("test client")

    assert report["frozen_at_start"] == report["frozen_by_the_interpreter"], report
    assert report["walked_at_start"] > 20_000, report


def test_a_server_start_with_the_freeze_switched_off_changes_nothing() -> None:
    report = _run("opted out")

    assert report["frozen_at_start"] == report["frozen_by_the_interpreter"], report
    assert report["garbage_alive_at_start"] is True, report
    assert report["walked_at_start"] > 20_000, report
