"""Debian's PostgreSQL server on loopback: find or install it, init, start, stop, create roles.

The stack and the tests run a real PostgreSQL without Docker: the server binaries of Debian's
``postgresql`` package (``/usr/lib/postgresql/<major>/bin``), a cluster initialised into a
directory of the caller's choosing, listening on 127.0.0.1 only, its Unix socket in that
directory too, so it never touches the distribution's own cluster or ``/var/run/postgresql``.

Layout of a cluster directory::

    DIR/data          the cluster (PGDATA)
    DIR/socket/       the Unix socket (``.s.PGSQL.<port>``)
    DIR/postgres.log  the server's log

PostgreSQL refuses to run as root. Run as root, every server command runs as the ``postgres``
system user the Debian package creates; DIR and its parents must then be reachable by that user
(``/root`` and ``mktemp -d`` directories are not: ``chmod o+x`` them or choose another). The
cluster's superuser is the operating-system user the server runs as, authenticated by peer over
the socket; roles created here log in over TCP with a password (SCRAM).

Usage::

    python stack/postgres.py install
    python stack/postgres.py start --dir DIR --port PORT
    python stack/postgres.py roles --dir DIR --app-db shop --app-user shop --monitor-user monitor
    python stack/postgres.py stop --dir DIR

``roles`` reads the passwords from ``OTEL_DIST_PG_APP_PASSWORD`` and
``OTEL_DIST_PG_MONITOR_PASSWORD`` so they never appear on a command line. This script uses the
standard library only: CI calls ``install`` before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEBIAN_ROOT = Path("/usr/lib/postgresql")
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
# Binaries elsewhere (another distribution, a source build): the directory holding all three.
BIN_DIR_ENV = "OTEL_DIST_PG_BINDIR"
SERVER_USER = "postgres"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
POLL_S = 0.1
# The names of the variables holding the passwords, not passwords.
APP_PASSWORD_ENV = "OTEL_DIST_PG_APP_PASSWORD"  # noqa: S105
MONITOR_PASSWORD_ENV = "OTEL_DIST_PG_MONITOR_PASSWORD"  # noqa: S105
# The server settings this module owns; written to a file postgresql.conf includes.
OWN_CONF = "otel_dist.conf"


class PostgresError(RuntimeError):
    """PostgreSQL could not be found, installed, started or set up; the message says why."""


# --- binaries ------------------------------------------------------------------------------------
def find_bin_dir(env: Mapping[str, str] = os.environ) -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None.

    ``OTEL_DIST_PG_BINDIR`` when set, else Debian's newest major version.
    """
    override = env.get(BIN_DIR_ENV)
    if override:
        return Path(override) if _has_server_binaries(Path(override)) else None
    candidates = [d / "bin" for d in DEBIAN_ROOT.glob("*") if d.name.isdigit()]
    found = [d for d in candidates if _has_server_binaries(d)]
    return max(found, key=lambda d: int(d.parent.name), default=None)


def _has_server_binaries(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in SERVER_BINARIES)


def install(env: Mapping[str, str] = os.environ) -> Path:
    """The server binaries' directory, installing Debian's ``postgresql`` package if missing."""
    found = find_bin_dir(env)
    if found is not None:
        return found
    if env.get(BIN_DIR_ENV):
        raise PostgresError(
            f"{BIN_DIR_ENV}={env[BIN_DIR_ENV]} does not hold {', '.join(SERVER_BINARIES)}"
        )
    if os.geteuid() != 0:
        raise PostgresError(
            f"PostgreSQL server binaries not found under {DEBIAN_ROOT}/<major>/bin and not "
            "running as root to install them: run `sudo apt-get install -y postgresql` (or set "
            f"{BIN_DIR_ENV} to a directory holding {', '.join(SERVER_BINARIES)})"
        )
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
        if subprocess.run(argv, env=apt_env, check=False).returncode != 0:  # noqa: S603
            raise PostgresError(f"`{' '.join(argv)}` failed; see its output above")
    installed = find_bin_dir(env)
    if installed is None:
        raise PostgresError(f"apt-get installed postgresql but no server is under {DEBIAN_ROOT}")
    return installed


