"""A real PostgreSQL for tests, run by the project's own ``stack/postgres.py``.

Without the server binaries (and no root to install them) the tests that need it are skipped;
under CI=true that is a failure, since ``.ci/run`` installs them first.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from support.scripts import load_script
from support.servers import free_port
from support.stack import IN_CI

APP_ROLE = "health_app"
MONITOR_ROLE = "health_monitor"


def load_postgres_module() -> ModuleType:
    """stack/postgres.py as a module (it is a script, not a package)."""
    return load_script("stack/postgres.py", "otel_dist_stack_postgres")


@dataclass
class RunningPostgres:
    """A started cluster with an app database and role, and a pg_monitor role."""

    module: ModuleType
    directory: Path
    port: int
    app_password: str
    monitor_password: str

    def url(self, driver: str = "postgresql+psycopg", role: str = APP_ROLE) -> str:
        """The app database's URL for ``role`` over TCP."""
        password = self.app_password if role == APP_ROLE else self.monitor_password
        return f"{driver}://{role}:{password}@127.0.0.1:{self.port}/{APP_ROLE}"

    def start(self) -> Any:
        """(Re)start the server and wait until it accepts connections; the Cluster."""
        return self.module.start(self.directory, self.port)

    def stop(self) -> bool:
        """Stop the server (fast shutdown)."""
        return bool(self.module.stop(self.directory))

    def accepts_connections(self) -> bool:
        """pg_isready on the port."""
        cluster = self.module.Cluster(self.directory, self.port, self.module.find_bin_dir())
        return bool(self.module.accepts_connections(cluster))


def _require_server(module: ModuleType) -> None:
    try:
        module.install()
    except module.PostgresError as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is needed and missing: {exc}")
        pytest.skip(f"PostgreSQL server not available: {exc}")


@contextlib.contextmanager
def running_postgres() -> Iterator[RunningPostgres]:
    """A fresh cluster on a free loopback port in a temporary directory, removed afterwards."""
    module = load_postgres_module()
    _require_server(module)
    # The server runs as the postgres user when we are root: its directory must be enterable.
    base = Path(tempfile.mkdtemp(prefix="otel-dist-pg-"))
    base.chmod(0o755)
    database = RunningPostgres(
        module, base / "cluster", free_port(), secrets.token_hex(12), secrets.token_hex(12)
    )
    try:
        cluster = database.start()
        module.create_app_database(cluster, APP_ROLE, APP_ROLE, database.app_password)
        module.create_monitoring_role(cluster, MONITOR_ROLE, database.monitor_password)
        yield database
    finally:
        database.stop()
        shutil.rmtree(base, ignore_errors=True)
