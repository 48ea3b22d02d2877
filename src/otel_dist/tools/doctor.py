"""``otel-dist doctor``: what otel-dist would do in this environment, and what stands in its way.

It reads the same settings as ``configure()`` (leniently, so every bad value is listed) and prints
the same plan setup follows (``otel_dist.plan``): the settings as they will run, with secrets
masked, versions, which instrumentations run and, for each that won't, why; conflicting
distros/configurators; whether each OTLP endpoint answers. It exits 1 on any problem, so on
every setting that would turn a signal off.
"""

from __future__ import annotations

import base64
import os
import platform
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from otel_dist.distro import CHOOSERS, HANDLED_BY_OTEL_DIST, NAME, conflicts
from otel_dist.plan import Plan, installed, make_plan
from otel_dist.settings import SIGNALS, Signal, load_settings
from otel_dist.version import __version__

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
    "fastotel",
)
# Settings problems quote the raw value: for these variables the value itself is the secret.
_SECRET_VALUE_VARIABLE = re.compile(r"OTEL_EXPORTER_OTLP_(?:[A-Z]+_)?HEADERS")
_URL_USERINFO = re.compile(r"(?<=://)[^/?#@\s']*@")
_PROBLEM_SEPARATOR = " is not valid: "
_LIBRARY_ABSENT = "library not installed"
USAGE = "usage: otel-dist doctor [--no-network]"


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
    # Keep the host exactly as written (an IPv6 address keeps its brackets).
    host_and_port = parts.netloc.rpartition("@")[2]
    return urlunsplit(
        (parts.scheme, f"{MASK}@{host_and_port}", parts.path, parts.query, parts.fragment)
    )


def mask_problem(problem: str) -> str:
    """A settings problem with credentials in URLs and OTLP header values masked."""
    variable, sep, rest = problem.partition("=")
    if sep and _SECRET_VALUE_VARIABLE.fullmatch(variable) and _PROBLEM_SEPARATOR in rest:
        problem = f"{variable}={MASK}{_PROBLEM_SEPARATOR}{rest.rpartition(_PROBLEM_SEPARATOR)[2]}"
    return _URL_USERINFO.sub(f"{MASK}@", problem)


def _settings_lines(plan: Plan) -> list[str]:
    settings = plan.settings
    unset_name = "(OTEL_SERVICE_NAME unset: unknown_service:python)"
    lines = [
        f"service.name = {settings.service_name or unset_name}",
        f"exporters: traces={settings.exporter('traces')} metrics={settings.exporter('metrics')} "
        f"logs={settings.exporter('logs')}",
        f"sampler = {settings.sampler} (arg {settings.sampler_arg})",
    ]
    lines += [_otlp_line(plan, signal) for signal in SIGNALS]
    lines += [_native_line(plan)]
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


def _otlp_line(plan: Plan, signal: Signal) -> str:
    """Where ``signal`` goes over OTLP; for a signal a problem turned off, that problem.

    The problem quotes the value the user set: the endpoint the settings fell back to is not
    where anything would be sent.
    """
    export = plan.exports[signal]
    if not export.runs and export.why in plan.problems:
        return f"otlp {signal}: off: {mask_problem(export.why)}"
    otlp = plan.settings.otlp[signal]
    headers = ", ".join(f"{k}={MASK}" for k in otlp.headers) or "none"
    return (
        f"otlp {signal}: {mask_url(otlp.endpoint)} ({otlp.protocol}, "
        f"timeout {otlp.timeout_s}s, compression {otlp.compression}, headers: {headers})"
    )


def _native_line(plan: Plan) -> str:
    """Whether spans leave through fastotel (the ``[native]`` extra) or the SDK, and why."""
    native = plan.native_spans
    used = "used" if native.runs else "not used"
    return f"native span export = {plan.settings.native_export}: {used}: {native.why}"


def _contrib_problem(ep: EntryPoint) -> str | None:
    """None when the launcher would instrument with ``ep``; else why it skips it.

    ``_LIBRARY_ABSENT`` when the library it instruments is not installed: the launcher skips it
    silently, and its entry point name (``httpx2`` beside ``httpx``) means nothing to a user.
    """
    from opentelemetry.instrumentation.dependencies import (  # noqa: PLC0415
        get_dependency_conflicts,
        get_dist_dependency_conflicts,
    )

    try:
        conflict = get_dist_dependency_conflicts(ep.dist) if ep.dist is not None else None
        if conflict is None:
            # The launcher skips an instrumentor whose library is missing when instrument()
            # raises ModuleNotFoundError; its declared dependencies tell the same without calling.
            conflict = get_dependency_conflicts(ep.load()().instrumentation_dependencies())
    except Exception as exc:  # doctor reports, never crashes
        return f"cannot be loaded: {exc}"
    if conflict is None:
        return None
    if not (conflict.found or conflict.found_any):
        return _LIBRARY_ABSENT
    return str(conflict)


