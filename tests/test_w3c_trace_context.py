"""W3C Trace Context processing rules, through real uvicorn and a real outgoing httpx call.

Each case writes its request byte for byte (header names, casing, whitespace and repeated lines
as given) to the contract app, which calls a recording server with httpx. The rules, from the
Trace Context Level 1 text and Level 2's random-trace-id flag: a valid ``traceparent`` is
continued (same trace id, our own parent id, the sampled flag honoured, ``tracestate`` passed on
unchanged); an invalid one, or two of them, starts a new trace and drops ``tracestate``; an
invalid ``tracestate`` is dropped while the trace continues. Every case runs both ways in, with
traces exported (checked at a real OTLP sink) and with ``OTEL_TRACES_EXPORTER=none``, and once
more with the contrib ASGI middleware in place of FastAPI's native telemetry.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from otel_dist.tools.sink import OtlpSink
from support.contract import contract_app, parse_traceparent
from support.raw_http import request_bytes, send_raw
from support.recorder import HeaderRecorder, header_recorder
from support.servers import ServerProcess

# Real servers in subprocesses.
pytestmark = pytest.mark.integration

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Case:
    """A request's trace headers (from a fresh trace id and parent id) and what must follow."""

    headers: Callable[[str, str], Headers]
    continued: bool
    forwarded_flags: str = "01"  # flags of the outgoing traceparent (new traces: "03")
    tracestate: str | None = None  # the outgoing tracestate; None: no such header


def traceparent(version: str = "00", flags: str = "01", tail: str = "") -> Callable[..., Headers]:
    return lambda t, p: [("traceparent", f"{version}-{t}-{p}-{flags}{tail}")]


def with_tracestate(*values: str, name: str = "traceparent") -> Callable[..., Headers]:
    return lambda t, p: [(name, f"00-{t}-{p}-01"), *(("tracestate", v) for v in values)]


def restart(headers: Callable[[str, str], Headers]) -> Case:
    """A new trace: sampled by our sampler, with the random trace id flag (Level 2)."""
    return Case(headers, continued=False, forwarded_flags="03")


def members(count: int) -> str:
    return ",".join(f"k{i}=v{i}" for i in range(count))


