"""The shop service set up in code: one ``configure()`` call, nothing else.

``uvicorn examples.shop.main:app``
"""

from __future__ import annotations

from examples.shop.service import app, async_engine, engine

from otel_dist import configure

telemetry = configure(app=app, engines=[engine, async_engine])
