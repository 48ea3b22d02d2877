"""The stack's config files, checked by the tools that will read them; no Docker engine needed.

- docker-compose.yml through compose-go, the library `docker compose config` is built on
  (stack/compose-check, built here with Go);
- collector/config.yaml through our built collector's `validate`, including the env-selected
  exporter lists that switch a backend route off;
- prometheus.yml and the alert rules through promtool (`check config`, `check rules`,
  `test rules`); Loki's config through `loki -verify-config`;
- Grafana: datasources with the fixed uids, every dashboard panel on one of them.

Binaries come from `python stack/build.py`. A missing one fails the test with that command in the
message: these checks never skip.
"""

from __future__ import annotations

import json
import os
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
COMPOSE_SERVICES = {"shop", "postgres", "collector", "prometheus", "loki", "tempo", "grafana"}


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
def compose_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
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
    # Variables the user's shell might set would win over .env, as in docker compose.
    env = {k: v for k, v in os.environ.items() if k not in _versions()}
    result = subprocess.run(
        [str(tool), "-C", str(ROOT), "docker-compose.yml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, (
        f"docker-compose.yml is not a valid compose project:\n{result.stderr}"
    )
    model: dict[str, Any] = json.loads(result.stdout)
    return model


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
    assert "tail_sampling" not in _validated_pipelines(binaries)["traces/sampled"]
    on = {variable: "[memory_limiter, tail_sampling]"}
    assert "tail_sampling" in _validated_pipelines(binaries, on)["traces/sampled"]
    wrong = _validate(binaries, {variable: "[memory_limiter, tail_sampling/nowhere]"})
    assert wrong.returncode != 0


def _validated_pipelines(
    binaries: dict[str, Path], env: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """Each pipeline's processors, as the collector resolves the config (``print-config``)."""
    assert _validate(binaries, env).returncode == 0
    command = [_binary(binaries, "otelcol"), "print-config", f"--config={COLLECTOR_CONFIG}"]
    result = _run(command, env)
    if result.returncode != 0:  # older collectors need the feature gate for print-config
        gate = "--feature-gates=otelcol.printInitialConfig"
        result = _run([*command[:2], gate, *command[2:]], env)
    assert result.returncode == 0, result.stderr
    pipelines = yaml.safe_load(result.stdout)["service"]["pipelines"]
    return {name: list(p.get("processors") or []) for name, p in pipelines.items()}


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


# --- Loki and Jaeger ----------------------------------------------------------------------------
def test_loki_config_verifies(binaries: dict[str, Path], tmp_path: Path) -> None:
    result = _run(
        [
            _binary(binaries, "loki"),
            f"-config.file={CONFIG / 'loki.yaml'}",
            "-config.expand-env=true",
            "-verify-config",
        ],
        {"LOKI_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_jaeger_config_validates(binaries: dict[str, Path]) -> None:
    # Jaeger v2 stands in for Tempo in the Docker-free stack; it is a collector build, so its
    # own `validate` checks every component and the env defaults.
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
