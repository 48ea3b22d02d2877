"""The shop service set up in code: one ``configure()`` call, nothing else.

``uvicorn examples.shop.main:app``
"""

from __future__ import annotations

from otel_dist import configure

from examples.shop.service import app, async_engine, engine

telemetry = configure(app=app, engines=[engine, async_engine])
