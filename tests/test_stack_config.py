"""The stack's config files, checked by the tools that will read them; no Docker engine needed.

- docker-compose.yml through compose-go, the library `docker compose config` is built on
  (stack/compose-check, built here with Go), including its safe defaults: ports on loopback
  unless asked, backends unpublished, Grafana anonymous as Viewer with the admin password from
  the environment;
- collector/config.yaml through our built collector's `validate`, with each exporter selection
  (compose's Tempo and Loki, the local stack's Jaeger and VictoriaLogs) and the env-selected
  exporter lists that switch a backend route off;
- prometheus.yml and the alert rules through promtool (`check config`, `check rules`,
  `test rules`); Jaeger's config through `jaeger validate`. Loki's and Tempo's configs are
  checked by nothing here: their binaries are AGPL and never built (docker-compose.yml only);
- Grafana: datasources with the fixed uids, every dashboard panel on one of them.

Binaries come from `python stack/build.py`. A missing one fails the test with that command in the
message: these checks never skip.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "stack"
CONFIG = STACK / "config"
COLLECTOR_CONFIG = ROOT / "collector" / "config.yaml"
GRAFANA = ROOT / "grafana"
DATASOURCE_UIDS = {"prometheus", "tempo", "loki"}
COMPOSE_SERVICES = {
    "shop",
    "postgres",
    "postgres-exporter",
    "collector",
    "prometheus",
    "loki",
    "tempo",
    "grafana",
}
# What compose publishes on the host, and the variables that change how.
PUBLISHED = {"shop": {8000}, "collector": {4317, 4318}, "grafana": {3000}}
PUBLISH_ADDRESS = "STACK_PUBLISH_ADDRESS"
ADMIN_PASSWORD = "GRAFANA_ADMIN_PASSWORD"
MISSING_PASSWORD = (
    "required variable GRAFANA_ADMIN_PASSWORD is missing a value: set GRAFANA_ADMIN_PASSWORD to"
    " the Grafana admin password of your choice"
)
# The exporter lists each stack selects: compose's defaults and stack/run.py's.
EXPORTER_SELECTIONS = {
    "compose (Tempo, Loki)": {
        "OTELCOL_TRACES_EXPORTERS": "[otlp_grpc/tempo]",
        "OTELCOL_LOGS_EXPORTERS": "[otlp_http/loki]",
    },
    "local stack (Jaeger, VictoriaLogs)": {
        "OTELCOL_TRACES_EXPORTERS": "[otlp_grpc/jaeger]",
        "OTELCOL_LOGS_EXPORTERS": "[otlp_http/victorialogs]",
    },
}


def _versions() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (STACK / "versions.env").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture(scope="module")
def binaries() -> dict[str, Path]:
    result = subprocess.run(
        [sys.executable, str(STACK / "build.py"), "--print-paths"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"stack/build.py --print-paths failed:\n{result.stderr}"
    pairs = (line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {name: Path(path) for name, path in pairs}


def _binary(binaries: Mapping[str, Path], name: str) -> Path:
    path = binaries.get(name)
    if path is None or not path.is_file():
        pytest.fail(
            f"{name} is not built ({path}); build the stack first: python stack/build.py",
            pytrace=False,
        )
    return path


def _run(
    argv: list[str | Path], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


# --- docker-compose.yml ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stack/compose-check, built once for this module."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go is needed to build stack/compose-check (and the stack)", pytrace=False)
    tool = tmp_path_factory.mktemp("compose") / "compose-check"
    build = subprocess.run(
        [go, "build", "-o", str(tool), "."],
        capture_output=True,
        text=True,
        check=False,
        cwd=STACK / "compose-check",
        timeout=600,
    )
    assert build.returncode == 0, f"building stack/compose-check failed:\n{build.stderr}"
    return tool


def _compose(tool: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """compose-check on docker-compose.yml with exactly these variables on top of a shell's own.

    Variables the user's shell might set would win over .env, as in docker compose, so the
    pinned versions and the stack's own switches are taken out first.
    """
    ours = {*_versions(), PUBLISH_ADDRESS, ADMIN_PASSWORD}
    inherited = {k: v for k, v in os.environ.items() if k not in ours}
    return subprocess.run(
        [str(tool), "-C", str(ROOT), "docker-compose.yml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**inherited, **env},
        timeout=60,
    )


def _model(tool: Path, env: Mapping[str, str]) -> dict[str, Any]:
    result = _compose(tool, env)
    assert result.returncode == 0, (
        f"docker-compose.yml is not a valid compose project:\n{result.stderr}"
    )
    model: dict[str, Any] = json.loads(result.stdout)
    return model


@pytest.fixture(scope="module")
def admin_password() -> str:
    return secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def compose_model(compose_check: Path, admin_password: str) -> dict[str, Any]:
    """The project as `docker compose config` resolves it with only the admin password set."""
    return _model(compose_check, {ADMIN_PASSWORD: admin_password})


def _published(model: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """(host address, host port) of every published port, per service that publishes one."""
    return {
        name: [(port.get("host_ip", ""), int(port["published"])) for port in service["ports"]]
        for name, service in model["services"].items()
        if service.get("ports")
    }


def test_compose_publishes_the_front_ports_on_loopback_only(compose_model: dict[str, Any]) -> None:
    published = _published(compose_model)
    assert {name: {port for _, port in ports} for name, ports in published.items()} == PUBLISHED
    addresses = {address for ports in published.values() for address, _ in ports}
    assert addresses == {"127.0.0.1"}, published


def test_compose_publishes_no_backend(compose_model: dict[str, Any]) -> None:
    # Prometheus, Loki, Tempo and Postgres are reached through Grafana and the collector, on the
    # compose network.
    for backend in ("prometheus", "loki", "tempo", "postgres", "postgres-exporter"):
        assert not compose_model["services"][backend].get("ports"), backend


def test_compose_publishes_on_every_interface_only_when_asked(
    compose_check: Path, admin_password: str
) -> None:
    model = _model(compose_check, {ADMIN_PASSWORD: admin_password, PUBLISH_ADDRESS: "0.0.0.0"})
    published = _published(model)
    assert set(published) == set(PUBLISHED)
    assert {address for ports in published.values() for address, _ in ports} == {"0.0.0.0"}


def test_compose_grafana_is_viewer_for_anonymous_and_admin_by_password(
    compose_model: dict[str, Any], admin_password: str
) -> None:
    environment = compose_model["services"]["grafana"]["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert environment["GF_AUTH_DISABLE_LOGIN_FORM"] == "false"
    assert environment["GF_SECURITY_ADMIN_USER"] == "admin"
    # The password is the one from the environment, and the repository holds none.
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == admin_password
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    assert raw["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert "GF_SECURITY_ADMIN_PASSWORD" not in _versions()


def test_compose_refuses_to_run_without_an_admin_password(compose_check: Path) -> None:
    result = _compose(compose_check, {})
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "invalid compose project: error while interpolating"
        f" services.grafana.environment.GF_SECURITY_ADMIN_PASSWORD: {MISSING_PASSWORD}"
    )
    empty = _compose(compose_check, {ADMIN_PASSWORD: ""})
    assert empty.returncode != 0
    assert MISSING_PASSWORD in empty.stderr


def test_compose_env_file_is_the_versions_file() -> None:
    dotenv = ROOT / ".env"
    assert dotenv.is_symlink(), ".env must be a symlink to stack/versions.env (compose reads it)"
    assert dotenv.resolve() == (STACK / "versions.env").resolve()


def test_compose_project_resolves_with_pinned_versions(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    assert set(services) == COMPOSE_SERVICES
    versions = _versions()
    assert services["prometheus"]["image"] == f"prom/prometheus:v{versions['PROMETHEUS_VERSION']}"
    assert services["loki"]["image"] == f"grafana/loki:{versions['LOKI_VERSION']}"
    assert services["grafana"]["image"] == f"grafana/grafana:{versions['GRAFANA_VERSION']}"
    assert (
        f"grafana/tempo:{versions['TEMPO_VERSION']}"
        in services["tempo"]["build"]["dockerfile_inline"]
    )
    assert services["collector"]["build"]["args"]["OCB_VERSION"] == versions["OCB_VERSION"]
    assert services["postgres-exporter"]["image"] == (
        f"quay.io/prometheuscommunity/postgres-exporter:v{versions['POSTGRES_EXPORTER_VERSION']}"
    )


def test_compose_services_have_healthchecks(compose_model: dict[str, Any]) -> None:
    missing = [name for name, s in compose_model["services"].items() if not s.get("healthcheck")]
    assert not missing, f"services without a healthcheck: {missing}"


def test_compose_mounts_the_shared_config_files(compose_model: dict[str, Any]) -> None:
    binds = {
        Path(volume["source"]).resolve()
        for service in compose_model["services"].values()
        for volume in service.get("volumes", [])
        if volume["type"] == "bind"
    }
    for path in binds:
        assert path.exists(), f"compose mounts {path}, which does not exist"
    expected = {
        COLLECTOR_CONFIG,
        CONFIG / "prometheus.yml",
        CONFIG / "alert-rules.yml",
        CONFIG / "loki.yaml",
        CONFIG / "tempo.yaml",
        CONFIG / "postgres-monitoring.sql",
        GRAFANA / "provisioning",
        GRAFANA / "dashboards",
    }
    assert expected <= binds, f"not mounted: {sorted(map(str, expected - binds))}"


# --- collector/config.yaml ---------------------------------------------------------------------
def _validate(
    binaries: Mapping[str, Path], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return _run([_binary(binaries, "otelcol"), "validate", f"--config={COLLECTOR_CONFIG}"], env)


def test_collector_config_validates(binaries: dict[str, Path]) -> None:
    result = _validate(binaries)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("selection", list(EXPORTER_SELECTIONS))
def test_collector_config_validates_with_each_backend_selection(
    binaries: dict[str, Path], selection: str
) -> None:
    env = EXPORTER_SELECTIONS[selection]
    result = _validate(binaries, env)
    assert result.returncode == 0, result.stderr
    # And the pipelines really export where the selection says.
    exporters = _resolved_pipelines(binaries, env, "exporters")
    assert exporters["traces/sampled"] == yaml.safe_load(env["OTELCOL_TRACES_EXPORTERS"])
    assert exporters["logs"] == yaml.safe_load(env["OTELCOL_LOGS_EXPORTERS"])


def test_compose_uses_the_collector_defaults(binaries: dict[str, Path]) -> None:
    # docker-compose.yml sets no exporter variable, so the defaults must be Tempo and Loki.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert not any("EXPORTERS" in key for key in compose["services"]["collector"]["environment"])
    exporters = _resolved_pipelines(binaries, {}, "exporters")
    assert exporters["traces/sampled"] == ["otlp_grpc/tempo"]
    assert exporters["logs"] == ["otlp_http/loki"]


@pytest.mark.parametrize(
    "variable", ["OTELCOL_TRACES_EXPORTERS", "OTELCOL_METRICS_EXPORTERS", "OTELCOL_LOGS_EXPORTERS"]
)
def test_each_route_switches_off_and_on_by_env(binaries: dict[str, Path], variable: str) -> None:
    assert _validate(binaries, {variable: "[nop]"}).returncode == 0
    assert _validate(binaries, {variable: "[nop, debug]"}).returncode == 0
    # An unknown id fails, so the variable really is what the pipeline uses.
    wrong = _validate(binaries, {variable: "[otlp_http/nowhere]"})
    assert wrong.returncode != 0
    assert "otlp_http/nowhere" in wrong.stderr + wrong.stdout


def test_tail_sampling_is_opt_in_by_env(binaries: dict[str, Path]) -> None:
    variable = "OTELCOL_TRACES_SAMPLING_PROCESSORS"
    assert "tail_sampling" not in _resolved_pipelines(binaries)["traces/sampled"]
    on = {variable: "[memory_limiter, tail_sampling]"}
    assert "tail_sampling" in _resolved_pipelines(binaries, on)["traces/sampled"]
    wrong = _validate(binaries, {variable: "[memory_limiter, tail_sampling/nowhere]"})
    assert wrong.returncode != 0


def _resolved_pipelines(
    binaries: dict[str, Path], env: Mapping[str, str] | None = None, part: str = "processors"
) -> dict[str, list[str]]:
    """Each pipeline's ``part`` (processors, exporters), as the collector resolves the config
    (``print-config``) once it validated."""
    assert _validate(binaries, env).returncode == 0
    command = [_binary(binaries, "otelcol"), "print-config", f"--config={COLLECTOR_CONFIG}"]
    result = _run(command, env)
    if result.returncode != 0:  # older collectors need the feature gate for print-config
        gate = "--feature-gates=otelcol.printInitialConfig"
        result = _run([*command[:2], gate, *command[2:]], env)
    assert result.returncode == 0, result.stderr
    pipelines = yaml.safe_load(result.stdout)["service"]["pipelines"]
    return {name: list(p.get(part) or []) for name, p in pipelines.items()}


# --- Prometheus --------------------------------------------------------------------------------
def test_prometheus_config_and_rules_check(binaries: dict[str, Path]) -> None:
    promtool = _binary(binaries, "promtool")
    result = _run([promtool, "check", "config", CONFIG / "prometheus.yml"])
    assert result.returncode == 0, result.stdout + result.stderr
    result = _run([promtool, "check", "rules", CONFIG / "alert-rules.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass(binaries: dict[str, Path]) -> None:
    result = _run([_binary(binaries, "promtool"), "test", "rules", CONFIG / "alert-rules.test.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_rule_has_a_unit_test() -> None:
    rules = yaml.safe_load((CONFIG / "alert-rules.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((CONFIG / "alert-rules.test.yml").read_text())
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    silent = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert names <= fired, f"rules never shown firing: {sorted(names - fired)}"
    assert names <= silent, f"rules never shown staying silent: {sorted(names - silent)}"


# --- Jaeger and VictoriaLogs -------------------------------------------------------------------
def test_backends_report_their_pinned_versions(binaries: dict[str, Path]) -> None:
    versions = _versions()
    logs = _run([_binary(binaries, "victorialogs"), "-version"])
    assert logs.stdout.strip() == f"victoria-logs-v{versions['VICTORIALOGS_VERSION']}", logs
    traces = _run([_binary(binaries, "jaeger"), "version"])
    assert f'"gitVersion":"v{versions["JAEGER_VERSION"]}"' in traces.stdout.replace(" ", ""), traces
    exporter = _run([_binary(binaries, "postgres_exporter"), "--version"])
    first_line = (exporter.stdout + exporter.stderr).splitlines()[0]
    assert first_line.startswith(
        f"postgres_exporter, version {versions['POSTGRES_EXPORTER_VERSION']} ("
    ), exporter


def test_jaeger_config_validates(binaries: dict[str, Path]) -> None:
    # Jaeger v2 is the Docker-free stack's trace store; it is a collector build, so its own
    # `validate` checks every component and the env defaults.
    result = _run([_binary(binaries, "jaeger"), "validate", f"--config={CONFIG / 'jaeger.yaml'}"])
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana -----------------------------------------------------------------------------------
def _datasources() -> list[dict[str, Any]]:
    document = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )
    datasources: list[dict[str, Any]] = document["datasources"]
    return datasources


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboards() -> list[Path]:
    return sorted((GRAFANA / "dashboards").glob("*.json"))


def test_datasources_have_the_fixed_uids_and_links() -> None:
    by_uid = {ds["uid"]: ds for ds in _datasources()}
    assert set(by_uid) == DATASOURCE_UIDS
    tempo = by_uid["tempo"]["jsonData"]
    assert tempo["tracesToLogsV2"]["datasourceUid"] == "loki"
    assert tempo["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert tempo["serviceMap"]["datasourceUid"] == "prometheus"
    (derived,) = by_uid["loki"]["jsonData"]["derivedFields"]
    assert derived["datasourceUid"] == "tempo"
    assert derived["matcherType"] == "label"
    assert derived["matcherRegex"] == "trace_id"
    (exemplars,) = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert exemplars == {**exemplars, "name": "trace_id", "datasourceUid": "tempo"}


def test_the_four_dashboards_exist_with_unique_uids() -> None:
    names = {path.name for path in _dashboards()}
    assert {"service-overview.json", "errors.json", "database.json", "collector.json"} <= names
    uids = [json.loads(path.read_text())["uid"] for path in _dashboards()]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("path", _dashboards(), ids=lambda p: p.name)
def test_every_panel_queries_a_provisioned_datasource(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    panels = [p for p in _panels(dashboard["panels"]) if p.get("type") not in {"row", "text"}]
    assert panels, f"{path.name} has no panels"
    for panel in panels:
        title = panel.get("title")
        assert panel.get("datasource", {}).get("uid") in DATASOURCE_UIDS, f"{title}: datasource"
        assert panel.get("targets"), f"{title}: no queries"
        for target in panel["targets"]:
            uid = target.get("datasource", {}).get("uid")
            assert uid in DATASOURCE_UIDS, f"{title}: target datasource {uid!r}"
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            assert variable["datasource"]["uid"] in DATASOURCE_UIDS, variable["name"]


def test_home_dashboard_is_the_service_overview() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home == "/etc/grafana/dashboards/service-overview.json"
    assert (GRAFANA / "dashboards" / "service-overview.json").is_file()
