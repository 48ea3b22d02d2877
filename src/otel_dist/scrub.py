"""Redaction of secrets before anything is rendered or exported.

Two rules, both cheap enough for the request path:

* a mapping key that matches a sensitive pattern (``password``, ``authorization``, ``api_key``...)
  has its whole value replaced;
* inside free text (log messages, URLs, query strings, exception messages) a ``key=value`` or
  ``key: value`` pair whose key matches has its value replaced, and so has a ``Bearer``/``Basic``
  credential.

The marker never echoes what matched (Logfire #1909 leaked custom-pattern matches that way).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Key fragments that mark a value as secret. `auth(?!ors?\b)` keeps "author(s)" readable.
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"passw(?:or)?d",
    r"pwd",
    r"secret",
    r"token",
    r"auth(?!ors?\b)",
    r"credential",
    r"api[._ -]?key",
    r"private[._ -]?key",
    r"access[._ -]?key",
    r"session",
    r"cookie",
    r"csrf",
    r"xsrf",
    r"jwt",
    r"signature",
    r"credit[._ -]?card",
    r"card[._ -]?number",
    r"\bssn\b",
)

# Attribute keys whose values are structure, never secrets: scrubbing them would hide the very
# thing users look for (and they carry no key=value secrets by construction).
SAFE_KEYS = frozenset(
    {
        "http.route",
        "http.request.method",
        "http.response.status_code",
        "url.scheme",
        "db.system.name",
        "db.operation.name",
        "db.collection.name",
        "code.function.name",
        "error.type",
        "exception.type",
        "trace_id",
        "span_id",
        "trace_flags",
        "request_id",
        "level",
        "logger",
        "timestamp",
    }
)


class Scrubber:
    """Redacts sensitive keys and ``key=value`` secrets; built once from the settings."""

    def __init__(self, extra_patterns: Iterable[str] = (), *, enabled: bool = True) -> None:
        self.enabled = enabled
        patterns = (*DEFAULT_PATTERNS, *extra_patterns)
        alternatives = "|".join(f"(?:{p})" for p in patterns)
        self._key = re.compile(alternatives, re.IGNORECASE)
        # key, separator (=, :, with optional quotes), then the value up to a delimiter.
        # Every ``key=value`` / ``"key": "value"`` pair; whether the key is sensitive is decided
        # per match by the (cached) key regex. Starting only where a key can start keeps this
        # linear: a key alternation with a free prefix made long lines cost ~0.5 ms each.
        # The value is only looked at, not consumed, so "login: password: x" still finds the
        # second pair after the first.
        self._pair = re.compile(
            rf"""(?<![\w.-])([\w.-]+)["']?\s*[=:]\s*["']?"""
            rf"""(?=(?!{re.escape(REDACTED)})([^\s"'&,;}}\]]+))"""
        )
        self._credential = re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]{4,}", re.I)
        self._cache: dict[str, bool] = {}

    def is_sensitive_key(self, key: str) -> bool:
        """True when a value stored under ``key`` must be redacted whole."""
        if not self.enabled or key in SAFE_KEYS:
            return False
        cached = self._cache.get(key)
        if cached is None:
            cached = self._key.search(key) is not None
            if len(self._cache) < 4096:
                self._cache[key] = cached
        return cached

    def text(self, value: str) -> str:
        """Redact ``key=value`` secrets and bearer credentials inside free text."""
        if not self.enabled:
            return value
        if "=" not in value and ":" not in value and " " not in value:
            return value
        # Credentials first: "Authorization: Bearer x" must lose x, not just the word Bearer.
        if " " in value:
            value = self._credential.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
        return self._redact_pairs(value)

    def _redact_pairs(self, text: str) -> str:
        pieces: list[str] = []
        done = 0  # everything before this index is settled
        for match in self._pair.finditer(text):
            if match.start() < done or not self.is_sensitive_key(match.group(1)):
                continue
            pieces += [text[done : match.start(2)], REDACTED]
            done = match.end(2)
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    def value(self, value: Any) -> Any:
        """Scrub a value of unknown shape: strings, mappings and sequences recursively."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return self.mapping(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(item) for item in value)
        return value

    def mapping(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``values`` with sensitive keys redacted and free text scrubbed."""
        return {
            key: REDACTED if self.is_sensitive_key(str(key)) else self.value(item)
            for key, item in values.items()
        }

    def attributes(self, attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """Scrub span/log attributes; returns None when nothing changed (no copy needed)."""
        if not self.enabled or not attributes:
            return None
        changed = False
        result: dict[str, Any] = {}
        for key, item in attributes.items():
            new = REDACTED if self.is_sensitive_key(key) else self.value(item)
            changed = changed or new != item
            result[key] = new
        return result if changed else None
