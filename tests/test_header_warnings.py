"""Warnings quoting malformed incoming headers can't forge log lines or flood the output."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_dist.header_warnings import (
    SafeHeaderWarnings,
    escape_controls,
    make_header_warnings_safe,
    shorten,
)

FORGED = '\x1b[2K\x1b[1GINFO:     10.0.0.1:1 - "GET /admin HTTP/1.1" 200 OK\nnext\u2028line\x85'


def test_control_characters_are_escaped_visibly():
    assert escape_controls(FORGED) == (
        '\\x1b[2K\\x1b[1GINFO:     10.0.0.1:1 - "GET /admin HTTP/1.1" 200 OK\\nnext\\u2028line\\x85'
    )
    assert escape_controls("plain tenant=é") == "plain tenant=é"


def test_long_text_is_cut_and_says_how_long_it_was():
    assert shorten("a" * 300, 10) == "aaaaaaaaaa... (300 characters)"
    assert shorten("short", 10) == "short"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(message: str, *args: object) -> logging.LogRecord:
    name = "opentelemetry.trace.span"
    return logging.LogRecord(name, logging.WARNING, "", 0, message, args, None)


def test_one_warning_per_interval_then_the_count_of_the_others():
    clock = Clock()
    safe = SafeHeaderWarnings(60, clock=clock)
    first = _record("Member doesn't match the w3c identifiers format %s", FORGED)
    assert safe.filter(first)
    assert first.getMessage().startswith("Member doesn't match the w3c identifiers format \\x1b")
    assert "\n" not in first.getMessage()
    assert not any(safe.filter(_record("again %s", i)) for i in range(500))
    clock.now = 60
    later = _record("Invalid baggage entry: `%s`", "x" * 9000)
    assert safe.filter(later)
    assert later.getMessage() == (
        "Invalid baggage entry: `" + "x" * 176 + "... (9025 characters) (and 500 more warnings "
        "about malformed trace headers in the last 60 s, not shown)"
    )


def test_the_propagators_warnings_are_made_safe(caplog: pytest.LogCaptureFixture):
    remove = make_header_warnings_safe()
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(50):
                TraceContextTextMapPropagator().extract(
                    {
                        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                        "tracestate": FORGED,
                    }
                )
                W3CBaggagePropagator().extract({"baggage": "k=" + "v" * 9000})
    finally:
        remove()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "\x1b" not in messages[0]
    assert len(messages[0]) < 300
