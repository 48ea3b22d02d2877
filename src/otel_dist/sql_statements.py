"""What a SQL statement tells its span, and the sqlcommenter ``traceparent`` comment.

The operation and collection name the span (``SELECT items``) and set its attributes.
The statement is the text sent to the driver, with placeholders: no bound value is ever read.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple
from urllib.parse import quote

from opentelemetry import trace
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

_PROPAGATOR = TraceContextTextMapPropagator()


class _Statement(NamedTuple):
    operation: str | None
    collection: str | None

    @property
    def attributes(self) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {}
        if self.operation:
            attributes["db.operation.name"] = self.operation
        if self.collection:
            attributes["db.collection.name"] = self.collection
        return attributes

    @property
    def span_name(self) -> str | None:
        if self.operation and self.collection:
            return f"{self.operation} {self.collection}"
        return self.operation


# String literals and comments can hold anything, keywords included: blank them before parsing.
_LITERALS_AND_COMMENTS = re.compile(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", re.DOTALL)
_OPERATION = re.compile(r"[\s(]*([A-Za-z]+)")
_IDENTIFIER = r'(?:"[^"]+"|`[^`]+`|\[[^\]]+\]|[\w$]+)'
_COLLECTION = re.compile(
    rf"\b(?:FROM|INTO|UPDATE)\s+({_IDENTIFIER}(?:\s*\.\s*{_IDENTIFIER})*)", re.IGNORECASE
)


@functools.lru_cache(maxsize=512)  # SQLAlchemy reuses compiled statements: parse each once
def _describe_statement(statement: str) -> _Statement:
    """Best-effort operation (first keyword) and collection (first table after FROM/INTO/UPDATE)."""
    text = _LITERALS_AND_COMMENTS.sub(" ", statement)
    operation = _OPERATION.match(text)
    collection = _COLLECTION.search(text)
    return _Statement(
        operation.group(1).upper() if operation else None,
        _unquote(collection.group(1)) if collection else None,
    )


def _unquote(name: str) -> str:
    return re.sub(r'["`\[\]]', "", re.sub(r"\s*\.\s*", ".", name))


def _with_traceparent_comment(statement: str, span: Span) -> str:
    """Append the span's trace context as a sqlcommenter comment, before a trailing ``;``."""
    if not span.get_span_context().is_valid:
        return statement
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    # sqlcommenter: sorted key='value' pairs, URL-encoded. quote(safe="") also encodes ' * and /,
    # so no value can end the comment or the quoted string early.
    pairs = ",".join(
        f"{quote(k, safe='')}='{quote(v, safe='')}'" for k, v in sorted(carrier.items())
    )
    body = statement.rstrip()
    if body.endswith(";"):
        return f"{body[:-1]} /*{pairs}*/;"
    return f"{body} /*{pairs}*/"
