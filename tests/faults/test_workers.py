"""D8: the shop under 4 workers (gunicorn with and without --preload, uvicorn --workers).

Every worker must answer and export (no lock left held across the fork, no worker without its
exporter threads), and the request counts the workers export must add up to the requests sent,
exactly: a worker sharing its parent's identity would double-count, a lost export would not add
up. Each response is tied to the worker that served it through its trace id, whose SERVER span
carries the worker's ``process.pid`` and ``service.instance.id``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from otel_dist.tools.sink import OtlpSink
from support.servers import ServerProcess, gunicorn_argv, uvicorn_argv
from support.shop import SHOP_CONFIGURE, SHOP_ZERO_CODE, create_shop_database, start_shop
from support.traffic import attempt, request_counts, trace_id_of, wait_for_workers

if TYPE_CHECKING:
    from faults.conftest import Figures, Scale

ROUTE = "/items/{item_id}"
REQUEST_TIMEOUT_S = 10  # a worker stuck after fork shows up as requests timing out

# (port, workers) -> argv. gunicorn_argv says "-w 2"; the later "-w" wins.
SERVERS: dict[str, Callable[[int, int], list[str]]] = {
    "gunicorn -w 4, configure() in each worker": lambda port, n: gunicorn_argv(
        SHOP_CONFIGURE, port, "-w", str(n)
    ),
    "gunicorn -w 4 --preload, configure() in the master before fork": lambda port, n: gunicorn_argv(
        SHOP_CONFIGURE, port, "--preload", "-w", str(n)
    ),
    "uvicorn --workers 4, zero-code": lambda port, n: uvicorn_argv(
        SHOP_ZERO_CODE, port, "--workers", str(n)
    ),
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_every_worker_answers_and_exports_and_counts_add_up_exactly(
    server: str,
    scale: Scale,
    otlp_sink: OtlpSink,
    server_factory: Callable[..., ServerProcess],
    tmp_path: Path,
    figures: Figures,
):
    argv = SERVERS[server]
    create_shop_database(tmp_path)
    proc = start_shop(
        server_factory, lambda port: argv(port, scale.workers), otlp_sink.endpoint, tmp_path
    )
    wait_for_workers(proc, scale.workers)
    item = httpx.post(
        f"{proc.base_url}/items", json={"name": "teapot", "price_cents": 1}, timeout=10
    ).json()["id"]

    started = time.monotonic()
    results = attempt(
        proc.base_url,
        scale.worker_requests,
        f"/items/{item}",
        threads=16,
        timeout=REQUEST_TIMEOUT_S,
    )
    wall_s = time.monotonic() - started
    answered = [r for r in results if isinstance(r, httpx.Response) and r.status_code == 200]
    traces = {trace_id_of(r) for r in answered}

    def spans_arrived(sink: OtlpSink) -> bool:
        return traces <= {s.trace_id for s in sink.spans() if s.kind == "SERVER"}

    otlp_sink.wait_for(spans_arrived, timeout=30)
    resources = {s.trace_id: s.resource for s in otlp_sink.spans() if s.kind == "SERVER"}
    served = Counter(
        resources[t]["service.instance.id"] for t in traces if t in resources
    )  # requests per worker, by the span each exported
    pids = {(r["process.pid"], r["service.instance.id"]) for r in resources.values()}
    logged = {
        r.resource["service.instance.id"] for r in otlp_sink.logs() if r.body == "item fetched"
    }

    # Cumulative counts: wait until they cover every answer, then a few more export rounds so a
    # count that keeps growing past the requests sent (double counting) shows up.
    otlp_sink.wait_for(lambda s: sum(request_counts(s, [ROUTE]).values()) >= len(answered), 20)
    time.sleep(1.5)
    counted = request_counts(otlp_sink, [ROUTE])

    figures(
        f"workers: {server}",
        requests=len(results),
        answered=len(answered),
        wall_s=round(wall_s, 2),
        spans_found=len(traces & set(resources)),
        workers_with_spans=len(served),
        served_per_worker=sorted(served.values()),
        workers_with_logs=len(logged),
        workers_with_metrics=len(counted),
        counted=sum(counted.values()),
    )
    # No deadlock after fork: every request answered in time, by every one of the workers.
    failed = [r for r in results if not isinstance(r, httpx.Response) or r.status_code != 200]
    assert failed == [], (failed[:5], proc.output()[-3000:])
    assert len(served) == scale.workers, (served, proc.output()[-3000:])
    assert sum(served.values()) == len(answered)  # every span arrived
    # One identity per worker process: none shares its parent's or a sibling's instance id.
    assert len(pids) == scale.workers
    assert len({pid for pid, _ in pids}) == len({instance for _, instance in pids})
    assert logged == set(served)
    # Each worker counted exactly the requests it served: none lost, none counted twice.
    assert counted == dict(served)
    assert sum(counted.values()) == scale.worker_requests
