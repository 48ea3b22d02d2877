"""Secrets never leave the app (issue D, point 6), checked where they would land.

The example shop, set up with ``configure()``, exports to the local stack. Each request puts a
distinct random canary where secrets arrive in real traffic: the Authorization, Cookie and
X-Api-Key headers, ``?token=`` and ``?password=``, JSON bodies (an accepted one, and one the app
rejects with 422), a structlog field and a SQL parameter (/login logs the password and sends it
to the database, on purpose), and an exception message (/charge raises with the card token).

Then everything that reached the trace store (Jaeger), the log store (VictoriaLogs: every entry
with all its fields, every field's values, every stream), Prometheus (every series' labels,
exemplars) and the app's stdout/stderr is searched for every canary; so is the collector's own
log. Zero hits allowed.

A search that finds nothing proves nothing unless it could have found something: a control
value travels the same way (the X-Request-ID of the canary requests, a random service name),
and each place must contain it.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from support.load import TRACEPARENT
from support.servers import ServerProcess
from support.stack import (
    Backends,
    JaegerSearch,
    eventually,
    logsql_string,
    start_shop,
)


def _canary() -> str:
    # Letters and digits only: any escaping (JSON, URL, logfmt) leaves it intact, so a plain
    # substring search finds every copy.
    return "cnry" + secrets.token_hex(12)


@dataclass
class Canaries:
    """One random canary per place a secret enters the app."""

    values: dict[str, str] = field(
        default_factory=lambda: {
            place: _canary()
            for place in (
                "header Authorization",
                "header Cookie",
                "header X-Api-Key",
                "query ?token=",
                "query ?password=",
                "JSON body",
                "JSON body rejected (422)",
                "structlog field + SQL parameter",
                "exception message",
            )
        }
    )

    def __getitem__(self, place: str) -> str:
        return self.values[place]

    def hits(self, where: str, text: str) -> list[str]:
        """One entry per canary found in ``text``: where, which, and the text around it."""
        found = []
        for place, canary in self.values.items():
            at = text.find(canary)
            if at >= 0:
                context = text[max(0, at - 80) : at + len(canary) + 40].replace("\n", " ")
                found.append(f"{where}: {place} x{text.count(canary)} ... {context} ...")
        return found


@dataclass
class Sent:
    """What the test sent: responses by place, and the control request id they all carry."""

    control: str
    responses: dict[str, httpx.Response] = field(default_factory=dict)

    def trace_ids(self) -> set[str]:
        ids = set()
        for response in self.responses.values():
            match = TRACEPARENT.fullmatch(response.headers.get("traceresponse", ""))
            assert match, response.headers
            ids.add(match.group(1))
        return ids


def _send(shop: ServerProcess, canaries: Canaries, control: str) -> Sent:
    sent = Sent(control)
    r = sent.responses
    headers = {"X-Request-ID": control}
    with httpx.Client(base_url=shop.base_url, timeout=10, headers=headers) as client:
        item = client.post("/items", json={"name": "teapot", "price_cents": 100})
        assert item.status_code == 201, item.text
        r["headers"] = client.get(
            "/items",
            params={"limit": 5},
            headers={
                "Authorization": f"Bearer {canaries['header Authorization']}",
                "Cookie": f"session={canaries['header Cookie']}",
                "X-Api-Key": canaries["header X-Api-Key"],
            },
        )
        r["query"] = client.get(
            "/items",
            params={
                "limit": 5,
                "token": canaries["query ?token="],
                "password": canaries["query ?password="],
            },
        )
        r["json body"] = client.post(
            "/items",
            json={"name": "kettle", "price_cents": 5, "api_key": canaries["JSON body"]},
        )
        r["json body rejected"] = client.post(
            "/login",
            json={"username": "alice", "password": [canaries["JSON body rejected (422)"]]},
        )
        r["login"] = client.post(
            "/login",
            json={"username": "alice", "password": canaries["structlog field + SQL parameter"]},
        )
        r["exception"] = client.post(
            "/charge",
            json={"item_id": item.json()["id"], "card_token": canaries["exception message"]},
        )
    statuses = {name: response.status_code for name, response in r.items()}
    assert statuses == {
        "headers": 200,
        "query": 200,
        "json body": 201,
        "json body rejected": 422,
        "login": 401,
        "exception": 500,
    }, statuses
    return sent


def _trace_texts(backends: Backends, service: str, trace_ids: set[str]) -> str:
    """Jaeger's raw answers for every trace of the service, as one text."""
    texts = []
    for trace_id in sorted(trace_ids):
        r = backends.client.get(f"{backends.traces}/api/traces/{trace_id}")
        r.raise_for_status()
        texts.append(r.text)
    search = JaegerSearch({"service": service, "limit": "1000"})
    texts.append(json.dumps(backends.jaeger_search(search)))
    return "\n".join(texts)


