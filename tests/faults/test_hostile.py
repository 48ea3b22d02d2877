"""D5: generated hostile requests against the real shop under uvicorn, exporting to a sink.

Hypothesis generates ``scale.hostile_requests`` requests (derandomized: CI sends the same ones
every run), written byte by byte on a socket so nothing is cleaned up on the way: malformed and
oversized ``traceparent``/``tracestate``/``baggage`` (8 KB, 180 members), hostile
``X-Request-ID`` (newlines, JSON fragments, 10 KB, unicode, control bytes, invalid UTF-8), paths
and queries with invalid UTF-8, control characters and forged log lines percent-encoded or raw,
huge query strings, odd methods and Host headers. Then ``scale.unmatched_paths`` distinct
unmatched paths. What must hold, judged on what left the process:

- no 5xx caused by instrumentation (only the shop's deliberate /fail may answer 500), and the
  server is still up;
- the request-duration metric has at most one ``http.route`` value per app route plus one for
  every unmatched path together;
- every stdout line is one well-formed record and none starts with attacker text: a forged line
  always carries the marker ``zforged`` where a record's own fields start;
- no baggage key or value sent shows up in any exported attribute.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_from_bytes, unquote_to_bytes

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from otel_dist.tools.sink import OtlpSink
from support.raw_http import RawResponse, request_bytes, send_raw
from support.servers import ServerProcess, uvicorn_argv
from support.shop import SHOP_CONFIGURE, start_shop
from support.traffic import REQUEST_DURATION

if TYPE_CHECKING:
    from faults.conftest import Figures, Scale

FORGE = "zforged"
# What an attacker would like to see as a line of its own in the logs.
FORGED_LINES = (
    '\n{"event": "zforged", "level": "critical"}',
    '"}\n{"event":"zforged","level":"error"}',
    '\r\n{"event":"zforged","level":"info","trace_id":"0"}',
    '\nINFO:     zforged - "GET /admin HTTP/1.1" 200 OK',
    "\nERROR zforged.audit admin logged in",
    "\u2028ERROR zforged.audit admin logged in",
    "\x1b[2K\rINFO:     zforged",
    # No CR needed: erase the line and go back to its first column, then print over it.
    '\x1b[2K\x1b[1GINFO:     10.0.0.1:1 - "GET /zforged HTTP/1.1" 200 OK',
)
BAGGAGE_TOKEN = re.compile(r"zb[kvp][0-9a-f]{12}")
SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
FASTAPI_DOCS_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

# --- generated requests --------------------------------------------------------------------------

ROUTE_TARGETS = [b"/items", b"/items/1", b"/items/999999", b"/async/items/1", b"/healthz"]
ROUTE_TARGETS += [b"/outgoing", b"/slow?n=10", b"/login", b"/docs"]
QUERY_ROUTES = [b"/items", b"/items/1", b"/async/items/1", b"/outgoing"]

forged = st.sampled_from(FORGED_LINES)
any_bytes = st.binary(max_size=60)
# What h11 lets through to the app in a header value: anything but NUL, CR, LF, VT and FF (so
# other control characters and invalid UTF-8 do reach the app).
header_bytes = any_bytes.map(lambda raw: raw.translate(None, b"\x00\r\n\x0b\x0c"))
header_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), max_size=60).map(
    str.encode
)
hostile_value = st.one_of(
    header_text,
    header_bytes,
    forged.map(lambda line: line.encode().translate(None, b"\r\n")),
    any_bytes,  # raw: mostly refused by the server's HTTP parser before the app sees it
)


def _hex(size: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=size, max_size=size).map(bytes.hex)


valid_traceparent = st.builds(
    "00-{}-{}-{}".format, _hex(16), _hex(8), st.sampled_from(["00", "01", "03", "ff"])
)
TRACEPARENT_MUTATIONS = [
    "upper",
    "zero-trace",
    "zero-span",
    "version-ff",
    "future-version",
    "truncate",
    "splice",
    "pad",
    "dashes",
    "oversized",
]


def _mutate(traceparent: str, how: str, at: int, junk: bytes) -> bytes:
    value = traceparent.encode()
    at %= len(value)
    mutated = {
        "upper": value.upper(),
        "zero-trace": value[:3] + b"0" * 32 + value[35:],
        "zero-span": value[:36] + b"0" * 16 + value[52:],
        "version-ff": b"ff" + value[2:],
        "future-version": b"cc" + value[2:] + b"-" + junk.hex().encode(),
        "truncate": value[:at],
        "splice": value[:at] + junk + value[at:],
        "pad": b" \t" + value + b"  ",
        "dashes": value.replace(b"-", b"--"),
        "oversized": value + b"-" + b"f" * 8192,
    }
    return mutated[how]


traceparents = st.one_of(
    st.builds(
        _mutate,
        valid_traceparent,
        st.sampled_from(TRACEPARENT_MUTATIONS),
        st.integers(0, 60),
        header_bytes,
    ),
    hostile_value,
)


def _members(count: int, size: int) -> bytes:
    each = max(1, size // count - 8)
    return b",".join(b"k%d=%s" % (i, b"v" * each) for i in range(count))


tracestate_member = st.builds(
    lambda key, value: key + b"=" + value,
    st.one_of(st.from_regex(rb"[a-z][a-z0-9_\-*/@]{0,20}", fullmatch=True), header_text),
    st.one_of(header_text, forged.map(str.encode)),
)
tracestates = st.one_of(
    st.lists(tracestate_member, max_size=40).map(b",".join),
    st.builds(_members, st.sampled_from([32, 33, 180, 500]), st.sampled_from([512, 8192, 9000])),
    hostile_value,
)


@st.composite
def baggages(draw: st.DrawFn) -> bytes:
    """A baggage header of marked members (``zbk<hex>=zbv<hex>``), up to 8 KB+ and 300 members.

    The markers are what the test searches the exports for; values and properties carry
    padding, percent-encoded forged lines and invalid UTF-8 as well.
    """
    count = draw(st.sampled_from([1, 3, 33, 64, 179, 180, 181, 300]))
    size = draw(st.sampled_from([0, 4096, 8192, 8193, 12000]))
    first = draw(st.integers(0, 2**40))
    pad = "x" * max(0, size // count - 32)
    members = []
    for i in range(count):
        token = f"{first + i:012x}"
        suffix = draw(
            st.sampled_from(
                [
                    "",
                    f";zbp{token}",
                    f";zbp{token}=1",
                    quote(FORGED_LINES[i % len(FORGED_LINES)]),
                    "%ff%fe%00",
                ]
            )
        )
        members.append(f"zbk{token}=zbv{token}{pad}{suffix}".encode())
    members += draw(st.lists(hostile_value, max_size=3))
    return b",".join(members)


request_ids = st.one_of(
    forged.map(lambda line: ("zrid" + line).encode()),
    st.sampled_from(
        ['"}, {"event": "zforged"', '{"level":"critical"}', "${jndi:ldap://x}", "<zforged/>"]
    ).map(str.encode),
    st.sampled_from([129, 1024, 10240]).map(lambda n: b"r" * n),
    st.sampled_from([64, 2048, 10240]).map(lambda n: ("é€😀" * n)[:n].encode()),
    header_text,
    header_bytes,
    any_bytes,
    st.from_regex(SAFE_REQUEST_ID, fullmatch=True),
)

path_segment = st.one_of(
    any_bytes.map(lambda raw: quote_from_bytes(raw, safe="")),
    forged.map(lambda line: quote(line, safe="")),
    st.text(max_size=20).map(lambda text: quote(text, safe="")),
)
paths = st.one_of(
    st.builds(
        lambda base, segments: (base + "/".join(segments)).encode(),
        st.sampled_from(["/items/", "/async/items/", "/", "/items", "//", "/%2e%2e/"]),
        st.lists(path_segment, min_size=1, max_size=3),
    ),
    any_bytes.map(lambda raw: b"/items/" + raw.translate(None, b" \r\n")),
    st.sampled_from([1024, 8000, 20000]).map(lambda n: b"/items/" + b"a/" * (n // 2)),
)

query_value = st.one_of(
    any_bytes.map(quote_from_bytes),
    forged.map(quote),
    header_text.map(quote_from_bytes),
)
queries = st.one_of(
    st.builds(
        lambda count, value: "&".join(f"p{i}={value}" for i in range(count)).encode(),
        st.sampled_from([1, 50, 1000, 3000]),
        query_value,
    ),
    st.sampled_from([1024, 8000, 15000, 70000]).map(lambda n: b"q=" + b"x" * n),
    query_value.map(lambda value: b"limit=" + value.encode()),
    any_bytes.map(lambda raw: raw.translate(None, b" \r\n#")),
)

methods = st.one_of(
    st.sampled_from([m.encode() for m in sorted(KNOWN_METHODS - {"CONNECT"})]),
    st.from_regex(rb"[A-Z]{1,12}", fullmatch=True),
    st.sampled_from([b"get", b"G\xffT", b"GET\x00"]),
)
# Headers that make a server wait for a body (Content-Length, Transfer-Encoding, Expect) are
# left out: they would only make requests slow.
other_headers = st.tuples(
    st.sampled_from(
        [
            b"Host",
            b"User-Agent",
            b"Accept",
            b"Cookie",
            b"Forwarded",
            b"X-Forwarded-For",
            b"X-Forwarded-Proto",
            b"Authorization",
            b"Content-Type",
            b"Referer",
        ]
    ),
    st.one_of(
        hostile_value,
        st.sampled_from([b"evil:abc", b"[::1", b"a" * 5000, b"", b"1:2:3", b"-1", b"9" * 20]),
    ),
)
FAMILIES = ["traceparent", "tracestate", "baggage", "request id", "path", "query", "method"]


@dataclass(frozen=True)
class Hostile:
    """One generated request and the family of attack it belongs to."""

    family: str
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    def wire(self) -> bytes:
        """The request as written on the socket."""
        return request_bytes(self.method, self.target, self.headers)

    def is_deliberate_failure(self) -> bool:
        """True for the shop's /fail, which answers 500 on purpose."""
        return unquote_to_bytes(self.target.split(b"?", 1)[0]) == b"/fail"


