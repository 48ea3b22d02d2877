"""What every setup serves: ``bench.app``, plus ``configure()`` when ``BENCH_TELEMETRY=configure``.

The only telemetry code in the benchmark. Without the variable the app is served as is: with no
telemetry, or instrumented from outside by ``opentelemetry-instrument``.
"""

from __future__ import annotations

import os

from bench.app import app, engine

telemetry = None
if os.environ.get("BENCH_TELEMETRY") == "configure":
    from otel_dist import configure

    telemetry = configure(app=app, engine=engine)

__all__ = ["app", "engine", "telemetry"]