def _contrib_instrumentations(env: Mapping[str, str]) -> list[tuple[str, bool, str]]:
    """The launcher's own instrumentors: the ones otel-dist does not replace."""
    disabled = {x.strip() for x in env.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    found: list[tuple[str, bool, str]] = []
    for ep in entry_points(group="opentelemetry_instrumentor"):
        if ep.name in HANDLED_BY_OTEL_DIST:
            continue
        if "*" in disabled or ep.name in disabled:
            found.append((ep.name, False, "listed in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"))
            continue
        problem = _contrib_problem(ep)
        if problem is _LIBRARY_ABSENT:
            continue
        if problem is None:
            found.append(
                (ep.name, True, "contrib instrumentor, loaded by opentelemetry-instrument")
            )
        else:
            found.append((ep.name, False, f"contrib instrumentor skipped: {problem}"))
    return found


def _instrumentation_lines(plan: Plan, env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Lines for the instrumentations that will run, and those that won't (with the reason)."""
    ours = [(name, decision.runs, decision.why) for name, decision in plan.steps.items()]
    lines: list[str] = []
    skipped: list[str] = []
    for name, runs, why in ours + _contrib_instrumentations(env):
        (lines if runs else skipped).append(f"{name}: {why}")
    return lines, skipped


def _distro_lines(found: list[str]) -> list[str]:
    if found:
        return found
    # No conflict: each group with other entry points has its variable set to ours.
    lines = []
    for group, variable in CHOOSERS:
        others = sorted({ep.name for ep in entry_points(group=group) if ep.name != NAME})
        if others:
            lines.append(f"{group}: {variable}={NAME} chooses otel_dist over {', '.join(others)}")
    return lines or ["otel_dist only: no conflict"]


def _probe_otlp_http(
    endpoint: str, configured_headers: Mapping[str, str], timeout: float
) -> str | None:
    """None when the endpoint accepts an (empty) OTLP export; else the reason it does not.

    The probe sends the configured OTLP headers, as the exporter will, so a collector or vendor
    endpoint that rejects the credentials is reported rather than counted as answering.
    """
    parts = urlsplit(endpoint)
    headers = {**configured_headers, "Content-Type": "application/x-protobuf"}
    if parts.username is not None or parts.password is not None:
        # urllib would take user:password@ for part of the host name: send it as the exporter
        # does, in an Authorization header.
        credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        netloc = parts.netloc.rpartition("@")[2]
        endpoint = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    request = urllib.request.Request(  # noqa: S310 - the URL is validated http(s) by settings
        endpoint, data=b"", method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            del response
            return None
    except urllib.error.HTTPError as exc:
        exc.close()
        return _http_problem(exc.code)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"does not answer: {reason}"


def _http_problem(status: int) -> str | None:
    # Any other HTTP answer proves an OTLP receiver listens (an empty export may be a 400).
    if status == 404:
        return f"answers HTTP {status} (wrong path?)"
    if status in (401, 403):
        return f"rejects the configured OTLP headers/credentials (HTTP {status})"
    return None


Probe = Callable[[str, Mapping[str, str], float], str | None]


def _endpoint_lines(plan: Plan, probe: Probe, report: Report) -> list[str]:
    settings = plan.settings
    lines: list[str] = []
    for signal in SIGNALS:
        if settings.exporter(signal) != "otlp":
            lines.append(f"{signal}: exporter {settings.exporter(signal)}, nothing to probe")
            continue
        otlp = settings.otlp[signal]
        shown = mask_url(otlp.endpoint)
        if otlp.protocol == "grpc":
            problem = probe_grpc(otlp.endpoint, min(otlp.timeout_s, 3.0))
        else:
            problem = probe(otlp.endpoint, otlp.headers, min(otlp.timeout_s, 3.0))
        if problem is None:
            lines.append(f"{signal}: {shown} answers")
        else:
            problem = mask_problem(problem)
            lines.append(f"{signal}: {shown} {problem}")
            report.problems.append(f"OTLP {signal} endpoint {shown} {problem}")
    return lines


def probe_grpc(endpoint: str, timeout: float) -> str | None:
    """None when something accepts TCP connections at the gRPC endpoint; else the problem."""
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 4317)
    host = parts.hostname or "localhost"
    return None if port_answers(host, port, timeout) else "does not accept TCP connections"


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def diagnose(
    env: Mapping[str, str] | None = None,
    *,
    network: bool = True,
    probe: Probe = _probe_otlp_http,
) -> Report:
    """Build the doctor report for ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    plan = make_plan(load_settings(env, strict=False), strict=False)
    report = Report()
    # A bad shared OTLP variable breaks every signal and is recorded once per signal: list it once.
    report.problems.extend(dict.fromkeys(mask_problem(problem) for problem in plan.problems))
    if (native := plan.native_fallback()) is not None:
        report.problems.append(native)
    report.add("settings (secrets masked)", _settings_lines(plan))
    report.add(
        "versions",
        [f"python {platform.python_version()}", f"otel-dist {__version__}"]
        + [f"{dist} {installed(dist) or 'not installed'}" for dist in _VERSIONED],
    )
    running, skipped = _instrumentation_lines(plan, env)
    report.add("instrumentations that will run", running or ["none"])
    report.add("instrumentations that will not run", skipped or ["none"])
    found = conflicts(env)
    report.problems.extend(found)
    report.add("distros and configurators", _distro_lines(found))
    if network:
        report.add("endpoints", _endpoint_lines(plan, probe, report))
    return report


def main(argv: list[str] | None = None, *, out: Callable[[str], Any] = print) -> int:
    """Print the report; exit status 1 when a problem was found, 2 on a bad argument."""
    args = list(argv or [])
    if any(arg in ("-h", "--help") for arg in args):
        out(USAGE)
        return 0
    unknown = [arg for arg in args if arg != "--no-network"]
    if unknown:
        print(f"otel-dist doctor: unknown argument {unknown[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    report = diagnose(network="--no-network" not in args)
    out(report.render())
    return 1 if report.problems else 0
