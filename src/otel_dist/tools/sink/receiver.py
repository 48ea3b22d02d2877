"""A local OTLP/HTTP receiver: what an app really sends, decoded into plain records.

``OtlpSink`` answers ``POST /v1/traces``, ``/v1/metrics`` and ``/v1/logs`` the way a collector
does (protobuf only, gzip/deflate bodies, an empty ``Export*ServiceResponse`` on success) and keeps
every item as a frozen dataclass. Integration tests point real exporters at it and assert on the
records; ``otel-dist sink`` runs it in the foreground and prints one line per item received.

Only the stdlib HTTP server and the ``opentelemetry-proto`` messages are used, so the sink checks
the wire format the SDK exporters produce rather than a re-implementation of it.
"""

from __future__ import annotations

import contextlib
import email.message
import logging
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)

from otel_dist.tools.sink.records import (
    SIGNALS,
    LogRecordData,
    MetricPoint,
    SpanRecord,
    _parse_logs,
    _parse_metrics,
    _parse_traces,
)

_logger = logging.getLogger(__name__)

# A collector's default max request size; above it the body is refused before it is read.
_MAX_BODY_BYTES = 64 * 1024 * 1024
_PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class _Route:
    signal: str
    parse: Callable[[bytes], list[Any]]
    success_body: bytes


_ROUTES = {
    "/v1/traces": _Route("traces", _parse_traces, ExportTraceServiceResponse().SerializeToString()),
    "/v1/metrics": _Route(
        "metrics", _parse_metrics, ExportMetricsServiceResponse().SerializeToString()
    ),
    "/v1/logs": _Route("logs", _parse_logs, ExportLogsServiceResponse().SerializeToString()),
}


# --- HTTP ----------------------------------------------------------------------------------------


