"""Health endpoints for FastAPI services: liveness, readiness and a detailed view, opt-in.

``app.include_router(health_router())`` adds ``/health/live``, ``/health/ready`` and
``/health``. Readiness checks ``SELECT 1`` on every SQLAlchemy engine otel-dist instruments,
telemetry export (failing export is *degraded*, never *unhealthy*: telemetry must not take a
service out of rotation) and the app's own ``HealthCheck`` callables. A check that raises or
hangs is reported with its error's class and never its message. The routes are excluded from
traces and request metrics by default; each check run records ``health.check.duration``.
"""

from __future__ import annotations

from otel_dist.health.checks import HealthCheck, InvalidCheckResultError, Status
from otel_dist.health.router import health_router

__all__ = ["HealthCheck", "InvalidCheckResultError", "Status", "health_router"]
