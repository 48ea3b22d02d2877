"""``otel-dist doctor``: what otel-dist would do in this environment, and what stands in its way.

It reads the same settings as ``configure()`` (leniently, so every bad value is listed), and
reports: the effective settings with secrets masked, versions, which instrumentations run and,
for each that won't, why; conflicting distros/configurators; whether each OTLP endpoint answers.
"""

from __future__ import annotations

import os
import platform
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points, version
from importlib.util import find_spec
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from otel_dist import __version__
from otel_dist.distro import HANDLED_BY_OTEL_DIST, conflicts
from otel_dist.settings import SIGNALS, Settings, load_settings

MASK = "***"
_VERSIONED = (
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation",
    "fastapi",
    "starlette",
    "sqlalchemy",
    "structlog",
    "uvicorn",
    "gunicorn",
    "httpx",
    "greenlet",
)


@dataclass
class Report:
    """Sections of lines to print, and the problems that make doctor exit 1."""

    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, title: str, lines: list[str]) -> None:
        """Append a section."""
        self.sections.append((title, lines))

    def render(self) -> str:
        """The report as text."""
        out: list[str] = [f"otel-dist {__version__} doctor"]
        for title, lines in self.sections:
            out.append("")
            out.append(f"{title}:")
            out.extend(f"  {line}" for line in lines)
        out.append("")
        if self.problems:
            out.append(f"{len(self.problems)} problem(s):")
            out.extend(f"  - {p}" for p in self.problems)
        else:
            out.append("no problems found")
        return "\n".join(out)


