"""Readings taken in a background thread while a test runs (a process' memory, CPU counters)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Readings(Generic[T]):
    """Calls ``read`` every ``every_s`` seconds in a daemon thread and keeps each value with its
    ``time.monotonic()``. Stops by itself when ``read`` raises ``OSError`` or ``RuntimeError``:
    what it reads is gone (a process that exited)."""

    def __init__(self, read: Callable[[], T], every_s: float, name: str) -> None:
        self._read = read
        self._every_s = every_s
        self._name = name
        self._taken: list[tuple[float, T]] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start reading."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading and wait for the thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def between(self, start: float, end: float) -> list[T]:
        """The values read in [start, end], oldest first."""
        return [value for at, value in self._taken if start <= at <= end]

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._taken.append((time.monotonic(), self._read()))
            except (OSError, RuntimeError):
                return
            self._stopping.wait(self._every_s)
