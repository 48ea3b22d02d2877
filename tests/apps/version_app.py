"""``pid_app`` plus ``/version``: which FastAPI and Starlette the server really imported.

Used with an older FastAPI on ``PYTHONPATH`` to prove the server runs that one, not the one
installed in the virtualenv.
"""

from __future__ import annotations

import fastapi
import starlette
from tests.apps.pid_app import app


@app.get("/version")
def version() -> dict[str, str]:
    return {"fastapi": fastapi.__version__, "starlette": starlette.__version__}
