"""Request ids: accept a safe incoming id, otherwise generate one; expose it to logs and errors.

The id lives in its own ContextVar (not structlog's contextvars), so it is set and reset exactly
around each request and can coexist with an app's own correlation id.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar, Token

# Letters, digits and . _ : - only: nothing a log line, header or JSON string can be forged with.
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The version (4) and variant (RFC 4122) bits of a UUID4, as uuid.UUID(version=4) sets them.
_UUID4_KEEP = ~(0xC000 << 48) & ~(0xF000 << 64)
_UUID4_SET = (0x8000 << 48) | (4 << 76)

_current: ContextVar[str | None] = ContextVar("otel_dist_request_id", default=None)


def accept_or_generate(incoming: bytes | str | None) -> str:
    """The incoming id when it is safe, else a fresh 32-hex id (the raw value is never echoed)."""
    if incoming is not None:
        text = incoming.decode("latin-1") if isinstance(incoming, bytes) else incoming
        if SAFE_REQUEST_ID.fullmatch(text):
            return text
    return _new_request_id()


def _new_request_id() -> str:
    """A random UUID4 as 32 hex digits: ``uuid.uuid4().hex`` at less than half its cost."""
    return f"{int.from_bytes(os.urandom(16), 'big') & _UUID4_KEEP | _UUID4_SET:032x}"


def current_request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return _current.get()


def bind(request_id: str) -> Token[str | None]:
    """Make ``request_id`` current; pass the token to ``unbind`` when the request ends."""
    return _current.set(request_id)


def unbind(token: Token[str | None]) -> None:
    """Restore the id that was current before ``bind``."""
    _current.reset(token)
