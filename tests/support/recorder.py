"""A second local HTTP server that records the headers of every request it gets.

The downstream of an app's outgoing call: tests read what the app's httpx client really sent
(``traceparent``, ``tracestate``) on the wire, by the path the app called.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HeaderRecorder:
    """Requests received, by path: each a list of (lower-case name, value) in wire order."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._lock = threading.Lock()
        self._received: dict[str, list[tuple[str, str]]] = {}

    def record(self, path: str, headers: list[tuple[str, str]]) -> None:
        with self._lock:
            self._received[path] = headers

    def headers(self, path: str, timeout: float = 10.0) -> list[tuple[str, str]]:
        """The headers of the request to ``path``, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if path in self._received:
                    return self._received[path]
            if time.monotonic() >= deadline:
                raise AssertionError(f"no request to {path} reached the recorder")
            time.sleep(0.02)

    def values(self, path: str, name: str) -> list[str]:
        """Every value of header ``name`` in the request to ``path``."""
        return [value for key, value in self.headers(path) if key == name]


@contextmanager
def header_recorder() -> Iterator[HeaderRecorder]:
    """A started recorder on a free loopback port, stopped afterwards."""
    recorder: HeaderRecorder | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert recorder is not None
            recorder.record(self.path, [(k.lower(), v) for k, v in self.headers.items()])
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            del format, args  # quiet: the test output is for failures

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    recorder = HeaderRecorder(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, name="header-recorder", daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
