"""otel-dist: OpenTelemetry for FastAPI + SQLAlchemy services, in one call or none.

``configure(app=..., engine=...)`` or ``opentelemetry-instrument uvicorn app:app``: traces,
metrics and logs that line up, with the trace id in structlog output and in every error response.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from otel_dist.version import __version__

if TYPE_CHECKING:
    from otel_dist.fastapi.errors import error_ids
    from otel_dist.fastapi.request_id import current_request_id
    from otel_dist.settings import ConfigurationError
    from otel_dist.telemetry import Telemetry, active, configure

# Public names resolve on first use, so importing a submodule (settings, the launcher's entry
# points) does not import FastAPI, SQLAlchemy and the SDK up front.
_EXPORTS = {
    "ConfigurationError": "otel_dist.settings",
    "Telemetry": "otel_dist.telemetry",
    "active": "otel_dist.telemetry",
    "configure": "otel_dist.telemetry",
    "current_request_id": "otel_dist.fastapi.request_id",
    "error_ids": "otel_dist.fastapi.errors",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'otel_dist' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "ConfigurationError",
    "Telemetry",
    "__version__",
    "active",
    "configure",
    "current_request_id",
    "error_ids",
]