@st.composite
def hostile_requests(draw: st.DrawFn) -> Hostile:
    """One request of a random family, sometimes with hostile ordinary headers on top."""
    family = draw(st.sampled_from(FAMILIES))
    method, target = b"GET", draw(st.sampled_from(ROUTE_TARGETS))
    headers: list[tuple[bytes, bytes]] = []
    if family == "traceparent":
        headers += [
            (b"traceparent", v) for v in draw(st.lists(traceparents, min_size=1, max_size=2))
        ]
    elif family == "tracestate":
        headers += [(b"traceparent", draw(valid_traceparent).encode())]
        headers += [(b"tracestate", v) for v in draw(st.lists(tracestates, min_size=1, max_size=2))]
    elif family == "baggage":
        if draw(st.booleans()):  # with a valid parent too, so the whole context is adopted
            headers.append((b"traceparent", draw(valid_traceparent).encode()))
        headers.append((b"baggage", draw(baggages())))
    elif family == "request id":
        headers += [
            (b"X-Request-ID", v) for v in draw(st.lists(request_ids, min_size=1, max_size=2))
        ]
    elif family == "path":
        target = draw(paths)
    elif family == "query":
        target = draw(st.sampled_from(QUERY_ROUTES)) + b"?" + draw(queries)
    else:
        method = draw(methods)
    headers += draw(st.lists(other_headers, max_size=2))
    return Hostile(family, method, target, tuple(headers))


