"""ExitHooks in this process: the chained stop handlers and the one shutdown budget.

The servers' side (uvicorn, gunicorn, reload children) is in test_exit_flush.py; these pin the
rules the servers rely on, with real signals raised in the test process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from otel_dist.process import ExitHooks


@pytest.fixture
def stop_handlers() -> Iterator[list[int]]:
    """A server's own SIGTERM handler (it records the signals); the previous ones put back."""
    received: list[int] = []

    def server_handler(signum: int, frame: FrameType | None) -> None:
        del frame
        received.append(signum)

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    signal.signal(signal.SIGTERM, server_handler)
    yield received
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_stop_signal_reaches_the_server_unchanged_and_the_lifespan_end_flushes(
    stop_handlers: list[int],
):
    calls: list[str] = []
    hooks = ExitHooks(lambda: calls.append("shutdown"), lambda: calls.append("flush"), 5)
    hooks.watch_server_stop()

    asyncio.run(hooks.flush_if_server_stops())
    assert calls == []  # a lifespan that ends without a stop signal costs nothing

    signal.raise_signal(signal.SIGTERM)
    assert stop_handlers == [signal.SIGTERM]
    asyncio.run(hooks.flush_if_server_stops())
    assert calls == ["flush"]
    hooks.shutdown_once()
    hooks.shutdown_once()
    assert calls == ["flush", "shutdown"]


def test_pythons_own_sigint_handler_is_left_alone(stop_handlers: list[int]):
    # asyncio.run() only cancels its main task on Ctrl+C if it finds this very handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ExitHooks(lambda: None, lambda: None, 5).watch_server_stop()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL


def test_flush_and_shutdown_share_one_budget_and_one_line(
    stop_handlers: list[int], caplog: pytest.LogCaptureFixture
):
    collector_hangs = threading.Event()
    hooks = ExitHooks(collector_hangs.wait, collector_hangs.wait, 0.5)
    hooks.watch_server_stop()
    signal.raise_signal(signal.SIGTERM)

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="otel_dist.internal"):
        asyncio.run(hooks.flush_if_server_stops())
        hooks.shutdown_once()
    elapsed = time.monotonic() - started
    collector_hangs.set()

    assert 0.5 <= elapsed < 0.5 + 1.0
    assert [r.getMessage() for r in caplog.records] == [
        "otel-dist: shutdown did not finish within 0.5 s (collector unreachable?); unsent "
        "telemetry is dropped so the process can exit"
    ]


EXIT_SCRIPT = """
import logging, sys, threading, time
from otel_dist.process import ExitHooks

logging.basicConfig(stream=sys.stderr, format="%(message)s")
collector_hangs = threading.Event()

def shutdown():
    print("shutdown started", flush=True)
    if sys.argv[1] == "hang":
        collector_hangs.wait()
    print("shutdown ended", flush=True)

ExitHooks(shutdown, lambda: None, 1.0).install()
print("exiting", flush=True)
"""


@pytest.mark.parametrize("collector", ["up", "hang"])
def test_the_exit_hook_runs_its_bounded_shutdown_at_interpreter_exit(collector: str):
    # Python 3.12+ refuses to start a thread in atexit hooks: the shutdown must still run there,
    # and still give up after its budget.
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, collector],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    if collector == "up":
        assert done.stdout.splitlines() == ["exiting", "shutdown started", "shutdown ended"]
        assert done.stderr == ""
    else:
        assert done.stdout.splitlines() == ["exiting", "shutdown started"]
        assert done.stderr.splitlines() == [
            "otel-dist: shutdown did not finish within 1.0 s (collector unreachable?); unsent "
            "telemetry is dropped so the process can exit"
        ]
        assert elapsed < 30  # the budget, not the hanging collector, ended the process
