"""stack/postgres.py: a real cluster on loopback with an app role and a read-only monitoring role.

The cluster is the one the health tests use (tests/support/postgres.py starts it through the
module's own functions); here the roles it creates are checked from a client's side.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from support.postgres import (
    APP_ROLE,
    MONITOR_ROLE,
    RunningPostgres,
    load_postgres_module,
    running_postgres,
)

pytestmark = pytest.mark.integration
postgres_script = load_postgres_module()


@pytest.fixture(scope="module")
def postgres() -> Iterator[RunningPostgres]:
    with running_postgres() as database:
        yield database


def _connect(postgres: RunningPostgres, role: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(postgres.url("postgresql", role), autocommit=True)


def test_monitoring_role_reads_server_statistics_and_nothing_else(
    postgres: RunningPostgres,
) -> None:
    with _connect(postgres, MONITOR_ROLE) as connection:
        row = connection.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, pg_has_role(%s, 'pg_monitor', 'member')"
            " FROM pg_roles WHERE rolname = %s",
            (MONITOR_ROLE, MONITOR_ROLE),
        ).fetchone()
        assert row == (False, False, False, True)
        # pg_monitor shows every session's state, not only its own.
        states = connection.execute("SELECT count(*) FROM pg_stat_activity").fetchone()
        assert states is not None
        assert states[0] >= 1
        assert connection.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            connection.execute("CREATE TABLE written_by_monitor (x int)")


def test_app_role_owns_its_database_and_is_no_superuser(postgres: RunningPostgres) -> None:
    with _connect(postgres, APP_ROLE) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS orders (id int)")
        row = connection.execute(
            "SELECT r.rolsuper, pg_get_userbyid(d.datdba) FROM pg_roles r, pg_database d"
            " WHERE r.rolname = current_user AND d.datname = current_database()"
        ).fetchone()
        assert row == (False, APP_ROLE)


def test_roles_are_created_again_without_error_and_take_the_new_password(
    postgres: RunningPostgres,
) -> None:
    cluster = postgres_script.Cluster(postgres.directory, postgres.port, postgres_script.install())
    postgres_script.create_monitoring_role(cluster, MONITOR_ROLE, "changed-password")
    changed = f"postgresql://{MONITOR_ROLE}:changed-password@127.0.0.1:{postgres.port}/postgres"
    with psycopg.connect(changed) as connection:
        assert connection.execute("SELECT current_user").fetchone() == (MONITOR_ROLE,)
    postgres_script.create_monitoring_role(cluster, MONITOR_ROLE, postgres.monitor_password)


def test_a_role_name_that_is_not_a_plain_identifier_is_refused(postgres: RunningPostgres) -> None:
    cluster = postgres_script.Cluster(postgres.directory, postgres.port, postgres_script.install())
    with pytest.raises(postgres_script.PostgresError) as raised:
        postgres_script.create_monitoring_role(cluster, "Monitor; DROP ROLE x", "pw")
    assert str(raised.value) == (
        "role name 'Monitor; DROP ROLE x' is not a plain lower-case PostgreSQL identifier "
        "(letters, digits, underscore; at most 63)"
    )


def test_stop_without_a_running_server_says_so(tmp_path: Path) -> None:
    assert postgres_script.stop(tmp_path / "never-started") is False


def test_a_binary_directory_without_the_server_is_refused(tmp_path: Path) -> None:
    with pytest.raises(postgres_script.PostgresError) as raised:
        postgres_script.install({"OTEL_DIST_PG_BINDIR": str(tmp_path)})
    assert str(raised.value) == (
        f"OTEL_DIST_PG_BINDIR={tmp_path} does not hold initdb, pg_ctl, postgres"
    )


def test_the_first_directory_the_server_user_cannot_enter_is_named() -> None:
    # Not under tmp_path: pytest's base directory is itself closed to other users.
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        closed = base / "closed"
        closed.mkdir(mode=0o700)
        me = pwd.getpwuid(os.geteuid())
        stranger = pwd.struct_passwd(("stranger", "x", me.pw_uid + 1, me.pw_gid + 1, "", "/", "/"))
        assert postgres_script._blocked_ancestor(closed / "cluster", stranger) == closed
        assert postgres_script._blocked_ancestor(base / "open" / "cluster", stranger) is None
        assert postgres_script._blocked_ancestor(closed / "cluster", me) is None
    finally:
        shutil.rmtree(base)