class _RejectedError(Exception):
    """A request the sink answers with ``status`` instead of storing it."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        # HTTP "deflate" is zlib-wrapped; +32 also accepts a gzip header, as curl users send.
        wbits = 32 + zlib.MAX_WBITS
    else:
        raise _RejectedError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"unsupported Content-Encoding {encoding!r}"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        # Bounded, so a small compressed bomb cannot exhaust memory.
        payload = inflater.decompress(body, _MAX_BODY_BYTES + 1)
    except zlib.error as error:
        raise _RejectedError(HTTPStatus.BAD_REQUEST, f"bad {encoding} body: {error}") from None
    if len(payload) > _MAX_BODY_BYTES:
        raise _RejectedError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "decompressed body too large")
    if not inflater.eof:
        raise _RejectedError(HTTPStatus.BAD_REQUEST, f"truncated {encoding} body")
    return payload


class _Server(ThreadingHTTPServer):
    """The HTTP server of one sink; remembers open connections so ``stop`` can end them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], sink: OtlpSink) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sink = sink
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Hang up on idle keep-alive clients so their handler threads end now."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # exporters keep connections alive between batches
    timeout = 60  # a stalled or idle client does not pin a thread for longer
    server: _Server

    def do_POST(self) -> None:
        route = _ROUTES.get(self.path.split("?", 1)[0])
        try:
            body = self._read_body()
            if route is None:
                raise _RejectedError(HTTPStatus.NOT_FOUND, f"no OTLP endpoint at {self.path}")
            self.server.sink._handle(route, self.headers, body)
        except _RejectedError as rejection:
            self._reply(rejection.status, rejection.reason.encode(), "text/plain; charset=utf-8")
            return
        self._reply(HTTPStatus.OK, route.success_body, _PROTOBUF)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] in _ROUTES:
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, b"OTLP endpoints take POST", "text/plain")
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise _RejectedError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise _RejectedError(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        if length > _MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would be taken for the next request
            raise _RejectedError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        return self.rfile.read(length)

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("%s - " + format, self.address_string(), *args)


# --- the sink ------------------------------------------------------------------------------------


class OtlpSink:
    """An OTLP/HTTP receiver on a loopback port that keeps everything it is sent.

    Use it as a context manager, or call ``start``/``stop``. Storage is thread-safe; the
    accessors return copies. ``on_receive(signal, records)`` is called (on a server thread) after
    each accepted export with the signal name ("traces", "metrics" or "logs") and the list of
    decoded records of that request; an exception in it is logged and does not fail the export.
    With ``store=False`` nothing is kept (for long-running use with ``on_receive`` only).

    Counters (reset by ``clear``): ``requests_received[signal]`` counts every POST to that
    signal's path whatever the outcome, ``bytes_received[signal]`` the raw (possibly compressed)
    body bytes, ``bad_requests`` those answered 400, ``rejected_requests`` those answered with
    ``fail_with``. Set ``fail_with`` to an HTTP status (503, 429, 400...) to act as a broken
    collector: every export is then answered with it and not stored.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_receive: Callable[[str, Any], None] | None = None,
        store: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.on_receive = on_receive
        self.store = store
        self.fail_with: int | None = None
        self.requests_received: dict[str, int] = dict.fromkeys(SIGNALS, 0)
        self.bytes_received: dict[str, int] = dict.fromkeys(SIGNALS, 0)
        self.bad_requests = 0
        self.rejected_requests = 0
        self._spans: list[SpanRecord] = []
        self._logs: list[LogRecordData] = []
        self._metrics: list[MetricPoint] = []
        self._records: dict[str, list[Any]] = {
            "traces": self._spans,
            "metrics": self._metrics,
            "logs": self._logs,
        }
        # Reentrant so a wait_for predicate can call spans()/logs() while the condition is held.
        self._changed = threading.Condition(threading.RLock())
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> OtlpSink:
        """Bind the port and serve on a daemon thread; returns the sink for chaining."""
        if self._server is not None:
            msg = "OtlpSink already started"
            raise RuntimeError(msg)
        server = _Server((self.host, self.port), self)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"otlp-sink:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, hang up on open connections and release the port. Safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> OtlpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT``, e.g. ``http://127.0.0.1:4318``."""
        if self._server is None:
            msg = "OtlpSink is not started"
            raise RuntimeError(msg)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # received data

    def spans(self) -> list[SpanRecord]:
        """Every span received so far, in arrival order."""
        with self._changed:
            return list(self._spans)

    def logs(self) -> list[LogRecordData]:
        """Every log record received so far, in arrival order."""
        with self._changed:
            return list(self._logs)

    def metrics(self) -> list[MetricPoint]:
        """Every metric data point received so far, in arrival order."""
        with self._changed:
            return list(self._metrics)

    def wait_for(self, predicate: Callable[[OtlpSink], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(sink)`` is true; False if ``timeout`` seconds pass first.

        The predicate is re-checked after every export and at least every 0.1 s.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.1))
            return True

    def clear(self) -> None:
        """Forget everything received and reset the counters (the dicts are kept, zeroed)."""
        with self._changed:
            for records in self._records.values():
                records.clear()
            for counters in (self.requests_received, self.bytes_received):
                for signal_name in counters:
                    counters[signal_name] = 0
            self.bad_requests = 0
            self.rejected_requests = 0

    # called by the request handler

    def _handle(self, route: _Route, headers: email.message.Message, body: bytes) -> None:
        with self._changed:
            self.requests_received[route.signal] += 1
            self.bytes_received[route.signal] += len(body)
            if self.fail_with is not None:
                self.rejected_requests += 1
                raise _RejectedError(self.fail_with, "sink set to fail_with")
        content_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if content_type != _PROTOBUF:
            raise _RejectedError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"only {_PROTOBUF} is accepted, got {content_type or 'no Content-Type'!r}",
            )
        encoding = headers.get("Content-Encoding", "").strip().lower()
        try:
            records = route.parse(_decompress(body, encoding))
        except _RejectedError as rejection:
            if rejection.status == HTTPStatus.BAD_REQUEST:
                self._count_bad_request()
            raise
        # protobuf ships no type information, so its DecodeError cannot be named here without
        # an ignore; any failure to parse means the body is not an OTLP request.
        except Exception as error:
            self._count_bad_request()
            raise _RejectedError(HTTPStatus.BAD_REQUEST, f"undecodable body: {error}") from None
        self._store(route.signal, records)

    def _count_bad_request(self) -> None:
        with self._changed:
            self.bad_requests += 1

    def _store(self, signal_name: str, records: list[Any]) -> None:
        with self._changed:
            if self.store:
                self._records[signal_name].extend(records)
            self._changed.notify_all()
        if self.on_receive is not None:
            try:
                self.on_receive(signal_name, records)
            except Exception:
                _logger.exception("otel-dist sink: on_receive callback failed")
