"""Incoming trace context: adopted by default; linked, never adopted, at an untrusted edge."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_dist.fastapi.incoming_context import (
    LINK_ATTRIBUTES,
    OneTraceparentOnly,
    RequestPropagation,
    UntrustedEdgePropagator,
)
from otel_dist.tools.sink import OtlpSink, SpanRecord
from support.servers import PID_APP, REPO_ROOT, ServerProcess, free_port, pid_app_env, venv_bin

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
HEADERS = {
    # "-00": the caller asks us not to sample; an untrusted edge must not obey.
    "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00",
    "baggage": "tenant=attacker,role=admin",
}
W3C = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


def test_untrusted_extract_keeps_no_parent_and_no_baggage():
    context = UntrustedEdgePropagator(W3C).extract(HEADERS)
    assert not trace.get_current_span(context).get_span_context().is_valid
    assert baggage.get_all(context) == {}


def test_untrusted_extract_of_garbage_is_the_plain_context():
    propagator = UntrustedEdgePropagator(W3C)
    assert propagator.extract({"traceparent": "00-zz-yy-01"}) == propagator.extract({})
    assert propagator.fields == W3C.fields


BAGGAGE_FIRST = CompositePropagator([W3CBaggagePropagator(), TraceContextTextMapPropagator()])


@pytest.mark.parametrize(
    "propagator",
    [
        W3C,
        BAGGAGE_FIRST,
        OneTraceparentOnly(W3C),
        OneTraceparentOnly(BAGGAGE_FIRST),
        UntrustedEdgePropagator(BAGGAGE_FIRST),
        TraceContextTextMapPropagator(),
        W3CBaggagePropagator(),
        CompositePropagator([]),
    ],
    ids=["w3c", "baggage-first", "one", "one-baggage-first", "untrusted", "tc", "bg", "none"],
)
@pytest.mark.parametrize("inside_a_span", [False, True])
def test_request_without_trace_headers_gets_what_the_propagator_extracts(
    propagator: TextMapPropagator, inside_a_span: bool
):
    # Baggage-first chains start from the current context, the others from an empty one: the
    # shortcut for requests without the propagator's headers must give the same either way.
    current = baggage.set_baggage("k", "v", trace.set_span_in_context(_span()))
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(propagator)
    token = context.attach(current) if inside_a_span else None
    try:
        got = RequestPropagation().extract([(b"host", b"example"), (b"accept", b"*/*")])
        expected = propagator.extract({})
    finally:
        if token is not None:
            context.detach(token)
        propagate.set_global_textmap(previous)
    assert got == expected


def _span() -> trace.Span:
    return TracerProvider().get_tracer(__name__).start_span("current")


def _asgi_scope(*headers: tuple[str, str]) -> dict[str, object]:
    return {"headers": [(k.encode(), v.encode()) for k, v in headers]}


@pytest.mark.parametrize(
    "second", [HEADERS["traceparent"], f"00-{CALLER_TRACE}-{'1' * 16}-01"], ids=["same", "other"]
)
def test_two_traceparent_lines_are_no_parent_whatever_the_getter(second: str):
    # The contrib ASGI middleware's getter: the contrib mode extracts with it.
    from opentelemetry.instrumentation.asgi import asgi_getter  # noqa: PLC0415

    propagator = OneTraceparentOnly(W3C)
    one = _asgi_scope(("traceparent", HEADERS["traceparent"]), ("baggage", HEADERS["baggage"]))
    two = _asgi_scope(
        ("traceparent", HEADERS["traceparent"]),
        ("tracestate", "a=1"),
        ("traceparent", second),
        ("baggage", HEADERS["baggage"]),
    )
    continued = propagator.extract(one, getter=asgi_getter)
    assert trace.get_current_span(continued).get_span_context().trace_id == int(CALLER_TRACE, 16)
    restarted = propagator.extract(two, getter=asgi_getter)
    assert not trace.get_current_span(restarted).get_span_context().is_valid
    assert baggage.get_all(restarted) == {"tenant": "attacker", "role": "admin"}
    # A plain dict carrier with a list of lines reads the same.
    lines = {"traceparent": [HEADERS["traceparent"], second]}
    assert not trace.get_current_span(propagator.extract(lines)).get_span_context().is_valid
    assert propagator.fields == W3C.fields


def _server_span(
    server_factory: Callable[..., ServerProcess],
    sink: OtlpSink,
    headers: dict[str, str],
    **env: str,
) -> SpanRecord:
    port = free_port()
    server = server_factory(
        [venv_bin("uvicorn"), PID_APP, "--host", "127.0.0.1", "--port", str(port)],
        env=pid_app_env(sink.endpoint, PID_APP_MODE="configure", **env),
        port=port,
        cwd=REPO_ROOT,
    )
    response = httpx.get(f"{server.base_url}/pid", headers=headers, timeout=10)
    assert response.status_code == 200
    assert sink.wait_for(lambda s: any(p.name == "GET /pid" for p in s.spans()), 15)
    [span] = [p for p in sink.spans() if p.name == "GET /pid"]
    assert response.headers["traceresponse"].split("-")[1] == span.trace_id
    return span


@pytest.mark.integration
def test_by_default_the_request_continues_the_callers_trace(
    server_factory: Callable[..., ServerProcess], otlp_sink: OtlpSink
):
    sampled = {**HEADERS, "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    span = _server_span(server_factory, otlp_sink, sampled)
    assert (span.trace_id, span.parent_span_id) == (CALLER_TRACE, CALLER_SPAN)
    assert span.links == []


@pytest.mark.integration
def test_untrusted_edge_starts_a_new_sampled_trace_linked_to_the_caller(
    server_factory: Callable[..., ServerProcess], otlp_sink: OtlpSink
):
    span = _server_span(
        server_factory, otlp_sink, HEADERS, OTEL_DIST_TRUST_INCOMING_CONTEXT="false"
    )
    assert span.trace_id != CALLER_TRACE
    assert span.parent_span_id == ""
    assert span.links == [
        {"trace_id": CALLER_TRACE, "span_id": CALLER_SPAN, "attributes": LINK_ATTRIBUTES}
    ]
    exported = [*otlp_sink.spans(), *otlp_sink.logs()]
    assert not [r for r in exported if "attacker" in repr(r.attributes)]
