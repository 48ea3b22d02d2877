"""Incoming trace context: read from the headers, one ``traceparent`` only, the untrusted edge.

``RequestPropagation`` hands the global propagator only the headers it reads, decoded once.

Every request: more than one ``traceparent`` header line is no parent at all (a new trace), as
W3C Trace Context says (``OneTraceparentOnly``).

An untrusted edge: the caller's trace context is linked to, never adopted.

By default a request continues the trace its ``traceparent`` names and keeps its ``baggage``, which
is what services behind a gateway want. A service that faces the internet cannot trust either: a
client can join its requests to any trace id, choose the sampling decision (``-00`` turns tracing
off for its requests), and hand in baggage. With ``OTEL_DIST_TRUST_INCOMING_CONTEXT=false`` the
global propagator's ``extract`` keeps only the caller's span context, aside in the context, and
drops its baggage; the request's SERVER span then starts a new trace (sampled by our own
sampler) and carries a span link to the caller's span, so the two traces stay one click apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, create_key, get_value, set_value
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.trace import Span, SpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_CALLER = create_key("otel_dist.untrusted_caller")
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
LINK_ATTRIBUTES = {"otel_dist.link.reason": "untrusted incoming trace context"}


class WrappingPropagator(TextMapPropagator):
    """A propagator that decides how the wrapped one extracts; it injects like the wrapped one."""

    def __init__(self, inner: TextMapPropagator) -> None:
        self._inner = inner

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        """Our own outgoing calls propagate our trace as usual."""
        self._inner.inject(carrier, context, setter)

    @property
    def fields(self) -> set[str]:
        """The wrapped propagator's header names."""
        return set(self._inner.fields)


class _HidingTraceContext(Getter[CarrierT]):
    """A getter that reads like ``inner`` but finds no ``traceparent`` or ``tracestate``."""

    def __init__(self, inner: Getter[CarrierT]) -> None:
        self._inner = inner

    def get(self, carrier: CarrierT, key: str) -> list[str] | None:
        if key.lower() in (TRACEPARENT, TRACESTATE):
            return None
        return self._inner.get(carrier, key)

    def keys(self, carrier: CarrierT) -> list[str]:
        return [k for k in self._inner.keys(carrier) if k.lower() not in (TRACEPARENT, TRACESTATE)]


class OneTraceparentOnly(WrappingPropagator):
    """A request with more than one ``traceparent`` header line has no valid parent.

    HTTP reads repeated lines of a header as one comma-separated value, and a ``traceparent``
    cannot hold a comma, so W3C Trace Context treats the pair as invalid: the trace restarts
    (and ``tracestate`` goes with it). The SDK propagator would take the first line. Other
    headers (``baggage``) are extracted as usual.
    """

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        """The wrapped propagator's context, without the trace context when it is repeated."""
        lines = getter.get(carrier, TRACEPARENT)
        if lines is not None and len(lines) > 1:
            getter = _HidingTraceContext(getter)
        return self._inner.extract(carrier, context, getter)


class UntrustedEdgePropagator(WrappingPropagator):
    """Extracts the caller's span context for a link only; injects like the wrapped propagator."""

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        """``context`` unchanged but for the caller's span context, kept aside (no baggage)."""
        base = context if context is not None else Context()
        extracted = self._inner.extract(carrier, Context(), getter)
        caller = trace.get_current_span(extracted).get_span_context()
        if not caller.is_valid:
            return base
        return set_value(_CALLER, caller, base)


class LinkUntrustedCaller(SpanProcessor):
    """Adds the link to the caller's span on the root span of an untrusted request."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Link a new root span to the caller kept aside by ``UntrustedEdgePropagator``."""
        if parent_context is None:
            return
        caller: Any = get_value(_CALLER, parent_context)
        if caller is None or trace.get_current_span(parent_context).get_span_context().is_valid:
            return  # not an untrusted request, or a child span inside one
        span.add_link(caller, LINK_ATTRIBUTES)


