"""The benchmark's OTLP receiver: ``otel_dist.tools.sink.OtlpSink(store=False)`` in its own process.

It decodes every export (so a malformed payload would be noticed) and keeps only counts. The
parent drives it over stdin/stdout, one line each way:

* on start it prints ``{"port": N}``;
* ``stats`` → ``{"requests": {...}, "items": {...}, "bad_requests": N}`` (counts since start);
* ``quit`` (or end of input) → it stops.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from otel_dist.tools.sink import SIGNALS, OtlpSink


class _Counts:
    def __init__(self) -> None:
        self.items: dict[str, int] = dict.fromkeys(SIGNALS, 0)
        self._lock = threading.Lock()

    def __call__(self, signal: str, records: Any) -> None:
        with self._lock:
            self.items[signal] += len(records)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.items)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    args = parser.parse_args(argv)
    counts = _Counts()
    sink = OtlpSink(port=args.port, on_receive=counts, store=False)
    with sink:
        print(json.dumps({"port": sink.port}), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "quit":
                break
            if command == "stats":
                reply = {
                    "requests": dict(sink.requests_received),
                    "items": counts.snapshot(),
                    "bad_requests": sink.bad_requests,
                }
                print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
