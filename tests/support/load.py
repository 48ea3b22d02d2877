"""A steady, fixed-rate HTTP load that records every request, for the fault suite.

``Load`` is open-loop: request ``n`` is due at ``start + n / rps`` whatever happened to the
earlier ones, so a server that stalls shows up as latency and failures instead of as fewer
requests (closed-loop tools slow down with the server and hide exactly that). Each request is
recorded as a ``Sample``: when it was due, when it was sent, its status or the transport error,
its latency and the trace id the response announced. Nothing is retried and nothing is dropped
from the record.

The load runs in the test's process, so that process's garbage collector pauses it: a full
collection over what earlier tests left (a full-scale hostile-input run leaves ~250,000 live
objects and up to ~750,000 in cycles; collecting those took 0.3-1.9 s of CPU) stopped every
sender at once, and the requests due meanwhile counted as one slow window of the app. So a load
first collects and then freezes what the process holds (``gc.freeze``: later collections skip it)
until it stops; ``Sample.lag_s`` says how late each request left all the same.

``ProcessMemory`` samples a process' resident set size from /proc while the load runs.
"""

from __future__ import annotations

import gc
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from support.cpus import pin_this_thread
from support.sampling import Readings

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
REQUEST_ID_HEADER = "X-Request-ID"

# One request of the load: given a client and the request's number, send it and return the
# response (the client's base_url is the server's).
Send = Callable[[httpx.Client, int], httpx.Response]


@dataclass(frozen=True)
class Sample:
    """One request of the load, as the client saw it. Times are ``time.monotonic()`` seconds."""

    number: int
    due: float  # when the fixed rate said to send it
    sent: float  # when a worker actually sent it (later than due if every worker was busy)
    done: float  # when the response (or the error) came back
    status: int  # HTTP status; 0 when there was no response
    error: str  # the transport error ("ConnectError: ..."), "" when there was a response
    trace_id: str  # from the response's traceresponse header, "" when it had none
    request_id: str  # the response's X-Request-ID, "" when it had none

    @property
    def latency_s(self) -> float:
        """Response time at the fixed arrival rate: from when it was due until it completed.

        Includes time spent waiting for a free worker, so a stall of the server cannot hide
        behind requests that were sent late (coordinated omission).
        """
        return self.done - self.due

    @property
    def lag_s(self) -> float:
        """How late the load sent it: the load's own delay, not the server's."""
        return self.sent - self.due

    @property
    def service_s(self) -> float:
        """From sending to the response: the server's time plus the network."""
        return self.done - self.sent

    @property
    def ok(self) -> bool:
        """A 2xx or 3xx response; anything else (4xx, 5xx, no response) is a failure."""
        return not self.error and 200 <= self.status < 400


