"""The SDK's warnings about malformed incoming trace headers: escaped, shortened, rate-limited.

The W3C propagators warn when a request's ``traceparent``, ``tracestate`` or ``baggage`` is
malformed, and quote the offending text: up to 8 KB of it, control characters included, once
per request. A client can thereby write what it likes to the service's log output: terminal
escape sequences that rewrite a line, a fake access-log line, or simply 8 KB of noise per request.
Those warnings tell the operator nothing they can act on (the client sent garbage, and the
header was ignored), so otel-dist keeps them but makes them safe: control characters are
escaped, the text is cut to ``MAX_CHARS``, and at most one such warning is logged per
``INTERVAL_S``, saying how many were suppressed since the last.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

from otel_dist.global_changes import CHANGES

# The loggers of the API's propagators and the trace state / baggage parsers they call.
HEADER_PARSING_LOGGERS = (
    "opentelemetry.trace.span",
    "opentelemetry.trace.propagation.tracecontext",
    "opentelemetry.baggage",
    "opentelemetry.baggage.propagation",
)
MAX_CHARS = 200
INTERVAL_S = 60.0
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    r"""``text`` with every control character written as a visible escape, such as ``\x1b``."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def shorten(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class SafeHeaderWarnings(logging.Filter):
    """Lets one escaped, shortened warning through per interval; counts the others."""

    def __init__(
        self, interval_s: float = INTERVAL_S, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._quiet_until: float | None = None
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """False while within the interval of the last warning let through; else rewrite it."""
        with self._lock:
            now = self._clock()
            if self._quiet_until is not None and now < self._quiet_until:
                self._suppressed += 1
                return False
            suppressed, self._suppressed = self._suppressed, 0
            self._quiet_until = now + self._interval_s
        text = shorten(escape_controls(record.getMessage()))
        if suppressed:
            text += (
                f" (and {suppressed} more warnings about malformed trace headers in the "
                f"last {self._interval_s:g} s, not shown)"
            )
        record.msg, record.args = text, None
        return True


def make_header_warnings_safe() -> Callable[[], None]:
    """Install the filter on the header-parsing loggers; returns the function that removes it."""
    safe = SafeHeaderWarnings()
    for name in HEADER_PARSING_LOGGERS:
        CHANGES.add_filter(name, safe)

    def remove() -> None:
        for name in HEADER_PARSING_LOGGERS:
            CHANGES.remove_filter(name, SafeHeaderWarnings)

    return remove
