"""Synthetic OTLP trace load for capacity measurements: checkout-shaped traces, sent as fast as
a collector takes them.

Each trace looks like one of the shop's checkouts: the shop's server span, its database span
and its HTTP client span, and the stock service's server span under that client span, so span
metrics and the service graph do their real work. One trace in ``error_every`` fails. Python
cannot build protobuf messages as fast as a collector decodes them, so one request body is
serialised once and every send patches fresh random trace ids into a copy at the byte offsets
where the ids sit: every request carries new traces, as tail sampling needs.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from support.cpus import pin_this_thread

SPANS_PER_TRACE = 4
_ID_BYTES = 16


def _attr(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _resource_spans(service: str) -> ResourceSpans:
    spans = ResourceSpans()
    spans.resource.attributes.extend(
        [_attr("service.name", service), _attr("deployment.environment.name", "capacity")]
    )
    spans.scope_spans.add().scope.name = "capacity"
    return spans


@dataclass(frozen=True)
class Template:
    """A serialised request of ``traces`` traces and where each trace id sits in it."""

    body: bytes
    offsets: tuple[tuple[int, ...], ...]  # per trace, every byte offset of its id

    @property
    def spans(self) -> int:
        """Spans per request."""
        return len(self.offsets) * SPANS_PER_TRACE

    def fresh(self) -> bytes:
        """The body with a new random id for each trace."""
        body = bytearray(self.body)
        ids = os.urandom(_ID_BYTES * len(self.offsets))
        for index, offsets in enumerate(self.offsets):
            new = ids[index * _ID_BYTES : (index + 1) * _ID_BYTES]
            for offset in offsets:
                body[offset : offset + _ID_BYTES] = new
        return bytes(body)


def checkout_template(traces: int = 50, error_every: int = 50) -> Template:
    """``traces`` checkout-shaped traces in one request; one in ``error_every`` fails."""
    shop, stock = _resource_spans("shop"), _resource_spans("stock")
    now = time.time_ns()
    trace_ids = [os.urandom(_ID_BYTES) for _ in range(traces)]
    for number, trace_id in enumerate(trace_ids):
        failed = number % error_every == 0
        _add_checkout(shop, stock, trace_id, now - 50_000_000, failed)
    request = ExportTraceServiceRequest(resource_spans=[shop, stock])
    body = request.SerializeToString()
    offsets = []
    for trace_id in trace_ids:
        found, start = [], body.find(trace_id)
        while start != -1:
            found.append(start)
            start = body.find(trace_id, start + 1)
        if len(found) != SPANS_PER_TRACE:
            raise RuntimeError(f"trace id found {len(found)} times, not {SPANS_PER_TRACE}")
        offsets.append(tuple(found))
    return Template(body, tuple(offsets))


def _add_checkout(
    shop: ResourceSpans, stock: ResourceSpans, trace_id: bytes, start: int, failed: bool
) -> None:
    server_id, db_id, client_id, stock_id = (os.urandom(8) for _ in range(4))
    status = Status(code=Status.STATUS_CODE_ERROR if failed else Status.STATUS_CODE_OK)
    http_status = 500 if failed else 200
    ms = 1_000_000
    shop.scope_spans[0].spans.extend(
        [
            Span(
                trace_id=trace_id,
                span_id=server_id,
                name="GET /checkout/{item_id}",
                kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=start,
                end_time_unix_nano=start + 12 * ms,
                attributes=[
                    _attr("http.request.method", "GET"),
                    _attr("http.route", "/checkout/{item_id}"),
                    _attr("http.response.status_code", http_status),
                ],
                status=status,
            ),
            Span(
                trace_id=trace_id,
                span_id=db_id,
                parent_span_id=server_id,
                name="SELECT shop",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=start + ms,
                end_time_unix_nano=start + 2 * ms,
                attributes=[
                    _attr("db.system.name", "sqlite"),
                    _attr("db.query.text", "SELECT items.id FROM items WHERE items.id = ?"),
                ],
            ),
            Span(
                trace_id=trace_id,
                span_id=client_id,
                parent_span_id=server_id,
                name="GET",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=start + 3 * ms,
                end_time_unix_nano=start + 10 * ms,
                attributes=[
                    _attr("http.request.method", "GET"),
                    _attr("server.address", "127.0.0.1"),
                    _attr("http.response.status_code", http_status),
                ],
                status=status,
            ),
        ]
    )
    stock.scope_spans[0].spans.append(
        Span(
            trace_id=trace_id,
            span_id=stock_id,
            parent_span_id=client_id,
            name="GET /stock/{item_id}",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=start + 4 * ms,
            end_time_unix_nano=start + 9 * ms,
            attributes=[
                _attr("http.request.method", "GET"),
                _attr("http.route", "/stock/{item_id}"),
                _attr("http.response.status_code", http_status),
            ],
            status=status,
        )
    )


@dataclass
class SpanFlood:
    """``senders`` threads posting fresh copies of ``template`` to ``endpoint``/v1/traces, each
    as soon as its previous request was answered (closed loop: the collector sets the pace)."""

    endpoint: str
    template: Template
    senders: int = 4
    cpus: frozenset[int] | None = None
    accepted_spans: int = field(default=0, init=False)
    refused_requests: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)

    def start(self) -> SpanFlood:
        """Start the senders; returns at once."""
        for number in range(self.senders):
            thread = threading.Thread(target=self._send, name=f"flood-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop sending and wait for the requests in flight."""
        self._stopping.set()
        for thread in self._threads:
            thread.join()

    def _send(self) -> None:
        if self.cpus is not None:
            pin_this_thread(self.cpus)
        headers = {"Content-Type": "application/x-protobuf"}
        with httpx.Client(base_url=self.endpoint, timeout=30) as client:
            while not self._stopping.is_set():
                try:
                    response = client.post(
                        "/v1/traces", content=self.template.fresh(), headers=headers
                    )
                except httpx.HTTPError:
                    ok = False
                else:
                    ok = response.status_code == 200
                with self._lock:
                    if ok:
                        self.accepted_spans += self.template.spans
                    else:
                        self.refused_requests += 1