# --- what came back ------------------------------------------------------------------------------


@dataclass
class Tally:
    """Everything the test judges about the responses, kept while requests are sent."""

    statuses: Counter[str] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # 5xx not from /fail
    unanswered: list[str] = field(default_factory=list)  # connection closed with no response
    unsafe_ids_echoed: list[str] = field(default_factory=list)
    newline_ids: set[str] = field(default_factory=set)
    baggage_sent: set[str] = field(default_factory=set)
    sent: int = 0

    def record(self, request: Hostile, response: RawResponse) -> None:
        """Count one hostile request and note anything wrong with its response."""
        self.sent += 1
        self.families[request.family] += 1
        self.statuses[str(response.status) if response.status else "no response"] += 1
        outcome = f"{request.wire()[:400]!r} -> {response.status} {response.error} "
        if not response.status:
            self.unanswered.append(outcome)
        elif response.status >= 500 and not request.is_deliberate_failure():
            self.server_errors.append(outcome + repr(response.body[:300]))
        echoed = response.header(b"x-request-id")
        if any(not SAFE_REQUEST_ID.fullmatch(value) for value in echoed):
            self.unsafe_ids_echoed.append(f"{request.wire()[:200]!r} -> {echoed}")
        for name, value in request.headers:
            if name == b"X-Request-ID" and b"\n" in value:
                self.newline_ids.add(value.decode("utf-8", "replace"))
            if name == b"baggage":
                self.baggage_sent.update(BAGGAGE_TOKEN.findall(value.decode("latin-1")))

    def record_plain(self, status: int) -> None:
        """Count one request sent with httpx (the unmatched paths)."""
        self.sent += 1
        self.families["unmatched path"] += 1
        self.statuses[str(status)] += 1
        if status >= 500:
            self.server_errors.append(f"unmatched path -> {status}")


