"""The stock service set up in code: one ``configure()`` call.

``uvicorn examples.stock.main:app``
"""

from __future__ import annotations

from examples.stock.service import app

from otel_dist import configure

telemetry = configure(app=app)
