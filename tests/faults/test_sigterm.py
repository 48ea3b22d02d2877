"""D4: SIGTERM while the shop is under steady load, with the collector up, dead or hanging.

The README promises two things. With the collector down, the process exits within the
documented flush bound (``OTEL_DIST_SHUTDOWN_TIMEOUT``, 5 s) plus uvicorn's own graceful
shutdown, and says in one log line that it dropped what it could not send. With the collector up,
nothing already produced is lost: every request answered has its SERVER span and its log record
at the collector. Spans and logs are held in the batch queues (60 s delay) so that, with the
collector up, only the SIGTERM flush can deliver them.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from otel_dist.tools.sink import OtlpSink
from support.collector import hanging_collector
from support.load import Load, Sample
from support.servers import ServerProcess, uvicorn_argv
from support.shop import SHOP_CONFIGURE, SHOP_ZERO_CODE, start_shop

if TYPE_CHECKING:
    from faults.conftest import Figures, Scale

FLUSH_BOUND_S = 5.0  # README: OTEL_DIST_SHUTDOWN_TIMEOUT defaults to 5 s
# uvicorn's graceful shutdown (finish requests in flight, close connections) and the
# interpreter's exit, on top of the flush bound; generous for a loaded 2-core machine.
SERVER_SHUTDOWN_S = 3.0
DROPPED_LINE = f"shutdown did not finish within {FLUSH_BOUND_S:.1f} s"

WAYS = {"configure": (SHOP_CONFIGURE, False), "zero-code": (SHOP_ZERO_CODE, True)}


def _start(
    server_factory: Callable[..., ServerProcess], endpoint: str, way: str, workdir: Path
) -> ServerProcess:
    app, zero_code = WAYS[way]
    return start_shop(
        server_factory,
        lambda port: uvicorn_argv(app, port, zero_code=zero_code),
        endpoint,
        workdir,
        OTEL_BSP_SCHEDULE_DELAY="60000",
        OTEL_BLRP_SCHEDULE_DELAY="60000",
    )


def _sigterm(proc: ServerProcess, wait_s: float) -> float:
    """Send SIGTERM and wait for the exit; the seconds it took (inf if it did not exit)."""
    started = time.monotonic()
    proc.process.send_signal(signal.SIGTERM)
    try:
        proc.process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return float("inf")
    return time.monotonic() - started


def _run_load_then_sigterm(
    proc: ServerProcess, scale: Scale, midway: Callable[[], None] | None = None
) -> tuple[list[Sample], float, float]:
    """Steady load on GET /items/{id}, ``midway`` called halfway, then SIGTERM while it runs.

    Returns every request of the load, when SIGTERM was sent, and how long the exit took.
    """
    item = httpx.post(
        f"{proc.base_url}/items", json={"name": "teapot", "price_cents": 1}, timeout=10
    ).json()["id"]

    def read_item(client: httpx.Client, _: int) -> httpx.Response:
        return client.get(f"/items/{item}")

    with Load(proc.base_url, scale.load_rps, read_item, workers=8) as load:
        time.sleep(scale.sigterm_load_s / 2)
        if midway is not None:
            midway()
        time.sleep(scale.sigterm_load_s / 2)
        sigterm_at = time.monotonic()
        exit_s = _sigterm(proc, FLUSH_BOUND_S + 30)
        time.sleep(0.2)  # the load keeps going a moment after the exit: refused, not answered
    return load.samples(), sigterm_at, exit_s


def _answered_before(samples: list[Sample], moment: float) -> list[Sample]:
    return [s for s in samples if s.done < moment]


def _statuses(samples: list[Sample]) -> dict[str, int]:
    return dict(Counter(str(s.status) if s.status else "no response" for s in samples))


@pytest.mark.parametrize("way", list(WAYS))
def test_sigterm_under_load_with_collector_up_delivers_every_answered_request(
    way: str,
    scale: Scale,
    otlp_sink: OtlpSink,
    server_factory: Callable[..., ServerProcess],
    tmp_path: Path,
    figures: Figures,
):
    proc = _start(server_factory, otlp_sink.endpoint, way, tmp_path)
    held: list[int] = []  # spans at the collector halfway through: the queue holds them
    samples, sigterm_at, exit_s = _run_load_then_sigterm(
        proc, scale, lambda: held.append(len(otlp_sink.spans()))
    )
    answered = [s for s in samples if s.ok]
    traces = {s.trace_id for s in answered}
    # The process is gone: whatever it flushed has been received already.
    spans = {s.trace_id for s in otlp_sink.spans() if s.kind == "SERVER"}
    logs = {r.trace_id for r in otlp_sink.logs() if r.body == "item fetched"}
    before = _answered_before(samples, sigterm_at)

    figures(
        f"SIGTERM under load, collector up ({way})",
        requests=len(samples),
        answered=len(answered),
        answered_before_sigterm=len(before),
        statuses=_statuses(samples),
        exit_s=round(exit_s, 2),
        spans_at_collector_midway=held[0],
        spans_expected=len(traces),
        spans_found=len(traces & spans),
        logs_found=len(traces & logs),
        lost=len(traces - spans) + len(traces - logs),
    )
    assert before
    assert [s for s in before if not s.ok] == []
    assert [s for s in samples if s.status >= 500] == []
    assert len(traces) == len(answered)  # every answer announced its own trace
    assert exit_s < FLUSH_BOUND_S + SERVER_SHUTDOWN_S, proc.output()[-3000:]
    assert traces - spans == set(), proc.output()[-3000:]
    assert traces - logs == set(), proc.output()[-3000:]


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("outage", ["collector killed during the load", "collector hangs"])
def test_sigterm_under_load_with_collector_down_exits_within_the_flush_bound(
    outage: str,
    way: str,
    scale: Scale,
    otlp_sink: OtlpSink,
    server_factory: Callable[..., ServerProcess],
    tmp_path: Path,
    figures: Figures,
):
    with contextlib.ExitStack() as stack:
        if outage == "collector hangs":
            endpoint = stack.enter_context(hanging_collector())
            proc = _start(server_factory, endpoint, way, tmp_path)
            samples, sigterm_at, exit_s = _run_load_then_sigterm(proc, scale)
        else:
            proc = _start(server_factory, otlp_sink.endpoint, way, tmp_path)
            samples, sigterm_at, exit_s = _run_load_then_sigterm(proc, scale, otlp_sink.stop)
    before = _answered_before(samples, sigterm_at)
    dropped_lines = proc.output().count(DROPPED_LINE)

    figures(
        f"SIGTERM under load, {outage} ({way})",
        requests=len(samples),
        answered_before_sigterm=len(before),
        statuses=_statuses(samples),
        exit_s=round(exit_s, 2),
        bound_s=FLUSH_BOUND_S + SERVER_SHUTDOWN_S,
        dropped_lines=dropped_lines,
    )
    # The outage never fails a request; the exit is bounded and says what it dropped, once.
    assert before
    assert [s for s in before if not s.ok] == []
    assert [s for s in samples if s.status >= 500] == []
    assert exit_s < FLUSH_BOUND_S + SERVER_SHUTDOWN_S, proc.output()[-3000:]
    assert dropped_lines == 1, proc.output()[-3000:]