def _send_unmatched(base_url: str, count: int, tally: Tally) -> None:
    prefixes = ["wp-admin", ".env", "api/v1/users", "items/1/extra", "cgi-bin", "static/js"]
    paths = [f"/{prefixes[i % len(prefixes)]}/{i}" for i in range(count)]

    def send(chunk: list[str]) -> list[int]:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            return [client.get(path).status_code for path in chunk]

    with ThreadPoolExecutor(4) as pool:
        for statuses in pool.map(send, [paths[i::4] for i in range(4)]):
            for status in statuses:
                tally.record_plain(status)


# --- what left the process -----------------------------------------------------------------------

UVICORN_ACCESS = re.compile(r'INFO: {5}127\.0\.0\.1:\d+ - ".*" \d{3}( .*)?')
UVICORN_OTHER = re.compile(r"(INFO|WARNING|ERROR|CRITICAL|DEBUG):\s+\S.*")
STDLIB = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) ([A-Za-z_][\w.]*) \S.*")
# Characters a terminal or a log shipper may take as the end of a line or a cursor move.
LINE_BREAKERS = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def _forged(line: str) -> bool:
    """Not one well-formed record, or one that starts with attacker text."""
    if LINE_BREAKERS.search(line):
        return True
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return True
        return not (
            isinstance(record, dict)
            and isinstance(record.get("event"), str)
            and "level" in record
            and FORGE not in record["event"]
        )
    if UVICORN_ACCESS.fullmatch(line):
        return False  # attacker text stays inside the quoted request line
    if UVICORN_OTHER.fullmatch(line):
        return FORGE in line
    stdlib = STDLIB.fullmatch(line)
    return stdlib is None or FORGE in stdlib.group(2)


def _exported_attributes(sink: OtlpSink) -> list[dict[str, Any]]:
    """Every attribute map the sink received: spans, events, links, logs, metrics, exemplars."""
    maps: list[dict[str, Any]] = []
    for span in sink.spans():
        maps += [span.attributes, span.resource]
        maps += [event["attributes"] for event in span.events]
        maps += [link["attributes"] for link in span.links]
    for record in sink.logs():
        maps += [record.attributes, record.resource]
    for point in sink.metrics():
        maps += [point.attributes, point.resource]
        maps += [exemplar["attributes"] for exemplar in point.exemplars]
    return maps


def _tokens_in(texts: Iterable[str], wanted: set[str]) -> set[str]:
    return {token for text in texts for token in BAGGAGE_TOKEN.findall(text)} & wanted


def _describe(lines: list[str]) -> str:
    """Which loggers printed the bad lines, and the first few (clipped, escaped)."""
    sources = Counter(" ".join(line.split(" ", 2)[:2]) for line in lines)
    shown = [repr(line if len(line) < 240 else f"{line[:120]} ... {line[-120:]}") for line in lines]
    return f"{len(lines)} lines by source {dict(sources)}; first: " + "\n".join(shown[:4])


def _app_routes(base_url: str) -> set[str]:
    paths = httpx.get(f"{base_url}/openapi.json", timeout=10).json()["paths"]
    return set(paths) | FASTAPI_DOCS_ROUTES


# --- the test ------------------------------------------------------------------------------------


