"""End to end on the real servers: the shop -> our collector -> Tempo, Loki, Prometheus.

The local stack (stack/run.py, binaries built from source by stack/build.py) runs on free
loopback ports. Two instances of the example shop send to it: ``shop`` set up with
``configure()`` and ``shop-zero`` under ``opentelemetry-instrument``; ``shop``'s /outgoing calls
``shop-zero``, so the service graph has an edge. Every assertion goes through a backend's own
HTTP API, with the queries Grafana's datasources and dashboards issue.

The trace backend is Tempo when there is a Tempo binary, else Jaeger v2 (the Go module proxy
refuses Tempo's source here). Trace lookups work against either. TraceQL panels run on Tempo
only; on Jaeger each is reported as not run and checked with the equivalent Jaeger search.

Under CI=true nothing here skips: a missing Go toolchain or a failed build is a failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest

from support.servers import REPO_ROOT, ServerProcess
from support.stack import (
    Backends,
    JaegerSearch,
    eventually,
    hex_id,
    load_stack_module,
    require_toolchain,
    start_shop,
)

pytestmark = pytest.mark.e2e
DASHBOARDS = REPO_ROOT / "grafana" / "dashboards"
ERRORS = 12  # 500s sent in the main phase: 12/(12+~60) is far above the 5% alert threshold


def _jaeger_search_for(traceql: str) -> JaegerSearch | None:
    """The Jaeger search that asks what a simple TraceQL query asks, or None if it can't.

    Handles ``{ a && b ... }`` whose terms are ``resource.service.name = / =~ "<name>"`` (a
    plain name, as the rendered dashboards have), ``status = error`` and ``name = "<op>"``.
    """
    body = re.fullmatch(r"\s*\{(.*)\}\s*", traceql)
    if body is None:
        return None
    params: dict[str, str] = {}
    errors_only = False
    for term in (t.strip() for t in body.group(1).split("&&")):
        if match := re.fullmatch(r'resource\.service\.name\s*=~?\s*"([\w.-]+)"', term):
            params["service"] = match.group(1)
        elif re.fullmatch(r"status\s*=\s*error", term):
            errors_only = True
        elif match := re.fullmatch(r'name\s*=\s*"([^"]+)"', term):
            params["operation"] = match.group(1)
        else:
            return None
    if "service" not in params:
        return None  # Jaeger searches one service at a time
    # Newest first; enough to reach past the ok traces to the failing ones when filtering here.
    params["limit"] = "1000" if errors_only else "20"
    return JaegerSearch(params, errors_only)


@dataclass
class Run:
    stack: Any
    backends: Backends
    shop: ServerProcess
    shop_zero: ServerProcess
    failures: list[httpx.Response] = field(default_factory=list)
    oks: list[httpx.Response] = field(default_factory=list)


# Faster than start_shop's defaults: the e2e waits for each export.
FAST_EXPORT = {
    "OTEL_BSP_SCHEDULE_DELAY": "200",
    "OTEL_BLRP_SCHEDULE_DELAY": "200",
    "OTEL_METRIC_EXPORT_INTERVAL": "1000",
}


def _traffic(run: Run) -> None:
    with httpx.Client(base_url=run.shop.base_url, timeout=10) as client:
        for n in range(20):
            created = client.post("/items", json={"name": f"item-{n}", "price_cents": n})
            run.oks.append(created)
            run.oks.append(client.get(f"/items/{created.json()['id']}"))
            run.oks.append(client.get("/items/999999"))  # 404: an error for the client only
        run.oks.append(client.get("/outgoing"))
        run.oks.append(client.get("/slow", params={"n": 200_000}))
    with httpx.Client(base_url=run.shop_zero.base_url, timeout=10) as client:
        for _ in range(10):
            run.oks.append(client.get("/items", params={"limit": 5}))
    for _ in range(ERRORS):
        # uvicorn closes the connection after an unhandled exception: one connection each.
        run.failures.append(httpx.get(f"{run.shop.base_url}/fail", timeout=10))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    require_toolchain()
    stack_module = load_stack_module()
    workdir = tmp_path_factory.mktemp("e2e")
    stack = stack_module.LocalStack(
        ports=stack_module.Ports.free(),
        data_dir=workdir / "stack",
        collector_env={"TAIL_SAMPLING_DECISION_WAIT": "2s"},
    )
    with stack:
        shop_zero = start_shop(
            stack,
            workdir,
            "shop-zero",
            command=("opentelemetry-instrument", "uvicorn", "examples.shop.service:app"),
            environment="e2e",
            **FAST_EXPORT,
        )
        shop = None
        try:
            shop = start_shop(
                stack,
                workdir,
                "shop",
                environment="e2e",
                UPSTREAM_URL=f"{shop_zero.base_url}/items",
                **FAST_EXPORT,
            )
            backends = Backends(
                stack.prometheus_url, stack.traces_url, stack.loki_url, stack.trace_backend
            )
            result = Run(stack, backends, shop, shop_zero)
            _traffic(result)
            yield result
        finally:
            if shop is not None:
                shop.stop()
            shop_zero.stop()


def _trace_id(response: httpx.Response) -> str:
    return str(response.json()["trace_id"])


def test_500_trace_is_in_the_trace_backend_with_its_db_span(run: Run):
    failure = run.failures[0]
    assert failure.status_code == 500
    trace_id = _trace_id(failure)
    spans = eventually(lambda: run.backends.trace(trace_id))
    server = [s for s in spans if s.get("kind") in ("SPAN_KIND_SERVER", 2)]
    assert [s["name"] for s in server] == ["GET /fail"]
    db = [s for s in spans if s.get("kind") in ("SPAN_KIND_CLIENT", 3)]
    assert db, spans
    assert {hex_id(s["parentSpanId"]) for s in db} == {hex_id(server[0]["spanId"])}
    assert db[0]["name"] == "SELECT items"


def test_loki_has_the_request_logs_by_trace_id_with_the_stack_trace(run: Run):
    trace_id = _trace_id(run.failures[0])
    lines = eventually(
        lambda: run.backends.logql(f'{{service_name="shop"}} | trace_id = "{trace_id}"')
    )
    bodies = [line for _, line in lines]
    assert any("about to fail" in body for body in bodies), bodies
    errors = [labels for labels, body in lines if "unhandled exception" in body]
    assert errors, bodies
    assert "the shop failed on purpose" in errors[0].get("exception_stacktrace", ""), errors[0]


def test_prometheus_has_http_metric_with_an_exemplar_the_trace_backend_knows(run: Run):
    route = '{service_name="shop", http_route="/items/{item_id}"}'
    series = eventually(
        lambda: run.backends.promql(f"http_server_request_duration_seconds_count{route}")
    )
    assert {s["metric"]["http_request_method"] for s in series} == {"GET"}
    exemplars = eventually(
        lambda: run.backends.exemplars(f"http_server_request_duration_seconds_bucket{route}")
    )
    trace_ids = {e["labels"]["trace_id"] for e in exemplars}
    assert trace_ids
    assert eventually(lambda: any(run.backends.trace(t) for t in sorted(trace_ids)[:5]))


def test_db_pool_span_metric_and_service_graph_series_exist(run: Run):
    promql = run.backends.promql
    assert eventually(
        lambda: promql('db_client_operation_duration_seconds_count{service_name="shop"}')
    )
    assert eventually(lambda: promql('db_client_connection_count{service_name="shop"}'))
    assert eventually(lambda: promql('db_client_connection_max{service_name="shop"}'))
    assert eventually(lambda: promql('traces_span_metrics_calls_total{service_name="shop"}'))
    edges = eventually(
        lambda: promql('traces_service_graph_request_total{client="shop", server="shop-zero"}'),
        timeout=90,
    )
    assert edges


def _dashboard_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, panel title, datasource uid, query) for every panel target."""
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in _panels(dashboard.get("panels", [])):
            panel_uid = (panel.get("datasource") or {}).get("uid", "")
            for target in panel.get("targets", []):
                uid = (target.get("datasource") or {}).get("uid") or panel_uid
                query = target.get("expr") or target.get("query") or ""
                if query:
                    queries.append((path.name, panel.get("title", "?"), uid, query))
    return queries


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _render(query: str) -> str:
    """Grafana's macros and our dashboards' variables, as Grafana would fill them in."""
    for macro, value in (
        ("$__rate_interval", "1m"),
        ("$__auto", "1m"),
        ("$__interval", "15s"),
        ("$__range", "1h"),
        ("${__range}", "1h"),
    ):
        query = query.replace(macro, value)
    query = re.sub(r"\$\{service(?::\w+)?\}|\$service\b", "shop", query)
    # Any other variable: match everything, as the dashboards' "All" option does.
    query = re.sub(r'(\w+)\s*=\s*"\$\{?\w+(?::\w+)?\}?"', r'\1=~".+"', query)
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".+", query)


