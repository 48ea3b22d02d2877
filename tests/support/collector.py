"""Collector outages for tests: an endpoint that accepts connections and never answers."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def hanging_collector() -> Iterator[str]:
    """The base URL of a listener that accepts TCP connections and never answers.

    The worst collector outage: an exporter pointed at it waits for its full timeout on every
    attempt instead of failing fast as it does on a refused connection.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
