"""A span context's ids in hex, formatted once for every place that shows them.

A request's span context is shown in its ``traceresponse`` header and again in each of its log
lines (structlog's event and the stdlib record under it): the last one formatted is kept.
"""

from __future__ import annotations

from opentelemetry.trace import SpanContext

# The last span context formatted, with its ids. Replaced whole by one assignment, so a thread
# never reads half of it; threads that interleave only format again.
_last: tuple[SpanContext, tuple[str, str, str]] | None = None


def hex_ids(context: SpanContext) -> tuple[str, str, str]:
    """``context``'s trace id, span id and trace flags: 32, 16 and 2 lower-case hex digits."""
    global _last  # noqa: PLW0603 - the one-entry cache
    last = _last
    if last is not None and last[0] is context:
        return last[1]
    ids = (f"{context.trace_id:032x}", f"{context.span_id:016x}", f"{context.trace_flags:02x}")
    _last = (context, ids)
    return ids


def traceparent(context: SpanContext) -> str:
    """The W3C ``traceparent`` value naming ``context`` (its real sampled flag)."""
    trace_id, span_id, flags = hex_ids(context)
    return f"00-{trace_id}-{span_id}-{flags}"