def test_hostile_requests_cause_no_5xx_no_forged_line_no_baggage_leak_bounded_routes(
    scale: Scale,
    otlp_sink: OtlpSink,
    server_factory: Callable[..., ServerProcess],
    tmp_path: Path,
    figures: Figures,
):
    # The client is an attacker, not a proxy: by default uvicorn trusts X-Forwarded-For from
    # 127.0.0.1 and would print the attacker's value as the client address of access lines.
    proc = start_shop(
        server_factory,
        lambda port: uvicorn_argv(SHOP_CONFIGURE, port, "--no-proxy-headers", zero_code=False),
        otlp_sink.endpoint,
        tmp_path,
    )
    port = proc.port
    httpx.post(f"{proc.base_url}/items", json={"name": "teapot", "price_cents": 1}, timeout=10)
    routes = _app_routes(proc.base_url)
    attack_starts = len(proc.output())
    tally = Tally()
    started = time.monotonic()

    @settings(
        max_examples=scale.hostile_requests,
        derandomize=True,  # the same requests on every run, in CI too
        database=None,
        deadline=None,
        phases=[Phase.generate],  # nothing fails inside; the test judges the whole tally
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_requests())
    def attack(request: Hostile) -> None:
        tally.record(request, send_raw(port, request.wire()))

    attack()
    hostile_sent = tally.sent
    _send_unmatched(proc.base_url, scale.unmatched_paths, tally)
    attack_s = time.monotonic() - started
    alive = proc.process.poll() is None
    health = httpx.get(f"{proc.base_url}/healthz", timeout=10).status_code if alive else 0
    output = proc.output()[attack_starts:]
    proc.stop()  # a graceful exit flushes every span, log and the final metrics

    lines = output.rstrip("\n").split("\n")
    forged_lines = [line for line in lines if _forged(line)]
    # An id of line breaks alone is in any output of two lines: there is nothing to look for.
    raw_newline_ids = [rid for rid in tally.newline_ids if rid.strip() and rid in output]
    points = [p for p in otlp_sink.metrics() if p.name == REQUEST_DURATION]
    route_values = {p.attributes.get("http.route") for p in points}
    method_values = {p.attributes.get("http.request.method") for p in points}
    series = {frozenset(p.attributes.items()) for p in points}
    attributes = [repr(m) for m in _exported_attributes(otlp_sink)]
    baggage_hits = _tokens_in(attributes, tally.baggage_sent)
    log_text = [repr(r.body) for r in otlp_sink.logs()] + [output]
    baggage_echoed = _tokens_in(log_text, tally.baggage_sent)

    figures(
        "hostile input",
        requests=tally.sent,
        hostile=hostile_sent,
        unmatched=tally.sent - hostile_sent,
        seconds=round(attack_s, 1),
        statuses=dict(sorted(tally.statuses.items())),
        families=dict(tally.families),
        five_xx=len(tally.server_errors),
        no_response=len(tally.unanswered),
        server_up=alive and health == 200,
        distinct_routes=len(route_values),
        route_bound=len(routes) + 1,
        distinct_methods=len(method_values),
        series=len(series),
        stdout_lines=len(lines),
        forged_lines=len(forged_lines),
        raw_newline_ids=len(raw_newline_ids),
        unsafe_ids_echoed=len(tally.unsafe_ids_echoed),
        baggage_tokens_sent=len(tally.baggage_sent),
        baggage_hits=len(baggage_hits),
        baggage_echoed_in_log_text=len(baggage_echoed),
    )
    assert hostile_sent >= scale.hostile_requests
    assert tally.baggage_sent  # the baggage search below searches for something
    # Every property is judged, so one failure does not hide another.
    unmatched_routes = route_values - routes
    broken = {
        "5xx caused by instrumentation": tally.server_errors[:5],
        "no response at all": tally.unanswered[:5],
        "server down after the attack": [] if alive and health == 200 else [alive, health],
        "http.route values past the bound": sorted(map(str, route_values))[:20]
        if len(route_values) > len(routes) + 1 or len(unmatched_routes) > 1
        else [],
        "http.request.method values not collapsed": sorted(
            map(str, method_values - KNOWN_METHODS - {"_OTHER"})
        )[:20],
        "forged or malformed stdout lines": [_describe(forged_lines)] if forged_lines else [],
        "request ids with a newline printed raw": raw_newline_ids[:5],
        "unsafe request ids echoed": tally.unsafe_ids_echoed[:5],
        "baggage copied into exported attributes": sorted(baggage_hits)[:10],
    }
    failed = {check: found for check, found in broken.items() if found}
    assert not failed, "\n".join(f"{check}: {found}" for check, found in failed.items())
