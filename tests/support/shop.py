"""The example shop (examples/shop) as the fault suite runs it: environment and app targets.

``SHOP_CONFIGURE`` is the shop set up in code (``configure()`` at import, so gunicorn
``--preload`` runs it in the master before the fork); ``SHOP_ZERO_CODE`` is the same service
with no telemetry code, for ``opentelemetry-instrument``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from support.servers import REPO_ROOT, ServerProcess, clean_env, free_port

SHOP_CONFIGURE = "examples.shop.main:app"
SHOP_ZERO_CODE = "examples.shop.service:app"


def _database_url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'shop.db'}"


def shop_env(endpoint: str, workdir: Path, port: int, **extra: str) -> dict[str, str]:
    """Environment for the shop exporting to ``endpoint`` quickly, its database in ``workdir``.

    Spans and logs leave within 200 ms and metrics every 500 ms, so a test waits on what was
    exported rather than on the SDK's default minute-long metric interval.
    """
    return {
        "PYTHONPATH": str(REPO_ROOT),
        "OTEL_SERVICE_NAME": "shop",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "DATABASE_URL": _database_url(workdir),
        "SHOP_SELF_URL": f"http://127.0.0.1:{port}",
        **extra,
    }


def start_shop(
    server_factory: Callable[..., ServerProcess],
    argv: Callable[[int], list[str]],
    endpoint: str,
    workdir: Path,
    **extra: str,
) -> ServerProcess:
    """The shop started by ``server_factory`` as ``argv(port)``, exporting to ``endpoint``."""
    port = free_port()
    return server_factory(
        argv(port),
        env=shop_env(endpoint, workdir, port, **extra),
        port=port,
        cwd=REPO_ROOT,
        ready_timeout=60,  # several workers importing the app on a loaded 2-core machine
    )


def create_shop_database(workdir: Path) -> None:
    """Create the shop's tables in ``workdir`` before several workers start at once.

    The shop creates its tables when imported; workers importing it at the same moment (gunicorn
    without ``--preload``) race on SQLite's CREATE TABLE and the loser fails to boot.
    """
    subprocess.run(
        [sys.executable, "-c", f"import {SHOP_ZERO_CODE.partition(':')[0]}"],
        env=clean_env({"PYTHONPATH": str(REPO_ROOT), "DATABASE_URL": _database_url(workdir)}),
        cwd=REPO_ROOT,
        check=True,
        timeout=60,
    )