@dataclass
class Load:
    """Sends ``send(client, n)`` to ``base_url`` at ``rps`` requests per second until stopped.

    Use as a context manager or call ``start``/``stop``. ``workers`` threads send the requests;
    they are the most requests in flight at once. ``timeout_s`` bounds each request (a timeout
    is recorded as a failure, not retried). ``cpus``, when given, is where the load's threads run.
    """

    base_url: str
    rps: float
    send: Send
    workers: int = 32
    timeout_s: float = 10.0
    cpus: frozenset[int] | None = None
    _samples: list[Sample] = field(default_factory=list, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)
    _client: httpx.Client | None = field(default=None, init=False)
    _dispatcher: threading.Thread | None = field(default=None, init=False)
    _pool: ThreadPoolExecutor | None = field(default=None, init=False)
    _froze: bool = field(default=False, init=False)

    def start(self) -> Load:
        """Start sending; returns at once."""
        if self._dispatcher is not None:
            raise RuntimeError("this load was already started")
        self._froze = _freeze_this_process()
        # One client, shared: creating one per thread costs an SSL context each, and that cost
        # would show up as latency of the first requests.
        limits = httpx.Limits(max_connections=self.workers, max_keepalive_connections=self.workers)
        self._client = httpx.Client(base_url=self.base_url, timeout=self.timeout_s, limits=limits)
        self._pool = ThreadPoolExecutor(
            self.workers, thread_name_prefix="load", initializer=self._pin
        )
        self._dispatcher = threading.Thread(target=self._dispatch, name="load-dispatch")
        self._dispatcher.start()
        return self

    def stop(self) -> list[Sample]:
        """Stop scheduling, wait for the requests in flight, and return every sample."""
        self._stopping.set()
        if self._dispatcher is not None:
            self._dispatcher.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._client is not None:
            self._client.close()
        if self._froze:
            gc.unfreeze()
            self._froze = False
        return self.samples()

    def __enter__(self) -> Load:
        """Start the load."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the load (waits for the requests in flight)."""
        self.stop()

    def samples(self) -> list[Sample]:
        """The requests completed so far, in the order they were due."""
        with self._lock:
            return sorted(self._samples, key=lambda s: s.number)

    def _pin(self) -> None:
        if self.cpus is not None:
            pin_this_thread(self.cpus)

    def _dispatch(self) -> None:
        assert self._pool is not None
        self._pin()
        started = time.monotonic()
        interval = 1.0 / self.rps
        n = 0
        while not self._stopping.is_set():
            due = started + n * interval
            wait = due - time.monotonic()
            if wait > 0 and self._stopping.wait(wait):
                break
            self._pool.submit(self._one, n, due)
            n += 1

    def _one(self, number: int, due: float) -> None:
        client = self._client
        assert client is not None
        sent = time.monotonic()
        status, error, trace_id, request_id = 0, "", "", ""
        try:
            response = self.send(client, number)
        except Exception as exc:  # recorded, never lost in the worker's future
            error = f"{type(exc).__name__}: {exc}"
        else:
            status = response.status_code
            match = TRACEPARENT.fullmatch(response.headers.get("traceresponse", ""))
            trace_id = match.group(1) if match else ""
            request_id = response.headers.get(REQUEST_ID_HEADER, "")
        sample = Sample(number, due, sent, time.monotonic(), status, error, trace_id, request_id)
        with self._lock:
            self._samples.append(sample)


def _freeze_this_process() -> bool:
    """Collect, then exempt every object alive now from later collections; False when the
    process froze objects already (another load runs: that one unfreezes)."""
    if gc.get_freeze_count():
        return False
    gc.collect()
    gc.freeze()
    return True


def between(samples: Iterable[Sample], start: float, end: float) -> list[Sample]:
    """The samples that were due in [start, end)."""
    return [s for s in samples if start <= s.due < end]


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100): a value that was measured, not a mix.

    With n values, p99 is the ceil(0.99 n)-th smallest: of 600 latencies, the 594th.
    """
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def failures(samples: Iterable[Sample]) -> list[Sample]:
    """The samples that were not a 2xx/3xx response."""
    return [s for s in samples if not s.ok]


def describe_failures(samples: Iterable[Sample], limit: int = 5) -> str:
    """A few failed samples, for an assertion message."""
    failed = failures(samples)
    shown = [f"#{s.number} status={s.status} {s.error}".strip() for s in failed[:limit]]
    more = f" (+{len(failed) - limit} more)" if len(failed) > limit else ""
    return "; ".join(shown) + more


@dataclass
class ProcessMemory:
    """Samples ``pid``'s resident set size (VmRSS in /proc/<pid>/status) every ``every_s``."""

    pid: int
    every_s: float = 0.25
    _readings: Readings[int] = field(init=False)

    def __post_init__(self) -> None:
        self._readings = Readings(self.rss_bytes, self.every_s, "rss")

    def rss_bytes(self) -> int:
        """The resident set size now."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def start(self) -> ProcessMemory:
        """Start sampling in a thread."""
        self._readings.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._readings.stop()

    def peak(self, start: float, end: float) -> int:
        """The largest reading taken in [start, end]."""
        values = self._readings.between(start, end)
        if not values:
            raise ValueError(f"no RSS reading between {start:.1f} and {end:.1f}")
        return max(values)
