"""Scrubbing: sensitive keys, key=value secrets in text, credentials; the marker never echoes."""

from __future__ import annotations

import random
import re
import traceback
from types import MappingProxyType

import pytest
from opentelemetry.attributes import BoundedAttributes

from otel_dist.scrub import REDACTED, Scrubber

CANARY = "CANARY-7f3a"


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "user_password",
        "PASSWD",
        "api_key",
        "apiKey",
        "X-Api-Key",
        "secret",
        "client_secret",
        "access_token",
        "refresh-token",
        "authorization",
        "http.request.header.authorization",
        "http.request.header.cookie",
        "http.response.header.set-cookie",
        "session_id",
        "csrf_token",
        "jwt",
        "private_key",
        "credit_card",
        "ssn",
        "aws_access_key_id",
    ],
)
def test_sensitive_keys_are_redacted_whole(key):
    assert Scrubber().mapping({key: CANARY}) == {key: REDACTED}


@pytest.mark.parametrize(
    "key",
    [
        "author",
        "authors",
        "item_id",
        "name",
        "http.route",
        "db.query.text",
        "error.type",
        "trace_id",
        "request_id",
    ],
)
def test_ordinary_keys_are_kept(key):
    assert Scrubber().mapping({key: "value"}) == {key: "value"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /items?token=CANARY&page=2", f"GET /items?token={REDACTED}&page=2"),
        ("password=CANARY", f"password={REDACTED}"),
        ('{"api_key": "CANARY", "n": 1}', f'{{"api_key": "{REDACTED}", "n": 1}}'),
        ("Authorization: Bearer CANARY.abc.def", f"Authorization: {REDACTED} {REDACTED}"),
        ("bad login: password: CANARY!", f"bad login: password: {REDACTED}"),
        ("Cookie: sid=CANARY", f"Cookie: {REDACTED}"),
        ("nothing secret here", "nothing secret here"),
        ("author=bob", "author=bob"),
    ],
)
def test_key_value_secrets_in_text(text, expected):
    assert Scrubber().text(text.replace("CANARY", CANARY)) == expected


def test_nested_values_and_sequences():
    scrubbed = Scrubber().value({"outer": [{"token": CANARY}, f"secret={CANARY}"]})
    assert CANARY not in repr(scrubbed)


def test_extra_patterns_extend_defaults():
    s = Scrubber(["customer_ref"])
    assert s.mapping({"customer_ref": CANARY, "password": CANARY}) == {
        "customer_ref": REDACTED,
        "password": REDACTED,
    }


def test_marker_does_not_echo_custom_pattern_match():
    # Logfire #1909: a marker naming the match leaked the secret when the pattern was the secret.
    s = Scrubber(["internal_ref"])
    assert s.mapping({"internal_ref": CANARY}) == {"internal_ref": REDACTED}
    assert s.text(f"internal_ref={CANARY}") == f"internal_ref={REDACTED}"
    assert "internal_ref" not in REDACTED


def test_disabled_scrubber_changes_nothing():
    s = Scrubber(enabled=False)
    assert s.mapping({"password": CANARY}) == {"password": CANARY}
    assert s.text(f"token={CANARY}") == f"token={CANARY}"


def test_attributes_returns_none_when_nothing_changes():
    s = Scrubber()
    assert s.attributes({"http.route": "/items"}) is None
    assert s.attributes({"url.query": f"token={CANARY}"}) == {"url.query": f"token={REDACTED}"}


def test_attributes_of_spans_and_log_records_are_scrubbed_into_a_plain_copy():
    # Span and log record attributes are BoundedAttributes; a finished span hands them out in a
    # MappingProxyType. Both are read without being changed.
    s = Scrubber()
    for wrap in (lambda a: a, MappingProxyType):
        clean = BoundedAttributes(attributes={"http.route": "/items", "n": 1, "ok": True})
        assert s.attributes(wrap(clean)) is None
        secret = BoundedAttributes(
            attributes={"url.query": f"token={CANARY}", "api_key": CANARY, "n": 2, "tags": ("a",)}
        )
        scrubbed = s.attributes(wrap(secret))
        assert type(scrubbed) is dict
        assert scrubbed == {
            "url.query": f"token={REDACTED}",
            "api_key": REDACTED,
            "n": 2,
            "tags": ("a",),
        }
        assert secret["api_key"] == CANARY


# The regexes scrubbing used before pairs were found from their separators: the reference.
_REFERENCE_PAIR = re.compile(
    rf"""(?<![\w.-])([\w.-]+)["']?\s*[=:]\s*["']?"""
    rf"""(?=(?!{re.escape(REDACTED)})([^\s"'&,;}}\]]+))"""
)
_REFERENCE_CREDENTIAL = re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]{4,}", re.I)
_FRAGMENTS = (
    *("token", "password", "Passwd", "auth", "authors", "ssn", "a.ssn", "x_ssn", "api-key"),
    *("id", "user", "n1", "é", "\u017f", "\u0130", "\u0131", "\u212a", "ß", "Bearer", "basic"),
    *("BA\u017fIC", "bas\u0131c", "TOKEN", "=", "=", ":", ":", " ", " ", "  ", "\t", "\n"),
    *('"', "'", "&", ",", ";", "}", "]", "[", REDACTED, "-", ".", "_", "abcd1234", "/x?"),
)


def _reference_text(scrubber: Scrubber, value: str) -> str:
    if "=" not in value and ":" not in value and " " not in value:
        return value
    if " " in value:
        value = _REFERENCE_CREDENTIAL.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
    pieces: list[str] = []
    done = 0
    for match in _REFERENCE_PAIR.finditer(value):
        if match.start() < done or not scrubber.is_sensitive_key(match.group(1)):
            continue
        pieces += [value[done : match.start(2)], REDACTED]
        done = match.end(2)
    return "".join([*pieces, value[done:]]) if pieces else value


def test_text_redacts_exactly_what_the_reference_regexes_redact():
    rng = random.Random(20261122)
    scrubber = Scrubber(["internal_ref"])
    samples = [
        "".join(rng.choice(_FRAGMENTS) for _ in range(rng.randint(1, 24))) for _ in range(20_000)
    ]
    try:
        raise ValueError('token=abc {"password": "x"} Authorization: Bearer abcdef')
    except ValueError as exc:
        samples.append("".join(traceback.format_exception(exc)))
    for sample in samples:
        assert scrubber.text(sample) == _reference_text(scrubber, sample), repr(sample)
