"""CPU per request with no network: raw ASGI calls into the app, timed with ``process_time``.

Run as ``[opentelemetry-instrument] python -m bench.inproc --out FILE`` in the setup's
environment (the parent does it). Writes
``{"import_done_at": <time.time()>, "endpoints": {"ping": {"cpu_us": ..., ...}, ...}}`` to FILE
(stdout carries the app's own log lines): ``cpu_us`` is the whole process's CPU per request,
``main_thread_us`` the event loop thread's share (the rest is worker threads for sync endpoints
and the exporters' threads), ``wall_us`` elapsed time.

``process_time`` counts every thread of the process, so the span/log batch exporters' work is
included; each endpoint's loop ends with a flush of the tracer and logger providers so spans
still queued are exported (and paid for) inside the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

# path, expected status
ENDPOINTS: dict[str, tuple[str, int]] = {
    "ping": ("/ping", 200),
    "items": ("/items/42", 200),
    "404": ("/items/999999", 404),
    "500": ("/fail", 500),
}

# Share of --requests timed per endpoint: the slow ones need fewer calls for a stable mean.
SHARE = {"ping": 1.0, "items": 0.4, "404": 0.4, "500": 0.2}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Asgi = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Any
]


def _scope(path: str) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"otel-dist-bench"),
            (b"accept", b"*/*"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _call(app: Asgi, path: str) -> int:
    status = 0
    received = False

    async def receive() -> Message:
        nonlocal received
        if received:
            return {"type": "http.disconnect"}
        received = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    try:
        await app(_scope(path), receive, send)
    except Exception:
        # Starlette re-raises an unhandled exception after sending the 500, as it does to uvicorn.
        if status == 0:
            raise
    return status


def _flush() -> None:
    from opentelemetry import _logs, trace  # noqa: PLC0415

    for provider in (trace.get_tracer_provider(), _logs.get_logger_provider()):
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            flush()


async def _measure(
    app: Asgi, path: str, expected: int, requests: int, warmup: int
) -> dict[str, float]:
    for _ in range(warmup):
        status = await _call(app, path)
        if status != expected:
            raise SystemExit(f"GET {path} answered {status}, expected {expected}")
    _flush()
    cpu_start, thread_start = time.process_time(), time.thread_time()
    wall_start = time.perf_counter()
    for _ in range(requests):
        await _call(app, path)
    _flush()
    cpu, thread = time.process_time() - cpu_start, time.thread_time() - thread_start
    wall = time.perf_counter() - wall_start
    return {
        "requests": requests,
        "cpu_us": cpu / requests * 1e6,
        "main_thread_us": thread / requests * 1e6,
        "wall_us": wall / requests * 1e6,
    }


async def _run(app: Asgi, names: list[str], requests: int, warmup: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        path, expected = ENDPOINTS[name]
        count = max(20, int(requests * SHARE[name]))
        results[name] = await _measure(app, path, expected, count, warmup)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc")
    parser.add_argument(
        "--requests", type=int, default=5000, help="timed requests on /ping (others: a share)"
    )
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS), help="comma-separated")
    parser.add_argument("--out", required=True, help="file the JSON result is written to")
    args = parser.parse_args(argv)
    from bench.serve import app  # noqa: PLC0415

    import_done_at = time.time()
    names = [name for name in args.endpoints.split(",") if name]
    endpoints = asyncio.run(_run(app, names, args.requests, args.warmup))
    result = {"import_done_at": import_done_at, "endpoints": endpoints}
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
