"""The Prometheus scrape endpoint: one per serving process, on the first free configured port."""

from __future__ import annotations

import os
import socket
import threading

from opentelemetry.sdk.metrics.export import (
    MetricReader,
)

from otel_dist.internal_log import internal_logger
from otel_dist.settings import ConfigurationError, Settings

_log = internal_logger()

_PROMETHEUS_PORT_RANGE = 64


class PrometheusEndpoint:
    """The Prometheus scrape endpoint of one process, bound by ``serve`` on the first free port.

    The SDK exporter has no multiprocess mode, so each worker of ``uvicorn --workers N`` or
    gunicorn serves its own counters, on consecutive ports from the configured one (9464, 9465,
    ...), and Prometheus scrapes each: no series is double-counted or lost.

    Binding waits until the process serves an app: FastAPI apps call ``serve`` on their first
    ASGI call (lifespan startup or first request). Every Python process started under
    ``opentelemetry-instrument`` sets telemetry up, including those that never serve: uvicorn's
    ``--workers``/``--reload`` supervisor and multiprocessing's resource tracker. Bound at setup,
    they would hold 9464 and 9465 and push the workers further up; a gunicorn ``--preload``
    master would hold the only endpoint while its forked workers had none. A process that
    serves no FastAPI app calls ``serve`` itself.
    """

    def __init__(self, host: str, first_port: int) -> None:
        self.host = host
        self.first_port = first_port
        self.port: int | None = None
        self._bound_in_pid: int | None = None
        self._lock = threading.Lock()

    def serve(self) -> int | None:
        """Bind the endpoint, once per process; the port, or None if none was free (logged)."""
        with self._lock:
            if self._bound_in_pid != os.getpid():
                self._bound_in_pid = os.getpid()
                self.port = self._bind()
            return self.port

    def _bind(self) -> int | None:
        from prometheus_client import start_http_server  # noqa: PLC0415

        last = min(self.first_port + _PROMETHEUS_PORT_RANGE, 65536) - 1
        error: OSError | None = None
        for port in range(self.first_port, last + 1):
            try:
                start_http_server(port=port, addr=self.host)
            except OSError as exc:
                error = exc
                continue
            _log.info(
                "otel-dist: Prometheus metrics on http://%s:%d/metrics (pid %d)",
                self.host,
                port,
                os.getpid(),
            )
            return port
        # Raising here would fail the app's first request; the process serves, unscraped.
        _log.error(
            "otel-dist: OTEL_EXPORTER_PROMETHEUS_PORT=%d: no free port in %d-%d on %s (%s); "
            "the metrics of pid %d are not exposed",
            self.first_port,
            self.first_port,
            last,
            self.host,
            error,
            os.getpid(),
        )
        return None


def prometheus_reader(settings: Settings) -> tuple[MetricReader, PrometheusEndpoint]:
    """A Prometheus reader and the endpoint that will serve it (see ``PrometheusEndpoint``).

    The host is checked now, so a bad ``OTEL_EXPORTER_PROMETHEUS_HOST`` fails at setup.
    """
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415

    problem = prometheus_host_problem(settings.prometheus_host)
    if problem is not None:
        raise ConfigurationError(problem)
    return PrometheusMetricReader(), PrometheusEndpoint(
        settings.prometheus_host, settings.prometheus_port
    )


def prometheus_host_problem(host: str) -> str | None:
    """None when this process can listen on ``host``; else the problem, naming the variable."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
    except OSError as exc:
        return f"OTEL_EXPORTER_PROMETHEUS_HOST={host!r}: cannot listen on it ({exc})"
    return None
