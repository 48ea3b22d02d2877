"""An app's own error-body asserts pass unchanged with otel-dist, both ways in (real uvicorn).

``check_app_contract`` is what the app's own test suite would assert: exact equality on the
bodies the app raises (404, 403, a Starlette 409 with a header) and FastAPI's 422 for a bad
payload, computed from the same app served with no otel-dist at all, byte for byte. Its own
exception handler answers too. With the defaults it passes under ``configure()`` and
``opentelemetry-instrument``; with ``all`` the same bodies carry the ids, and only them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from otel_dist.tools.sink import OtlpSink
from support.contract import ID_HEADERS, WAYS_IN, contract_app, parse_traceparent

BAD_USER = {"email": "x", "age": "old"}
# (method, path, json body) of each error the app's own suite checks.
APP_ERRORS = [
    ("GET", "/users/42", None),
    ("GET", "/admin", None),
    ("GET", "/conflict", None),
    ("POST", "/users", BAD_USER),
    ("GET", "/teapot", None),
]


@dataclass(frozen=True)
class Reference:
    """What the app answers without otel-dist, per (method, path)."""

    responses: dict[tuple[str, str], httpx.Response]

    def __getitem__(self, key: tuple[str, str]) -> httpx.Response:
        return self.responses[key]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    with contract_app("plain", tmp_path_factory.mktemp("plain")) as server:
        responses = {
            (method, path): httpx.request(method, server.base_url + path, json=body, timeout=10)
            for method, path, body in APP_ERRORS
        }
    return Reference(responses)


def app_headers(response: httpx.Response) -> list[tuple[str, str]]:
    """The headers the app produced: without ``date`` (it changes) and otel-dist's id headers."""
    return [
        (name, value)
        for name, value in response.headers.multi_items()
        if name != "date" and name not in ID_HEADERS
    ]


def check_app_contract(base_url: str, reference: Reference) -> None:
    """The app's own asserts, written as its team would (no knowledge of otel-dist)."""
    r = httpx.get(f"{base_url}/users/42", timeout=10)
    assert r.status_code == 404
    assert r.json() == {"detail": "User not found"}

    r = httpx.get(f"{base_url}/admin", timeout=10)
    assert r.status_code == 403
    assert r.json() == {"detail": "The user doesn't have enough privileges"}

    r = httpx.get(f"{base_url}/conflict", timeout=10)
    assert r.status_code == 409
    assert r.json() == {"detail": "Email already registered"}
    assert r.headers["x-reason"] == "dup"

    r = httpx.post(f"{base_url}/users", json=BAD_USER, timeout=10)
    assert r.status_code == 422
    assert r.content == reference["POST", "/users"].content
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "email"], ["body", "age"]]

    r = httpx.get(f"{base_url}/teapot", timeout=10)
    assert r.status_code == 418
    assert r.json() == {"error": "short and stout"}

    # Beyond the app's asserts: status, headers and bytes all as without otel-dist.
    for method, path, body in APP_ERRORS:
        r = httpx.request(method, base_url + path, json=body, timeout=10)
        expected = reference[method, path]
        assert (r.status_code, r.content) == (expected.status_code, expected.content), path
        assert app_headers(r) == app_headers(expected), path


def check_ids_in_headers(response: httpx.Response) -> tuple[str, str]:
    """The (trace id, request id) the response headers carry; both present."""
    _, trace_id, _, _ = parse_traceparent(response.headers["traceresponse"])
    request_id = response.headers["x-request-id"]
    assert request_id
    return trace_id, request_id


@pytest.mark.parametrize("way", WAYS_IN)
def test_apps_own_error_asserts_pass_unchanged_with_the_defaults(
    way: str, reference: Reference, sink: OtlpSink, tmp_path: Path
) -> None:
    with contract_app(way, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=sink.endpoint) as server:
        check_app_contract(server.base_url, reference)
        for method, path, body in APP_ERRORS:
            check_ids_in_headers(httpx.request(method, server.base_url + path, json=body))
        # The body nobody wrote: the ids, never the exception.
        failed = httpx.get(f"{server.base_url}/fail", timeout=10)
    trace_id, request_id = check_ids_in_headers(failed)
    assert failed.status_code == 500
    assert failed.json() == {
        "detail": "Internal Server Error",
        "trace_id": trace_id,
        "request_id": request_id,
    }
    assert "CANARY" not in failed.text


@pytest.mark.parametrize("way", WAYS_IN)
def test_all_adds_exactly_the_ids_to_the_apps_bodies(
    way: str, reference: Reference, sink: OtlpSink, tmp_path: Path
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
    if way == "configure":
        env["CONTRACT_APP_ERROR_BODY_IDS"] = "all"  # the keyword, over the variable below
        env["OTEL_DIST_ERROR_BODY_IDS"] = "none"
    else:
        env["OTEL_DIST_ERROR_BODY_IDS"] = "all"
    with contract_app(way, tmp_path, **env) as server:
        with pytest.raises(AssertionError):
            check_app_contract(server.base_url, reference)
        responses = [
            (path, httpx.request(method, server.base_url + path, json=body, timeout=10))
            for method, path, body in APP_ERRORS
        ]
    for path, response in responses:
        expected = reference["POST" if path == "/users" else "GET", path]
        assert response.status_code == expected.status_code
        trace_id, request_id = check_ids_in_headers(response)
        if path == "/teapot":  # the app's own handler: untouched
            assert response.content == expected.content
            continue
        assert response.json() == {
            **expected.json(),
            "trace_id": trace_id,
            "request_id": request_id,
        }, path
    assert dict(responses)["/conflict"].headers["x-reason"] == "dup"
