"""Scrubbing: sensitive keys, key=value secrets in text, credentials; the marker never echoes."""

from __future__ import annotations

import pytest

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
