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

# Fresh ids are made this many at a time, from one os.urandom call: a call per request was a
# system call that also released the GIL, letting an export thread in mid-request.
_BATCH = 64

_current: ContextVar[str | None] = ContextVar("otel_dist_request_id", default=None)
# Ids made but not handed out yet. list.pop is atomic, so no two callers get the same one; a
# forked child drops its copy, which its parent hands out too.
_ready: list[str] = []
os.register_at_fork(after_in_child=_ready.clear)


def accept_or_generate(incoming: bytes | str | None) -> str:
    """The incoming id when it is safe, else a fresh 32-hex id (the raw value is never echoed)."""
    if incoming is not None:
        text = incoming.decode("latin-1") if isinstance(incoming, bytes) else incoming
        if SAFE_REQUEST_ID.fullmatch(text):
            return text
    return _new_request_id()


def _new_request_id() -> str:
    """A random UUID4 as 32 hex digits, as ``uuid.uuid4().hex`` (the same OS randomness)."""
    while True:
        try:
            return _ready.pop()
        except IndexError:  # none left (or another thread took the last): make a batch
            _ready.extend(_request_id_batch())


def _request_id_batch() -> list[str]:
    raw = os.urandom(16 * _BATCH)
    return [
        f"{int.from_bytes(raw[at : at + 16], 'big') & _UUID4_KEEP | _UUID4_SET:032x}"
        for at in range(0, len(raw), 16)
    ]


def current_request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return _current.get()


def bind(request_id: str) -> Token[str | None]:
    """Make ``request_id`` current; pass the token to ``unbind`` when the request ends."""
    return _current.set(request_id)


def unbind(token: Token[str | None]) -> None:
    """Restore the id that was current before ``bind``."""
    _current.reset(token)
