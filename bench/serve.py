"""What every setup serves: ``bench.app``, plus in-process telemetry chosen by ``BENCH_TELEMETRY``.

``configure``: ``otel_dist.configure()``; ``floor``: the same signals wired by hand on the bare SDK
(``bench.floor``). Without the variable the app is served as is: with no telemetry, or
instrumented from outside by ``opentelemetry-instrument``.
"""

from __future__ import annotations

import os

from bench.app import app, engine

telemetry = None
if os.environ.get("BENCH_TELEMETRY") == "configure":
    from otel_dist import configure

    telemetry = configure(app=app, engine=engine)
elif os.environ.get("BENCH_TELEMETRY") == "floor":
    from bench.floor import install

    install(app, engine)

__all__ = ["app", "engine", "telemetry"]