# Propagators known to read only the headers named in their ``fields``: only those headers are
# decoded into the carrier handed to ``extract``.
_READ_ONLY_THEIR_FIELDS = (TraceContextTextMapPropagator, W3CBaggagePropagator)


class _CarrierGetter(Getter[dict[str, list[str]]]):
    """Header values by lower-case name; repeated ``baggage`` lines joined, as FastAPI does."""

    def get(self, carrier: dict[str, list[str]], key: str) -> list[str] | None:
        values = carrier.get(key.lower())
        if not values:
            return None
        if key.lower() == "baggage":
            return [",".join(values)]
        return values

    def keys(self, carrier: dict[str, list[str]]) -> list[str]:
        return list(carrier)


_GETTER = _CarrierGetter()


def _header_names(propagator: TextMapPropagator) -> frozenset[bytes] | None:
    """The header names ``propagator`` reads, or None when it may read any header."""
    if type(propagator) in _READ_ONLY_THEIR_FIELDS:
        return frozenset(name.lower().encode("latin-1") for name in propagator.fields)
    parts: Iterable[TextMapPropagator] | None = None
    if isinstance(propagator, CompositePropagator):
        parts = vars(propagator).get("_propagators")
    elif isinstance(propagator, WrappingPropagator):
        inner = vars(propagator).get("_inner")
        parts = None if inner is None else [inner]
    if parts is None:
        return None
    names: set[bytes] = set()
    for part in parts:
        part_names = _header_names(part)
        if part_names is None:
            return None
        names |= part_names
    return frozenset(names)


def _starts_empty(propagator: TextMapPropagator) -> bool:
    """True when ``propagator`` extracts a new, empty context from headers without its own.

    Known from the code of the propagators named here (``_header_names`` admits no others):
    without their headers, W3C trace context and the untrusted edge return the context they are
    given, else a new empty one; baggage returns the given context, else the current one; the
    two wrappers and a composite pass the context along, so the first one in line decides.
    """
    if type(propagator) is TraceContextTextMapPropagator or isinstance(
        propagator, UntrustedEdgePropagator
    ):
        return True
    if isinstance(propagator, OneTraceparentOnly):
        inner = vars(propagator).get("_inner")
        return inner is not None and _starts_empty(inner)
    if isinstance(propagator, CompositePropagator):
        parts = list(vars(propagator).get("_propagators") or ())
        return bool(parts) and _starts_empty(parts[0])
    return False


# What a request with none of the propagator's headers continues from, when that is known to be
# a new empty context (the common case: the default propagators, no traceparent). Context is
# immutable, so one instance serves every such request.
_NO_PARENT = Context()


class RequestPropagation:
    """The global propagator (it may be replaced at any time) and the headers it reads."""

    def __init__(self) -> None:
        # (propagator, the headers it reads, whether it starts empty): replaced whole, so a
        # request never pairs one propagator with what was found out about another.
        self._known: tuple[TextMapPropagator | None, frozenset[bytes] | None, bool] = (
            None,
            None,
            False,
        )

    def extract(self, headers: Iterable[tuple[bytes, bytes]]) -> Context:
        """The request's parent context, from ``headers`` by the global propagator."""
        propagator = propagate.get_global_textmap()
        known, names, starts_empty = self._known
        if propagator is not known:
            names = _header_names(propagator)
            starts_empty = names is not None and _starts_empty(propagator)
            self._known = (propagator, names, starts_empty)
        carrier: dict[str, list[str]] = {}
        for name, value in headers:
            if names is None or name in names:
                carrier.setdefault(name.decode("latin-1").lower(), []).append(
                    value.decode("latin-1")
                )
        if not carrier and starts_empty:
            return _NO_PARENT  # what the propagator would build, without running it
        return propagator.extract(carrier, getter=_GETTER)