# Series that exist only once something failed (the SDK and the collector create these counters
# at the first failure), or once opt-in tail sampling is switched on: a healthy default run has
# none, so their panels are empty by design. The queries still run, so Prometheus must accept
# them, and the panels are listed in the output.
FAILURE_ONLY = re.compile(
    r'otelcol_exporter_(send|enqueue)_failed_|error_type(!=""|="queue_full")'
    r"|db_client_connection_timeouts_total|otelcol_processor_tail_sampling_"
)


def test_every_dashboard_panel_query_returns_data(run: Run, capsys: pytest.CaptureFixture[str]):
    """Every panel's query returns data, except failure-only series (listed). On Jaeger,
    TraceQL panels cannot run: each is listed as not run, with why, and checked through the
    equivalent Jaeger search instead."""
    queries = _dashboard_queries()
    assert len(queries) >= 10
    backends = run.backends
    run_query: dict[str, Callable[[str], Any]] = {
        "prometheus": backends.promql,
        "loki": lambda q: backends.logql(q, limit=10),
        "tempo": backends.traceql,
    }
    empty, not_run, mapping, failure_only = [], [], [], []
    for dashboard, title, uid, query in queries:
        rendered = _render(query)
        panel = f"{dashboard} / {title}"
        check: Callable[[], Any] = partial(run_query[uid], rendered)
        asked = rendered
        if uid == "tempo" and backends.trace_backend != "tempo":
            not_run.append(f"{panel}: TraceQL {rendered} needs Tempo; the trace backend is Jaeger")
            search = _jaeger_search_for(rendered)
            if search is None:
                empty.append(f"{panel}: no Jaeger equivalent of TraceQL {rendered}")
                continue
            asked = str(search)
            mapping.append(f"{panel}: {rendered}  ->  {asked}")
            check = partial(backends.jaeger_search, search)
        if FAILURE_ONLY.search(rendered):
            check()  # raises if the backend rejects the query
            failure_only.append(f"{panel}: {rendered}")
            continue
        try:
            eventually(check, timeout=45)
        except pytest.fail.Exception:
            empty.append(f"{panel}: {asked}")
    with capsys.disabled():
        for line in failure_only:
            print(f"\nno data expected in a healthy run (query accepted): {line}")
        for line in not_run:
            print(f"\nnot run: {line}")
        for line in mapping:
            print(f"\nchecked with Jaeger instead: {line}")
    # On Tempo every panel ran (not_run stays empty); on Jaeger, not_run is reported above and
    # each of those panels was checked through its Jaeger search.
    assert empty == []