def _log_store_texts(backends: Backends, service: str) -> str:
    """Every entry VictoriaLogs has for the service with all its fields, and every value of
    every field and every stream it knows in the window, as its raw answers."""
    now = time.time_ns()
    window = {"start": str(now - 3600 * 10**9), "end": str(now + 60 * 10**9)}
    base = f"{backends.logs}/select/logsql"
    entries = backends.client.post(
        f"{base}/query", data={"query": f"service.name:={logsql_string(service)}", **window}
    )
    entries.raise_for_status()
    texts = [entries.text]
    everything = {"query": "*", **window}
    streams = backends.client.post(f"{base}/streams", data=everything)
    streams.raise_for_status()
    texts.append(streams.text)
    names = backends.client.post(f"{base}/field_names", data=everything)
    names.raise_for_status()
    for name in names.json().get("values") or []:
        values = backends.client.post(
            f"{base}/field_values", data={**everything, "field": name["value"]}
        )
        values.raise_for_status()
        texts.append(values.text)
    return "\n".join(texts)


def _prometheus_texts(backends: Backends, service: str) -> str:
    """Every series (all labels) Prometheus has, and the exemplars of the shop's histograms."""
    series = backends.client.get(
        f"{backends.prometheus}/api/v1/series", params={"match[]": '{__name__=~".+"}'}
    )
    series.raise_for_status()
    now = time.time()
    exemplars = backends.client.get(
        f"{backends.prometheus}/api/v1/query_exemplars",
        params={
            "query": f'{{__name__=~".+_bucket", service_name="{service}"}}',
            "start": now - 3600,
            "end": now + 60,
        },
    )
    exemplars.raise_for_status()
    return series.text + "\n" + exemplars.text


def test_canaries_reach_no_backend_and_no_output(
    stack: Any, backends: Backends, tmp_path: Path, figures: Callable[..., None]
) -> None:
    canaries = Canaries()
    service = f"faults-secrets-{uuid.uuid4().hex[:8]}"
    control = f"ctl-{uuid.uuid4().hex}"
    shop = start_shop(stack, tmp_path, service)
    try:
        sent = _send(shop, canaries, control)
        trace_ids = sent.trace_ids()
        # Everything has arrived: each request's trace, the /login and /charge log lines, the
        # shop's metrics.
        eventually(lambda: all(backends.trace(t) for t in trace_ids), timeout=90, every=2)
        eventually(
            lambda: (
                len(
                    backends.logsql(
                        f"service.name:={logsql_string(service)}"
                        ' AND ("login attempt" OR "unhandled exception")'
                    )
                )
                >= 2
            ),
            timeout=60,
        )
        eventually(
            lambda: backends.promql(
                f'http_server_request_duration_seconds_count{{service_name="{service}"}}'
            ),
            timeout=60,
        )
        # One more export round, so nothing of the requests above is still on its way.
        time.sleep(3)
        places = {
            "trace store (Jaeger)": _trace_texts(backends, service, trace_ids),
            "log store (VictoriaLogs)": _log_store_texts(backends, service),
            "Prometheus": _prometheus_texts(backends, service),
        }
    finally:
        shop.stop()
    places["app stdout/stderr"] = shop.output()
    places["collector log"] = stack.log_path("otelcol").read_text(errors="replace")
    hits = [hit for where, text in places.items() for hit in canaries.hits(where, text)]
    # The controls: the request id is in traces, logs and stdout; the service name in Prometheus.
    controls = {
        where: (service if where == "Prometheus" else control) in text
        for where, text in places.items()
        if where != "collector log"
    }
    figures(
        "secrets: 9 canaries (headers, query, JSON bodies, structlog, SQL, exception)",
        requests=len(sent.responses),
        traces=len(trace_ids),
        canaries=len(canaries.values),
        canary_hits=len(hits),
        hits_by_place={where: len(canaries.hits(where, text)) for where, text in places.items()},
        controls_found=controls,
        bytes_searched=sum(len(text) for text in places.values()),
    )
    assert all(controls.values()), f"a place the search could not see into: {controls}"
    assert hits == [], "\n".join(hits)
