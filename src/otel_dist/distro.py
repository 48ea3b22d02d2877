"""The zero-code way in: entry points loaded by ``opentelemetry-instrument``.

``opentelemetry-instrument`` loads one distro, then only the *first* configurator, then every
instrumentor through the distro. Our distro makes sure our configurator is the one chosen, and
skips the contrib instrumentors whose job ``configure_from_launcher()`` does itself (FastAPI,
SQLAlchemy, logging, structlog, httpx, runtime metrics) so nothing runs twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.sdk._configuration import _BaseConfigurator

from otel_dist.global_changes import CHANGES
from otel_dist.internal_log import internal_logger

_log = internal_logger()
NAME = "otel_dist"
# Contrib instrumentors replaced by our own code path (see telemetry.py).
HANDLED_BY_OTEL_DIST = frozenset(
    {
        "fastapi",
        "starlette",
        "asgi",
        "sqlalchemy",
        "logging",
        "structlog",
        "httpx",
        "system_metrics",
    }
)
# The launcher takes the first installed entry point of each group unless its variable names one.
CHOOSERS = (
    ("opentelemetry_distro", "OTEL_PYTHON_DISTRO"),
    ("opentelemetry_configurator", "OTEL_PYTHON_CONFIGURATOR"),
)


def conflicts(env: Mapping[str, str] | None = None) -> list[str]:
    """Other distros/configurators that could be chosen instead of ours, each with what to set.

    ``env`` defaults to this process's environment. Once ``OTEL_PYTHON_DISTRO`` and
    ``OTEL_PYTHON_CONFIGURATOR`` both name otel_dist, nothing else installed can be chosen.
    """
    env = os.environ if env is None else env
    found: list[str] = []
    for group, variable in CHOOSERS:
        others = {ep.name for ep in entry_points(group=group) if ep.name != NAME}
        if others and env.get(variable) != NAME:
            found.append(
                f"{group} entry point(s) {', '.join(sorted(others))} installed beside otel_dist: "
                f"set {variable}={NAME} (or uninstall them)"
            )
    if any(env.get(variable) != NAME for _, variable in CHOOSERS):
        with contextlib.suppress(PackageNotFoundError):
            found.append(
                f"opentelemetry-distro {version('opentelemetry-distro')} is installed: otel-dist "
                "replaces it; uninstall it or set OTEL_PYTHON_DISTRO=otel_dist and "
                "OTEL_PYTHON_CONFIGURATOR=otel_dist"
            )
    return found


_LAUNCHER_LOGGER = "opentelemetry.instrumentation.auto_instrumentation._load"


class _ReplacedInstrumentorFilter(logging.Filter):
    """Drops the launcher's dependency-conflict errors about instrumentors otel-dist replaces.

    The launcher checks each instrumentor's declared library range before asking the distro to
    load it, and logs an error when it does not match (the contrib SQLAlchemy instrumentor
    declares ``sqlalchemy<2.1``). For the ones in ``HANDLED_BY_OTEL_DIST`` that error is wrong:
    otel-dist instruments that library itself.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(
            message.startswith(f"{name} only instruments ") for name in HANDLED_BY_OTEL_DIST
        )


class OtelDistro(BaseDistro):  # type: ignore[misc]
    """Chooses our configurator and skips the instrumentors we replace."""

    def _configure(self, **kwargs: Any) -> None:
        del kwargs
        # Read by the launcher right after this method: with several configurators installed,
        # ours must win, or the app would get someone else's providers and none of our features.
        CHANGES.set_env_default("OTEL_PYTHON_CONFIGURATOR", NAME)
        for conflict in conflicts():
            _log.warning("otel-dist: %s", conflict)
        CHANGES.add_filter(_LAUNCHER_LOGGER, _ReplacedInstrumentorFilter())

    def load_instrumentor(self, entry_point: EntryPoint, **kwargs: Any) -> None:
        """Load an instrumentor unless otel-dist already does its job."""
        if entry_point.name in HANDLED_BY_OTEL_DIST:
            _log.debug("otel-dist: %s is handled by otel-dist itself", entry_point.name)
            return
        super().load_instrumentor(entry_point, **kwargs)


class OtelConfigurator(_BaseConfigurator):
    """Builds the SDK and instruments through the same code as ``configure()``."""

    def _configure(self, **kwargs: Any) -> None:
        del kwargs
        from otel_dist.telemetry import configure_from_launcher  # noqa: PLC0415

        configure_from_launcher()
