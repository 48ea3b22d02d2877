"""How stack/run.py wires PostgreSQL and postgres_exporter into the local stack, without starting
them: where the cluster goes, what the exporter is given, what Prometheus scrapes. The running
server is checked end to end in tests/e2e/test_stack.py."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from support.stack import load_stack_module

run = load_stack_module()


def _setup(directory: Path) -> Any:
    return run.PostgresSetup(directory, 15432, "app-secret", "monitor-secret")


def test_exporter_reads_as_the_monitoring_role_with_the_password_off_its_command_line(
    tmp_path: Path,
) -> None:
    setup = _setup(tmp_path / "postgres")
    paths = {"postgres_exporter": Path("/opt/bin/postgres_exporter")}
    service = run.postgres_exporter_service(paths, run.Ports(), setup)
    assert service.env == {
        "DATA_SOURCE_URI": "127.0.0.1:15432/postgres?sslmode=disable",
        "DATA_SOURCE_USER": "otel_monitor",
        "DATA_SOURCE_PASS": "monitor-secret",
    }
    assert not [arg for arg in service.argv if "secret" in arg]
    assert "--web.listen-address=127.0.0.1:9187" in service.argv
    assert service.ready_url == "http://127.0.0.1:9187/metrics"


def test_shop_database_url_is_the_owner_on_loopback(tmp_path: Path) -> None:
    setup = _setup(tmp_path / "postgres")
    assert setup.database_url() == "postgresql+psycopg://shop:app-secret@127.0.0.1:15432/shop"


def test_prometheus_scrapes_the_local_exporter(tmp_path: Path) -> None:
    ports = run.Ports(postgres_exporter=19187)
    rendered = run.render_prometheus_config(tmp_path, ports).read_text()
    assert '"postgres-exporter:9187"' not in rendered
    assert '- job_name: postgres\n    static_configs:\n      - targets: ["127.0.0.1:19187"]' in (
        rendered
    )


def test_default_postgres_port_is_not_the_distribution_clusters() -> None:
    assert run.Ports().postgres != 5432


def test_a_closed_data_dir_links_the_cluster_to_a_directory_the_server_can_enter(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "closed"
    data_dir.mkdir(mode=0o700)
    link = run.postgres_directory(data_dir)
    assert link == data_dir / "postgres"
    if os.geteuid() != 0:
        # Not root: the server runs as us and enters whatever we can.
        assert not link.exists()
        return
    # Root: the server runs as the postgres user, who cannot enter a 0700 directory of root's.
    target = link.resolve()
    try:
        assert link.is_symlink()
        assert not target.is_relative_to(tmp_path)
        assert all(p.stat().st_mode & stat.S_IXOTH for p in target.parents)
        # The same data dir finds the same cluster again.
        assert run.postgres_directory(data_dir).resolve() == target
    finally:
        target.rmdir()


def test_a_data_dir_everyone_may_enter_holds_the_cluster_itself() -> None:
    # Under the temporary directory itself: pytest's tmp_path is closed to other users.
    data_dir = Path(tempfile.mkdtemp(prefix="otel-dist-open-"))
    try:
        data_dir.chmod(0o755)
        link = run.postgres_directory(data_dir)
        assert link == data_dir / "postgres"
        assert not link.exists()
    finally:
        data_dir.rmdir()
