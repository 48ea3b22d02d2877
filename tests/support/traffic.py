"""Requests spread over a server's workers, and what the sink says about them.

``hit`` opens a fresh connection per request so the kernel hands them to every worker of a
multi-process server (a keep-alive client would stay on the worker that accepted it).
``request_counts`` reads the cumulative ``http.server.request.duration`` histograms each worker
exported, which is how the tests prove requests are neither lost nor counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import httpx

from otel_dist.tools.sink import OtlpSink
from support.servers import ServerProcess

REQUEST_DURATION = "http.server.request.duration"


def attempt(
    base_url: str, count: int, path: str = "/pid", *, threads: int = 8, timeout: float = 10
) -> list[httpx.Response | httpx.HTTPError]:
    """``count`` GETs of ``path``, ``threads`` at a time, each on a connection of its own.

    A request that fails (refused, timed out) is returned as its error, in its place.
    """

    def one(_: int) -> httpx.Response | httpx.HTTPError:
        try:
            return httpx.get(f"{base_url}{path}", timeout=timeout)
        except httpx.HTTPError as error:
            return error

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def hit(
    base_url: str,
    count: int,
    path: str = "/pid",
    *,
    threads: int = 8,
    raise_for_status: bool = False,
) -> list[httpx.Response]:
    """Like ``attempt``, but every request must get a response (a 2xx with raise_for_status)."""
    responses = []
    for result in attempt(base_url, count, path, threads=threads):
        if isinstance(result, httpx.HTTPError):
            raise result
        if raise_for_status:
            result.raise_for_status()
        responses.append(result)
    return responses


def hit_every_worker(
    base_url: str, workers: int = 2, *, batch: int = 16, raise_for_status: bool = False
) -> list[httpx.Response]:
    """Batches of ``hit`` on ``/pid`` until ``workers`` distinct pids answered (10 at most)."""
    responses: list[httpx.Response] = []
    for _ in range(10):
        responses += hit(base_url, batch, raise_for_status=raise_for_status)
        if len({r.json()["pid"] for r in responses}) >= workers:
            break
    return responses


def trace_id_of(response: httpx.Response) -> str:
    """The trace id announced by the response's ``traceresponse`` header."""
    return response.headers["traceresponse"].split("-")[1]


def wait_for_workers(server: ServerProcess, workers: int, timeout: float = 60) -> None:
    """Wait until ``workers`` workers logged their startup (uvicorn and gunicorn both do)."""
    deadline = time.monotonic() + timeout
    while server.output().count("Application startup complete.") < workers:
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise TimeoutError(
                f"{workers} workers did not start within {timeout}s\n{server.output()}"
            )
        time.sleep(0.1)


def request_counts(sink: OtlpSink, routes: Iterable[str]) -> dict[str, int]:
    """Requests each worker (``service.instance.id``) counted on ``routes``, from its metrics.

    The histograms are cumulative: each series' latest point holds everything that series
    counted, so the latest points of all series of one worker add up to its requests.
    """
    wanted = set(routes)
    latest: dict[tuple[str, frozenset[tuple[str, object]]], tuple[int, int]] = {}
    for point in sink.metrics():
        if point.name != REQUEST_DURATION or point.attributes.get("http.route") not in wanted:
            continue
        key = (point.resource["service.instance.id"], frozenset(point.attributes.items()))
        if key not in latest or point.time_ns >= latest[key][0]:
            latest[key] = (point.time_ns, point.value["count"])
    counts: dict[str, int] = {}
    for (instance, _), (_, count) in latest.items():
        counts[instance] = counts.get(instance, 0) + count
    return counts
