"""What the health checks read from the rest of otel-dist: every such import is in this file."""

from __future__ import annotations

import re

from opentelemetry import metrics
from opentelemetry.metrics import MeterProvider
from sqlalchemy.engine import Engine

from otel_dist.internal_log import INTERNAL_LOGGER
from otel_dist.sdk.export_health import ExportStatus
from otel_dist.sql_engines import instrumented_engines
from otel_dist.telemetry import active

__all__ = [
    "INTERNAL_LOGGER",
    "ExportStatus",
    "export_status",
    "known_engines",
    "meter_provider",
    "traced_paths",
]


def export_status() -> ExportStatus | None:
    """Telemetry export health now; None when ``configure()`` did not set up exporters."""
    telemetry = active()
    health = None if telemetry is None else telemetry.providers.export_health
    return None if health is None else health.status()


def meter_provider() -> MeterProvider:
    """The configured meter provider, or the global one (a no-op until someone sets it)."""
    telemetry = active()
    provider = None if telemetry is None else telemetry.providers.meter_provider
    return provider if provider is not None else metrics.get_meter_provider()


def known_engines() -> list[Engine]:
    """The SQLAlchemy engines otel-dist instruments (sync engines behind async ones)."""
    return instrumented_engines()


def traced_paths(paths: list[str]) -> list[str]:
    """Those of ``paths`` the active configuration would trace (not in its excluded URLs)."""
    telemetry = active()
    if telemetry is None:
        return []
    patterns = [re.compile(pattern) for pattern in telemetry.settings.excluded_urls]
    return [path for path in paths if not any(p.search(path) for p in patterns)]