# --- running as the server's user ----------------------------------------------------------------
def server_user() -> str | None:
    """The user server commands run as: ``postgres`` when we are root, else None (ourselves)."""
    return SERVER_USER if os.geteuid() == 0 else None


def _account(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root and there is no `{user}` user to run it as: "
            "install Debian's postgresql package (it creates that user) or run as another user"
        ) from None


def _blocked_ancestor(path: Path, account: pwd.struct_passwd) -> Path | None:
    """The first existing ancestor of ``path`` that ``account`` may not enter, if any."""
    for directory in reversed([path, *path.parents]):
        if not directory.exists():
            break
        info = directory.stat()
        if info.st_uid == account.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == account.pw_gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


def _run(argv: Sequence[str], cwd: Path, *, stdin: str | None = None) -> str:
    """Run a PostgreSQL tool as the server's user; its stdout, or PostgresError with its output."""
    user = server_user()
    result = subprocess.run(  # noqa: S603 - argv built here, no shell
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        user=user,
        group=user,
        extra_groups=[] if user else None,
        env=_tool_env(user),
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise PostgresError(f"`{' '.join(argv)}` exited with {result.returncode}:\n{output}")
    return result.stdout


def _tool_env(user: str | None) -> dict[str, str]:
    # PG* variables of the caller (a PGHOST, a PGPASSWORD) must not redirect our tools.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if user is not None:
        env["HOME"] = _account(user).pw_dir
        env["USER"] = env["LOGNAME"] = user
    return env


# --- the cluster ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cluster:
    """A cluster in ``directory`` served on 127.0.0.1:``port``."""

    directory: Path
    port: int
    bin_dir: Path

    @property
    def data_dir(self) -> Path:
        """PGDATA."""
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        """Where the server puts its Unix socket."""
        return self.directory / "socket"

    @property
    def log_file(self) -> Path:
        """The server's log (pg_ctl redirects its output there)."""
        return self.directory / "postgres.log"

    @property
    def superuser(self) -> str:
        """The cluster's superuser: the operating-system user the server runs as."""
        return server_user() or pwd.getpwuid(os.geteuid()).pw_name

    def url(self, user: str, password: str, database: str, driver: str = "postgresql") -> str:
        """A TCP connection URL for a role created by ``create_app_database`` and the like."""
        return f"{driver}://{user}:{password}@{HOST}:{self.port}/{database}"

    def tool(self, name: str) -> str:
        """The path of one of the server's tools (psql, pg_isready, ...)."""
        return str(self.bin_dir / name)


def prepare_directory(directory: Path) -> None:
    """Create the cluster's directory, owned by the server's user when we are root."""
    user = server_user()
    directory.mkdir(parents=True, exist_ok=True)
    if user is None:
        return
    account = _account(user)
    blocked = _blocked_ancestor(directory.parent, account)
    if blocked is not None:
        raise PostgresError(
            f"the `{user}` user cannot enter {blocked}, so PostgreSQL cannot use {directory}: "
            "choose a directory every user may enter (e.g. under /tmp), or `chmod o+x` it"
        )
    os.chown(directory, account.pw_uid, account.pw_gid)


def init_cluster(directory: Path, port: int, bin_dir: Path | None = None) -> Cluster:
    """Initialise a cluster in ``directory`` (kept if it already holds one)."""
    cluster = Cluster(directory.resolve(), port, bin_dir or install())
    prepare_directory(cluster.directory)
    if not (cluster.data_dir / "PG_VERSION").exists():
        # --no-sync: a throw-away local cluster; fsyncing ~1000 files costs seconds on busy disks.
        _run(
            [
                cluster.tool("initdb"),
                f"--pgdata={cluster.data_dir}",
                f"--username={cluster.superuser}",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            cluster.directory,
        )
        with (cluster.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude_if_exists = '{OWN_CONF}'\n")
    return cluster


def write_settings(cluster: Cluster, extra: Mapping[str, str] | None = None) -> None:
    """Loopback only, this port, the socket in the cluster's directory, plus ``extra``."""
    settings = {
        "listen_addresses": HOST,
        "port": str(cluster.port),
        "unix_socket_directories": str(cluster.socket_dir),
        **(extra or {}),
    }
    lines = [f"{name} = {_conf_quote(value)}" for name, value in settings.items()]
    conf = cluster.data_dir / OWN_CONF
    conf.write_text("# Written by stack/postgres.py at each start.\n" + "\n".join(lines) + "\n")
    _own_like_data_dir(conf, cluster)


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _own_like_data_dir(path: Path, cluster: Cluster) -> None:
    info = cluster.data_dir.stat()
    os.chown(path, info.st_uid, info.st_gid)


def start(
    directory: Path,
    port: int,
    *,
    settings: Mapping[str, str] | None = None,
    timeout_s: float = READY_TIMEOUT_S,
) -> Cluster:
    """Init if needed, start, and return once the server accepts connections on its port."""
    cluster = init_cluster(directory, port)
    if is_running(cluster):
        raise PostgresError(f"a server already runs on {cluster.data_dir}; stop it first")
    cluster.socket_dir.mkdir(exist_ok=True)
    _own_like_data_dir(cluster.socket_dir, cluster)
    write_settings(cluster, settings)
    cluster.log_file.touch()
    _own_like_data_dir(cluster.log_file, cluster)
    try:
        _run(
            [
                cluster.tool("pg_ctl"),
                "start",
                f"--pgdata={cluster.data_dir}",
                f"--log={cluster.log_file}",
                f"--timeout={int(timeout_s)}",
                "--wait",
            ],
            cluster.directory,
        )
    except PostgresError as exc:
        raise PostgresError(f"{exc}\n{_tail(cluster.log_file)}") from None
    wait_accepting(cluster, timeout_s)
    return cluster


def is_running(cluster: Cluster) -> bool:
    """True while a server runs on the cluster's data directory (``pg_ctl status``)."""
    if not (cluster.data_dir / "PG_VERSION").exists():
        return False
    try:
        _run([cluster.tool("pg_ctl"), "status", f"--pgdata={cluster.data_dir}"], cluster.directory)
    except PostgresError:
        return False
    return True


def accepts_connections(cluster: Cluster) -> bool:
    """True when the server answers on its TCP port (what clients use), per ``pg_isready``."""
    argv = [cluster.tool("pg_isready"), "--host", HOST, "--port", str(cluster.port), "--timeout=2"]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0  # noqa: S603


def wait_accepting(cluster: Cluster, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Return once the server accepts connections; PostgresError with its log after the bound."""
    deadline = time.monotonic() + timeout_s
    while not accepts_connections(cluster):
        if time.monotonic() >= deadline:
            raise PostgresError(
                f"PostgreSQL on {HOST}:{cluster.port} did not accept connections within "
                f"{timeout_s:g} s\n{_tail(cluster.log_file)}"
            )
        time.sleep(POLL_S)


def stop(directory: Path, timeout_s: float = READY_TIMEOUT_S) -> bool:
    """Stop the server on ``directory`` (fast: sessions are ended); False if none was running."""
    cluster = Cluster(directory.resolve(), 0, find_bin_dir() or install())
    if not is_running(cluster):
        return False
    _run(
        [
            cluster.tool("pg_ctl"),
            "stop",
            f"--pgdata={cluster.data_dir}",
            "--mode=fast",
            f"--timeout={int(timeout_s)}",
            "--wait",
        ],
        cluster.directory,
    )
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return f"last lines of {path}:\n" + "\n".join(f"  | {line}" for line in text)


# --- roles ---------------------------------------------------------------------------------------
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _checked_name(kind: str, name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise PostgresError(
            f"{kind} name {name!r} is not a plain lower-case PostgreSQL identifier "
            "(letters, digits, underscore; at most 63)"
        )
    return name


def psql(cluster: Cluster, script: str, variables: Mapping[str, str], database: str) -> str:
    """Run ``script`` as the superuser over the socket, with psql ``variables`` (:'name')."""
    argv = [
        cluster.tool("psql"),
        "--no-psqlrc",
        "--quiet",
        "--tuples-only",
        "--set=ON_ERROR_STOP=1",
        f"--host={cluster.socket_dir}",
        f"--port={cluster.port}",
        f"--username={cluster.superuser}",
        f"--dbname={database}",
    ]
    argv += [f"--set={name}={value}" for name, value in variables.items()]
    return _run(argv, cluster.directory, stdin=script)


# psql interpolates :'var' as a quoted literal and :"var" as a quoted identifier, so passwords and
# names never need escaping here; \gexec runs each generated statement on its own (CREATE
# DATABASE may not run inside a transaction block).
_CREATE_LOGIN_ROLE = """
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \\gexec
ALTER ROLE :"role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
  PASSWORD :'password';
"""
_CREATE_DATABASE = """
SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database') \\gexec
"""
_GRANT_MONITORING = """
GRANT pg_monitor TO :"role";
ALTER ROLE :"role" SET default_transaction_read_only = on;
"""


def create_app_database(cluster: Cluster, database: str, role: str, password: str) -> None:
    """A login role owning ``database`` (both created if missing; the password is set anew)."""
    variables = {
        "role": _checked_name("role", role),
        "database": _checked_name("database", database),
        "password": password,
    }
    psql(cluster, _CREATE_LOGIN_ROLE + _CREATE_DATABASE, variables, "postgres")


def create_monitoring_role(cluster: Cluster, role: str, password: str) -> None:
    """A read-only login role with ``pg_monitor`` (server statistics), never a superuser."""
    variables = {"role": _checked_name("role", role), "password": password}
    psql(cluster, _CREATE_LOGIN_ROLE + _GRANT_MONITORING, variables, "postgres")


# --- command line --------------------------------------------------------------------------------
def _cmd_install(_args: argparse.Namespace) -> int:
    started = time.monotonic()
    bin_dir = install()
    print(f"PostgreSQL server binaries: {bin_dir} ({time.monotonic() - started:.1f} s)")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    cluster = start(args.dir, args.port)
    print(f"PostgreSQL listening on {HOST}:{cluster.port}, data in {cluster.data_dir}")
    return 0


def _cmd_roles(args: argparse.Namespace) -> int:
    cluster = Cluster(args.dir.resolve(), args.port, find_bin_dir() or install())
    if args.app_user:
        password = _password_from_env(APP_PASSWORD_ENV)
        create_app_database(cluster, args.app_db or args.app_user, args.app_user, password)
        print(f"database {args.app_db or args.app_user} owned by {args.app_user}")
    if args.monitor_user:
        create_monitoring_role(cluster, args.monitor_user, _password_from_env(MONITOR_PASSWORD_ENV))
        print(f"monitoring role {args.monitor_user} (pg_monitor, read-only)")
    return 0


def _password_from_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise PostgresError(f"{name} is not set: the role's password is read from it")
    return value


def _cmd_stop(args: argparse.Namespace) -> int:
    print("stopped" if stop(args.dir) else f"no server running on {args.dir}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="install Debian's postgresql package if missing")
    for name in ("start", "roles", "stop"):
        command = commands.add_parser(name)
        command.add_argument("--dir", type=Path, required=True, help="the cluster's directory")
        if name != "stop":
            command.add_argument("--port", type=int, required=True)
    roles = commands.choices["roles"]
    roles.add_argument("--app-user", help=f"role owning the app database ({APP_PASSWORD_ENV})")
    roles.add_argument("--app-db", help="the app database (default: named after --app-user)")
    roles.add_argument("--monitor-user", help=f"pg_monitor role ({MONITOR_PASSWORD_ENV})")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python stack/postgres.py``."""
    args = _parser().parse_args(argv)
    handler = {
        "install": _cmd_install,
        "start": _cmd_start,
        "roles": _cmd_roles,
        "stop": _cmd_stop,
    }[args.command]
    try:
        return handler(args)
    except PostgresError as exc:
        print(f"postgres: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
