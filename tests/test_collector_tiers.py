"""The agent and gateway configs (collector/agent.yaml, collector/gateway.yaml) and the Helm
values that carry them (deploy/helm/).

- the values files hold exactly what deploy/helm/render.py writes from the collector configs;
- each values file validates against the upstream chart's JSON schema, and the config the chart
  would run (its default `config:` with ours merged over it, nulls removing keys, as Helm
  merges values) passes `otelcol validate` on our built collector. The chart's schema and
  defaults are reference data in ../shared/k8s (never copied here): outside CI a missing copy
  skips these with the reason, under CI=true it fails;
- the agent's metric secret backstop is config.yaml's, statement for statement;
- the gateway overlay validates and really switches tail sampling and the gateway name on.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from support.stack import IN_CI, load_stack_module

ROOT = Path(__file__).resolve().parent.parent
COLLECTOR = ROOT / "collector"
HELM = ROOT / "deploy" / "helm"
SHARED_K8S = ROOT.parent / "shared" / "k8s"
CHART = "opentelemetry-collector-chart-0.170.0"
VALUES_FILES = ("agent-values.yaml", "gateway-values.yaml")
# What the chart sets in every collector container (its templates) and our configs read.
CHART_ENV = {"MY_POD_IP": "127.0.0.1", "OTELCOL_HOST_NAME": "node-1", "OTELCOL_GATEWAY_ID": "g-1"}


def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("otel_dist_helm_render", HELM / "render.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shared(name: str) -> Path:
    """A file of the chart's reference data; skips (fails under CI=true) when it is missing."""
    path = SHARED_K8S / name
    if not path.exists():
        message = (
            f"the chart's reference data is not at {path} (a copy of shared/k8s beside the"
            " repository); the Helm values checks need it"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def _values(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((HELM / name).read_text())
    return loaded


def helm_merge(defaults: Any, values: Any) -> Any:
    """Helm's merge of user values over chart defaults: maps merged, a null deletes the key."""
    if not (isinstance(defaults, dict) and isinstance(values, dict)):
        return values
    merged = dict(defaults)
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = helm_merge(defaults.get(key), value)
    return merged


@pytest.mark.parametrize("name", VALUES_FILES)
def test_values_file_holds_the_rendered_collector_config(name: str) -> None:
    render = _render_module()
    assert render.rendered(HELM / name) == (HELM / name).read_text(), (
        f"{name} is out of date: run python deploy/helm/render.py"
    )


def _schema_errors(values: dict[str, Any]) -> list[str]:
    """What the chart's schema finds wrong with ``values`` merged over its defaults (Helm
    checks the merged values, so keys the defaults provide need not be repeated)."""
    schema = yaml.safe_load(_shared(f"{CHART}.values.schema.json").read_text())
    defaults = yaml.safe_load(_shared(f"{CHART}.values.yaml").read_text())
    # Its $schema names no draft; Helm reads such schemas as draft 7.
    validator = jsonschema.Draft7Validator(schema)
    merged = helm_merge(defaults, values)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(merged)]


@pytest.mark.parametrize("name", VALUES_FILES)
def test_values_file_validates_against_the_chart_schema(name: str) -> None:
    assert _schema_errors(_values(name)) == []


def test_schema_check_catches_a_wrong_value() -> None:
    # The check above could pass on anything if the schema were read wrongly.
    errors = _schema_errors({**_values("gateway-values.yaml"), "mode": "sidecar"})
    assert any(error.startswith("['mode']") for error in errors), errors


def test_gateways_behind_a_headless_service_the_agents_resolve() -> None:
    agent, gateway = _values("agent-values.yaml"), _values("gateway-values.yaml")
    assert (agent["mode"], gateway["mode"]) == ("daemonset", "deployment")
    assert gateway["service"]["clusterIP"] == "None"
    resolver = agent["config"]["exporters"]["load_balancing"]["resolver"]
    assert resolver == {
        "dns": {"hostname": "otel-gateway.observability.svc.cluster.local", "port": "4317"}
    }
    assert gateway["fullnameOverride"] == "otel-gateway"
    assert gateway["autoscaling"]["enabled"] is True


def test_agent_metric_backstop_is_the_collectors() -> None:
    agent = yaml.safe_load((COLLECTOR / "agent.yaml").read_text())["processors"]
    single = yaml.safe_load((COLLECTOR / "config.yaml").read_text())["processors"]
    assert agent["redaction"] == single["redaction"]
    assert (
        agent["transform/drop_secret_keys"]["metric_statements"]
        == (single["transform/drop_secret_keys"]["metric_statements"])
    )


# --- with the built collector (make e2e builds it) ---------------------------------------------
def _otelcol() -> Path:
    paths = load_stack_module().binary_paths(build_if_missing=False)
    return Path(paths["otelcol"])


def _otelcol_run(
    command: str, configs: tuple[Path, ...], env: dict[str, str] | None
) -> subprocess.CompletedProcess[str]:
    argv = [str(_otelcol()), command, *(f"--config={c}" for c in configs)]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def _validate(
    *configs: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return _otelcol_run("validate", configs, env)


def _print_config(*configs: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = _otelcol_run("print-config", configs, env)
    assert result.returncode == 0, result.stderr
    printed: dict[str, Any] = yaml.safe_load(result.stdout)
    return printed


@pytest.mark.stack
@pytest.mark.parametrize("name", VALUES_FILES)
def test_config_the_chart_would_run_validates(name: str, tmp_path: Path) -> None:
    defaults = yaml.safe_load(_shared(f"{CHART}.values.yaml").read_text())["config"]
    merged = helm_merge(defaults, _values(name)["config"])
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump(merged, sort_keys=False))
    result = _validate(config, env=CHART_ENV)
    assert result.returncode == 0, result.stderr


@pytest.mark.stack
def test_agent_config_validates() -> None:
    result = _validate(COLLECTOR / "agent.yaml")
    assert result.returncode == 0, result.stderr


@pytest.mark.stack
def test_gateway_overlay_turns_on_tail_sampling_and_names_the_gateway() -> None:
    configs = (COLLECTOR / "config.yaml", COLLECTOR / "gateway.yaml")
    assert _validate(*configs).returncode == 0
    printed = _print_config(*configs, env={"OTELCOL_GATEWAY_ID": "gateway-7"})
    pipelines = printed["service"]["pipelines"]
    assert pipelines["traces/sampled"]["processors"] == ["memory_limiter", "tail_sampling"]
    assert "resource/gateway" in pipelines["traces"]["processors"]
    assert "transform/gateway_label" in pipelines["metrics"]["processors"]
    assert printed["processors"]["resource/gateway"]["attributes"][0]["value"] == "gateway-7"
    # config.yaml's own pipelines stay as they were: the overlay changes the gateway only.
    single = _print_config(COLLECTOR / "config.yaml")["service"]["pipelines"]
    assert single["traces/sampled"]["processors"] == ["memory_limiter"]
    assert "resource/gateway" not in single["traces"]["processors"]


# --- the scaled local topology (stack/run.py), without starting it ---------------------------
def test_scaled_stack_refuses_zero_gateways_with_the_reason() -> None:
    argv = ["start", "--topology", "scaled", "--gateways", "0", "--data-dir", "/nonexistent/x"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "stack" / "run.py"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: a scaled stack needs at least one gateway, got 0"


def test_scaled_stack_plans_an_agent_over_every_gateway_and_scrapes_them_all(
    tmp_path: Path,
) -> None:
    run = load_stack_module()
    ports = run.Ports.free()
    gateways = {run.gateway_name(i): run.GatewayPorts.free() for i in range(3)}
    paths = {name: Path(f"/bin/{name}") for name in run.BINARIES}
    run.services(paths, tmp_path, ports)
    run.scrape_collectors(
        tmp_path / "prometheus.yml", ports, (own.metrics for own in gateways.values())
    )
    agent = run.agent_service(paths, ports, gateways)
    gateway = run.gateway_service(paths, tmp_path, ports, "gateway-2", gateways["gateway-2"])

    pool = yaml.safe_load(agent.env["OTELCOL_GATEWAYS"])
    assert pool == [f"127.0.0.1:{own.otlp_grpc}" for own in gateways.values()]
    assert agent.env["OTELCOL_OTLP_HTTP_PORT"] == str(ports.otlp_http)
    assert gateway.env["OTELCOL_GATEWAY_ID"] == "gateway-2"
    assert gateway.env["OTELCOL_QUEUE_DIR"] == str(tmp_path / "gateway-2" / "queue")
    assert gateway.argv[-1] == f"--config={COLLECTOR / 'gateway.yaml'}"
    prometheus = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "otelcol")
    assert job["static_configs"][0]["targets"] == [
        f"127.0.0.1:{ports.collector_metrics}",
        *(f"127.0.0.1:{own.metrics}" for own in gateways.values()),
    ]