CASES: dict[str, Case] = {
    # traceparent: the header
    "valid traceparent is continued": Case(traceparent(), continued=True),
    "header names are case-insensitive": Case(
        lambda t, p: [("TraceParent", f"00-{t}-{p}-01"), ("TRACESTATE", "foo=1")],
        continued=True,
        tracestate="foo=1",
    ),
    "whitespace around the value is ignored": Case(
        lambda t, p: [("traceparent", f" \t00-{t}-{p}-01\t ")], continued=True
    ),
    "two traceparent headers start a new trace": restart(
        lambda t, p: [("traceparent", f"00-{t}-{p}-01"), ("traceparent", f"00-{t}-{p}-01")]
    ),
    "two different traceparent headers start a new trace": restart(
        lambda t, p: [
            ("traceparent", f"00-{t}-{p}-01"),
            ("traceparent", f"00-{secrets.token_hex(16)}-{p}-01"),
        ]
    ),
    # version
    "future version is parsed as version 00": Case(traceparent("cc"), continued=True),
    "future version may carry more fields after a dash": Case(
        traceparent("cc", tail="-what-the-future-will-be-like"), continued=True
    ),
    "future version with no dash after the flags is invalid": restart(
        traceparent("cc", tail=".what-the-future-will-be-like")
    ),
    "version ff is invalid": restart(traceparent("ff")),
    "version 00 with anything after the flags is invalid": restart(traceparent(tail="-extra")),
    "version 00 with a trailing dot is invalid": restart(traceparent(tail=".")),
    "version not hex is invalid": restart(traceparent("0g")),
    "version in upper case is invalid": restart(traceparent("AA")),
    "version of one digit is invalid": restart(lambda t, p: [("traceparent", f"0-{t}-{p}-01")]),
    # trace-id and parent-id
    "trace id of zeros is invalid": restart(
        lambda t, p: [("traceparent", f"00-{'0' * 32}-{p}-01")]
    ),
    "parent id of zeros is invalid": restart(
        lambda t, p: [("traceparent", f"00-{t}-{'0' * 16}-01")]
    ),
    "trace id in upper case is invalid": restart(
        lambda t, p: [("traceparent", f"00-{t.upper()}-{p}-01")]
    ),
    "parent id in upper case is invalid": restart(
        lambda t, p: [("traceparent", f"00-{t}-{p.upper()}-01")]
    ),
    "trace id too short is invalid": restart(lambda t, p: [("traceparent", f"00-{t[1:]}-{p}-01")]),
    "trace id too long is invalid": restart(lambda t, p: [("traceparent", f"00-{t}0-{p}-01")]),
    "parent id too short is invalid": restart(lambda t, p: [("traceparent", f"00-{t}-{p[1:]}-01")]),
    "parent id too long is invalid": restart(lambda t, p: [("traceparent", f"00-{t}-{p}0-01")]),
    "trace id not hex is invalid": restart(lambda t, p: [("traceparent", f"00-{t[:-1]}g-{p}-01")]),
    "other separators are invalid": restart(lambda t, p: [("traceparent", f"00_{t}_{p}_01")]),
    # trace-flags
    "sampled flag off is honoured": Case(traceparent(flags="00"), True, forwarded_flags="00"),
    "random trace id flag is kept": Case(traceparent(flags="03"), True, forwarded_flags="03"),
    "unknown flags are ignored and not passed on": Case(
        traceparent(flags="f9"), True, forwarded_flags="01"
    ),
    "flags not hex are invalid": restart(traceparent(flags="0g")),
    "flags of one digit are invalid": restart(traceparent(flags="1")),
    # tracestate
    "tracestate is passed on unchanged": Case(
        with_tracestate("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        True,
        tracestate="congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    ),
    "several tracestate headers are combined in order": Case(
        with_tracestate("b=2,a=1", "c=3"), True, tracestate="b=2,a=1,c=3"
    ),
    "whitespace and empty members in tracestate are dropped": Case(
        with_tracestate("a=1 ,\t, b=2"), True, tracestate="a=1,b=2"
    ),
    "tracestate of 32 members is kept": Case(
        with_tracestate(members(32)), True, tracestate=members(32)
    ),
    "tracestate of 33 members is dropped": Case(with_tracestate(members(33)), True),
    "tracestate with a duplicate key is dropped": Case(with_tracestate("foo=1,foo=2"), True),
    "duplicate key across tracestate headers is dropped": Case(
        with_tracestate("foo=1", "foo=2"), True
    ),
    "multi-tenant key is valid": Case(
        with_tracestate("t1@vendor=x,a-b_c*d/e=y"), True, tracestate="t1@vendor=x,a-b_c*d/e=y"
    ),
    "key in upper case makes tracestate invalid": Case(with_tracestate("Foo=1,bar=2"), True),
    "key starting with a digit without a tenant is invalid": Case(with_tracestate("1a=1"), True),
    "key with other characters is invalid": Case(with_tracestate("fo.o=1"), True),
    "key of 256 characters is valid": Case(
        with_tracestate("k" * 256 + "=1"), True, tracestate="k" * 256 + "=1"
    ),
    "key of 257 characters is invalid": Case(with_tracestate("k" * 257 + "=1"), True),
    "member without = is invalid": Case(with_tracestate("foo"), True),
    "value with = is invalid": Case(with_tracestate("foo=a=b"), True),
    "value with inner spaces is valid": Case(
        with_tracestate("foo=a b"), True, tracestate="foo=a b"
    ),
    "value of 256 characters is valid": Case(
        with_tracestate("foo=" + "v" * 256), True, tracestate="foo=" + "v" * 256
    ),
    "value of 257 characters is invalid": Case(with_tracestate("foo=" + "v" * 257), True),
    "tracestate without traceparent is ignored": restart(lambda t, p: [("tracestate", "foo=1")]),
    "tracestate of an invalid traceparent is ignored": restart(
        lambda t, p: [("traceparent", f"ff-{t}-{p}-01"), ("tracestate", "foo=1")]
    ),
}
# (way in, traces exported, HTTP instrumentation)
SERVERS = [
    ("configure", True, "auto"),
    ("configure", False, "auto"),
    ("zero-code", True, "auto"),
    ("zero-code", False, "auto"),
    ("zero-code", True, "contrib"),  # the contrib middleware extracts with its own getter
]
_paths = itertools.count()


@dataclass
class Served:
    """One running contract app, where it forwards to, and where its spans go (if anywhere)."""

    server: ServerProcess
    recorder: HeaderRecorder
    sink: OtlpSink | None


@pytest.fixture(scope="module")
def recorder() -> Iterator[HeaderRecorder]:
    with header_recorder() as started:
        yield started


@pytest.fixture(
    scope="module",
    params=SERVERS,
    ids=[
        f"{way}, {'exported' if on else 'exporters none'}{', contrib' if mode == 'contrib' else ''}"
        for way, on, mode in SERVERS
    ],
)
def served(
    request: pytest.FixtureRequest,
    recorder: HeaderRecorder,
    sink: OtlpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    way, exported, mode = request.param
    env = {
        "DOWNSTREAM_URL": recorder.url,
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_DIST_HTTP_INSTRUMENTATION": mode,
    }
    if exported:
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        env["OTEL_LOGS_EXPORTER"] = "none"
    else:
        env |= {"OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    with contract_app(way, tmp_path_factory.mktemp("w3c"), **env) as server:
        yield Served(server, recorder, sink if exported else None)


@pytest.mark.parametrize("rule", list(CASES))
def test_trace_context_rule(served: Served, rule: str) -> None:
    case = CASES[rule]
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    path = f"/w3c-{next(_paths)}"
    headers = [(k.encode(), v.encode()) for k, v in case.headers(trace_id, parent_id)]
    response = send_raw(
        served.server.port, request_bytes(b"GET", f"/forward{path}".encode(), headers)
    )
    assert response.status == 200, (response.error, response.body)

    [answered] = response.header(b"traceresponse")
    _, our_trace, server_span, answered_flags = parse_traceparent(answered.decode())
    [forwarded] = served.recorder.values(path, "traceparent")
    version, forwarded_trace, client_span, forwarded_flags = parse_traceparent(forwarded)
    assert version == "00"
    assert forwarded_trace == our_trace
    assert client_span not in (parent_id, server_span)
    assert (answered_flags, forwarded_flags) == (case.forwarded_flags, case.forwarded_flags)
    if case.continued:
        assert our_trace == trace_id
    else:
        assert our_trace != trace_id
    tracestate = served.recorder.values(path, "tracestate")
    assert tracestate == ([] if case.tracestate is None else [case.tracestate])

    sampled = int(case.forwarded_flags, 16) & 1
    if served.sink is not None and sampled:
        check_exported(served.sink, our_trace, server_span, client_span, parent_id, case)


def check_exported(
    sink: OtlpSink, trace_id: str, server_span: str, client_span: str, parent_id: str, case: Case
) -> None:
    """The exported spans are the ones the headers name, parented as the rule says."""

    def both_arrived(s: OtlpSink) -> bool:
        return {x.kind for x in s.spans() if x.trace_id == trace_id} >= {"SERVER", "CLIENT"}

    assert sink.wait_for(both_arrived, timeout=20)
    spans = {x.kind: x for x in sink.spans() if x.trace_id == trace_id}
    assert spans["SERVER"].span_id == server_span
    assert spans["SERVER"].parent_span_id == (parent_id if case.continued else "")
    assert spans["CLIENT"].span_id == client_span
    assert spans["CLIENT"].parent_span_id == server_span
