"""Where otel_dist's time goes on ``/ping``: cProfile over in-process ASGI calls.

Run as ``python -m bench.profile --endpoint ping --out FILE`` in a setup's environment (the
parent does it). The timer is the main thread's CPU time (``time.thread_time``): the exporters'
threads are not profiled, and time spent waiting for the GIL they hold (which a wall-clock
profile charges to whatever released it, e.g. ``os.urandom``) is not counted. cProfile's own
overhead inflates small functions, so read the numbers as shares, not absolutes; a coroutine is
"called" again at every resumption. With ``--inline-threadpool`` sync endpoints run on the event
loop's thread instead of a worker thread, so their work (SQLAlchemy, logging) is profiled too.
Writes the top functions by own and cumulative time and own time per file, in µs per request.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from bench.inproc import ENDPOINTS, Asgi, _call, _flush

_PREFIXES = sorted(
    {p for p in sys.path if p.endswith("site-packages")}
    | {str(Path.cwd()), sysconfig.get_paths()["stdlib"]},
    key=len,
)


def _where(filename: str, line: int, function: str) -> str:
    for prefix in reversed(_PREFIXES):
        if filename.startswith(prefix + "/"):
            filename = filename[len(prefix) + 1 :]
            break
    if filename == "~":  # a builtin
        return function
    return f"{filename}:{line}:{function}"


# Where telemetry code lives: otel_dist itself, the OTel API/SDK, FastAPI's native telemetry.
TELEMETRY_CODE = ("src/otel_dist/", "opentelemetry/", "fastapi/telemetry/")


def _rows(
    stats: pstats.Stats, key: int, requests: int, top: int, *, telemetry_only: bool = False
) -> list[dict[str, Any]]:
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    items = list(table.items())
    if telemetry_only:
        items = [item for item in items if _where(*item[0]).startswith(TELEMETRY_CODE)]
    ordered = sorted(items, key=lambda item: item[1][key], reverse=True)[:top]
    return [
        {
            "where": _where(*func),
            "calls_per_request": round(calls / requests, 2),
            "own_us": round(own / requests * 1e6, 2),
            "cumulative_us": round(cumulative / requests * 1e6, 2),
        }
        for func, (_, calls, own, cumulative, _) in ordered
    ]


def _by_file(stats: pstats.Stats, requests: int, top: int) -> list[dict[str, Any]]:
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    files: dict[str, float] = {}
    for (filename, line, function), (_, _, own, _, _) in table.items():
        where = _where(filename, line, function).split(":", 1)[0]
        files[where] = files.get(where, 0.0) + own
    ordered = sorted(files.items(), key=lambda item: item[1], reverse=True)[:top]
    return [{"file": name, "own_us": round(own / requests * 1e6, 2)} for name, own in ordered]


def _inline_threadpool() -> None:
    import fastapi.routing  # noqa: PLC0415

    async def run_inline(func: Any, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    vars(fastapi.routing)["run_in_threadpool"] = run_inline


async def _loop(app: Asgi, path: str, requests: int) -> None:
    for _ in range(requests):
        await _call(app, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--endpoint", default="ping", choices=sorted(ENDPOINTS))
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", required=True)
    parser.add_argument("--inline-threadpool", action="store_true")
    args = parser.parse_args(argv)
    from bench.serve import app  # noqa: PLC0415

    if args.inline_threadpool:
        _inline_threadpool()

    path = ENDPOINTS[args.endpoint][0]
    asyncio.run(_loop(app, path, 500))
    _flush()
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    asyncio.run(_loop(app, path, args.requests))
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    result = {
        "endpoint": args.endpoint,
        "inline_threadpool": args.inline_threadpool,
        "requests": args.requests,
        "profiled_us_per_request": round(total / args.requests * 1e6, 1),
        "by_own_time": _rows(stats, 2, args.requests, args.top),
        "by_cumulative_time": _rows(stats, 3, args.requests, args.top),
        "telemetry_by_cumulative_time": _rows(
            stats, 3, args.requests, args.top, telemetry_only=True
        ),
        "by_file": _by_file(stats, args.requests, args.top),
    }
    Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