def mask_url(url: str) -> str:
    """The URL with any user:password replaced by the mask."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _installed(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _settings_lines(settings: Settings) -> list[str]:
    lines = [
        f"service.name = {settings.service_name or '(OTEL_SERVICE_NAME unset: unknown_service)'}",
        f"exporters: traces={settings.exporter('traces')} metrics={settings.exporter('metrics')} "
        f"logs={settings.exporter('logs')}",
        f"sampler = {settings.sampler} (arg {settings.sampler_arg})",
    ]
    for signal in SIGNALS:
        otlp = settings.otlp[signal]
        headers = ", ".join(f"{k}={MASK}" for k in otlp.headers) or "none"
        lines.append(
            f"otlp {signal}: {mask_url(otlp.endpoint)} ({otlp.protocol}, timeout {otlp.timeout_s}s, "
            f"compression {otlp.compression}, headers: {headers})"
        )
    lines += [
        f"excluded urls = {', '.join(settings.excluded_urls) or 'none'}",
        f"http instrumentation = {settings.http_instrumentation}",
        f"error format = {settings.error_format} (debug errors: {settings.debug_errors})",
        f"response trace headers = {settings.response_trace_headers}; "
        f"request id header = {settings.request_id_header}",
        f"scrubbing = {settings.scrub} (extra patterns: {len(settings.scrub_patterns)})",
        f"sqlcommenter = {settings.sqlcommenter}; log correlation = {settings.log_correlation}",
        f"shutdown flush bound = {settings.shutdown_timeout_s}s",
    ]
    return lines


def _instrumentation_lines(settings: Settings) -> tuple[list[str], list[str]]:
    lines: list[str] = []
    skipped: list[str] = []

    def check(name: str, runs: bool, why: str) -> None:
        (lines if runs else skipped).append(f"{name}: {why}")

    traces_or_metrics = settings.exporter("traces") != "none" or settings.exporter("metrics") != "none"
    fastapi_version = _installed("fastapi")
    if fastapi_version is None:
        check("fastapi", False, "FastAPI is not installed")
    else:
        native = find_spec("fastapi.telemetry") is not None
        mode = "contrib" if settings.http_instrumentation == "contrib" or not native else "native"
        check("fastapi", traces_or_metrics, f"FastAPI {fastapi_version}, {mode} telemetry"
              if traces_or_metrics else "traces and metrics exporters are none")
    sa_version = _installed("sqlalchemy")
    if sa_version is None:
        check("sqlalchemy", False, "SQLAlchemy is not installed")
    else:
        greenlet = "AsyncEngine supported" if _installed("greenlet") else \
            "greenlet not installed: sync engines only"
        check("sqlalchemy", traces_or_metrics, f"SQLAlchemy {sa_version} (otel-dist events; "
              f"{greenlet})" if traces_or_metrics else "traces and metrics exporters are none")
    structlog_version = _installed("structlog")
    check("structlog", structlog_version is not None and settings.log_correlation,
          f"structlog {structlog_version}: trace ids injected before the renderer"
          if structlog_version and settings.log_correlation
          else "structlog not installed" if not structlog_version
          else "OTEL_DIST_LOG_CORRELATION=false")
    check("logging", True, "stdlib records get trace_id/span_id/request_id"
          + ("; exported over OTLP" if settings.exporter("logs") != "none" else ""))
    check("httpx", _installed("httpx") is not None and settings.exporter("traces") != "none",
          "outgoing calls carry traceparent" if _installed("httpx") else "httpx not installed")
    check("runtime metrics", settings.runtime_metrics and settings.exporter("metrics") != "none",
          "process CPU/memory/threads/GC" if settings.runtime_metrics
          else "OTEL_DIST_RUNTIME_METRICS=false")
    for ep in entry_points(group="opentelemetry_instrumentor"):
        if ep.name in HANDLED_BY_OTEL_DIST:
            continue
        lines.append(f"{ep.name}: contrib instrumentor, loaded by opentelemetry-instrument")
    return lines, skipped


def _probe_otlp_http(endpoint: str, timeout: float) -> str | None:
    """None when the endpoint answers an (empty) OTLP export; else the reason it does not."""
    request = urllib.request.Request(  # noqa: S310 - the URL is validated http(s) by settings
        endpoint, data=b"", method="POST", headers={"Content-Type": "application/x-protobuf"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            del response
            return None
    except urllib.error.HTTPError as exc:
        # Any HTTP answer proves something listens; 404 means a wrong path though.
        return f"answers HTTP {exc.code} (wrong path?)" if exc.code == 404 else None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"does not answer: {reason}"


def _endpoint_lines(settings: Settings, probe: Callable[[str, float], str | None],
                    report: Report) -> list[str]:
    lines: list[str] = []
    for signal in SIGNALS:
        if settings.exporter(signal) != "otlp":
            lines.append(f"{signal}: exporter {settings.exporter(signal)}, nothing to probe")
            continue
        otlp = settings.otlp[signal]
        shown = mask_url(otlp.endpoint)
        if otlp.protocol == "grpc":
            problem = _probe_grpc(otlp.endpoint, min(otlp.timeout_s, 3.0))
        else:
            problem = probe(otlp.endpoint, min(otlp.timeout_s, 3.0))
        if problem is None:
            lines.append(f"{signal}: {shown} answers")
        else:
            lines.append(f"{signal}: {shown} {problem}")
            report.problems.append(f"OTLP {signal} endpoint {shown} {problem}")
    return lines


def _probe_grpc(endpoint: str, timeout: float) -> str | None:
    from otel_dist.sdk import port_answers  # noqa: PLC0415

    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 4317)
    host = parts.hostname or "localhost"
    return None if port_answers(host, port, timeout) else "does not accept TCP connections"


def diagnose(
    env: Mapping[str, str] | None = None,
    *,
    network: bool = True,
    probe: Callable[[str, float], str | None] = _probe_otlp_http,
) -> Report:
    """Build the doctor report for ``env`` (default: this process's environment)."""
    settings = load_settings(os.environ if env is None else env, strict=False)
    report = Report()
    report.problems.extend(settings.problems)
    report.add("settings (secrets masked)", _settings_lines(settings))
    report.add("versions", [f"python {platform.python_version()}", f"otel-dist {__version__}"]
               + [f"{dist} {_installed(dist) or 'not installed'}" for dist in _VERSIONED])
    running, skipped = _instrumentation_lines(settings)
    report.add("instrumentations that will run", running or ["none"])
    report.add("instrumentations that will not run", skipped or ["none"])
    found = conflicts()
    report.problems.extend(found)
    report.add("distros and configurators", found or ["otel_dist only: no conflict"])
    if network:
        report.add("endpoints", _endpoint_lines(settings, probe, report))
    return report


def main(argv: list[str] | None = None, *, out: Callable[[str], Any] = print) -> int:
    """Print the report; exit status 1 when a problem was found."""
    network = "--no-network" not in (argv or [])
    report = diagnose(network=network)
    out(report.render())
    return 1 if report.problems else 0