def test_error_rate_alert_goes_pending_under_induced_errors(run: Run):
    # Fresh errors: the rule looks at the last 5 minutes, which may no longer hold the fixture's.
    for _ in range(ERRORS):
        assert httpx.get(f"{run.shop.base_url}/fail", timeout=10).status_code == 500

    def error_alert() -> list[dict[str, Any]]:
        return [
            a
            for a in run.backends.alerts()
            if a["labels"]["alertname"] == "HighErrorRate"
            and a["state"] in ("pending", "firing")
            and a["labels"].get("service_name") == "shop"
        ]

    assert eventually(error_alert, timeout=90)


def test_with_tail_sampling_at_10_percent_every_error_trace_is_kept(run: Run):
    run.stack.restart(
        "otelcol",
        env={
            "OTELCOL_TRACES_SAMPLING_PROCESSORS": "[memory_limiter, tail_sampling]",
            "TAIL_SAMPLING_PERCENT": "10",
        },
    )
    oks, failures = [], []
    with httpx.Client(base_url=run.shop.base_url, timeout=10) as client:
        for n in range(100):
            oks.append(client.get(f"/items/{n % 20 + 1}"))
    for _ in range(20):
        failures.append(httpx.get(f"{run.shop.base_url}/fail", timeout=10))
    error_ids = [_trace_id(f) for f in failures]
    assert eventually(lambda: all(run.backends.trace(t) for t in error_ids), timeout=60)
    ok_ids = [r.headers["traceresponse"].split("-")[1] for r in oks]
    kept = sum(1 for t in ok_ids if run.backends.trace(t))
    # Binomial(100, 0.1): P(kept > 30) is below one in a million.
    assert kept <= 30, kept
