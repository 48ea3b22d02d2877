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
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any

from opentelemetry.attributes import BoundedAttributes

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


def _separators(text: str) -> Iterator[int]:
    """Indexes of every ``=`` and ``:`` in ``text``, in order (two C-speed scans)."""
    equals, colon = text.find("="), text.find(":")
    while equals >= 0 or colon >= 0:
        if colon < 0 or 0 <= equals < colon:
            yield equals
            equals = text.find("=", equals + 1)
        else:
            yield colon
            colon = text.find(":", colon + 1)


def _may_hold_credential(text: str) -> bool:
    """False only when ``text`` holds none of Bearer, Basic, Token in any case.

    ``casefold`` maps every character that case-insensitive matching equates with the letters
    of those words to that letter, except the Turkish dotted and dotless i, listed here.
    """
    folded = text.casefold()
    return any(word in folded for word in _CREDENTIAL_WORDS)


_CREDENTIAL_WORDS = ("bearer", "token", "basic", "bas\u0131c", "basi\u0307c")
# The key before a separator, matched on the reversed text from the separator back: optional
# spaces, an optional quote, then the whole run of [\w.-] (\w: a letter, digit or underscore in
# any script, as str.isalnum() or "_"; \s as str.isspace()).
_KEY_BACKWARDS = re.compile(r"""\s*["']?([\w.-]*)""")


class Scrubber:
    """Redacts sensitive keys and ``key=value`` secrets; built once from the settings."""

    def __init__(self, extra_patterns: Iterable[str] = (), *, enabled: bool = True) -> None:
        self.enabled = enabled
        patterns = (*DEFAULT_PATTERNS, *extra_patterns)
        alternatives = "|".join(f"(?:{p})" for p in patterns)
        self._key = re.compile(alternatives, re.IGNORECASE)
        # A ``key=value`` / ``"key": "value"`` pair: a key of [\w.-] characters (the whole run),
        # an optional quote, optional spaces, the separator (= or :), optional spaces and quote,
        # then the value up to a delimiter. Pairs are found from their separators (see
        # ``_redact_pairs``); this matches the value after one. Whether the key is sensitive is
        # decided by the (cached) key regex. The value is only looked at, not consumed, so
        # "login: password: x" still finds the second pair after the first.
        self._value = re.compile(rf"""\s*["']?(?!{re.escape(REDACTED)})([^\s"'&,;}}\]]+)""")
        self._credential = re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]{4,}", re.I)
        # Whether a key is sensitive, per key seen (safe keys known up front).
        self._cache: dict[str, bool] = dict.fromkeys(SAFE_KEYS, False)

    def is_sensitive_key(self, key: str) -> bool:
        """True when a value stored under ``key`` must be redacted whole."""
        if not self.enabled:
            return False
        cached = self._cache.get(key)  # safe keys are in it from the start
        if cached is None:
            cached = self._key.search(key) is not None
            if len(self._cache) < 4096:
                self._cache[key] = cached
        return cached

    def text(self, value: str) -> str:
        """Redact ``key=value`` secrets and bearer credentials inside free text."""
        if not self.enabled:
            return value
        pairs = "=" in value or ":" in value
        # Credentials first: "Authorization: Bearer x" must lose x, not just the word Bearer.
        if " " in value and _may_hold_credential(value):
            value = self._credential.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
        return self._redact_pairs(value) if pairs else value

    def _redact_pairs(self, text: str) -> str:
        """Redact the values of sensitive ``key=value`` pairs, found from their separators.

        The same pairs, left to right, as a regex with the key first would find, at a fraction
        of the cost on long text such as tracebacks: separators are few, and each needs only a
        look at the few characters before and after it.
        """
        pieces: list[str] = []
        done = 0  # everything before this index is settled
        backwards = text[::-1]  # what precedes a separator, read from it: one regex match
        end = len(text)
        for at in _separators(text):
            key = _KEY_BACKWARDS.match(backwards, end - at)
            if key is None:  # pragma: no cover - every part of the pattern is optional
                continue
            key_start, key_end = end - key.end(1), end - key.start(1)
            if key_start == key_end or key_start < done:
                continue
            if not self.is_sensitive_key(text[key_start:key_end]):
                continue
            value = self._value.match(text, at + 1)
            if value is None:
                continue
            pieces += [text[done : value.start(1)], REDACTED]
            done = value.end(1)
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

    def scrub_in_place(self, values: MutableMapping[str, Any]) -> None:
        """Redact sensitive keys and scrub free text in ``values`` itself (a structlog event).

        Runs for every structlog event: a cache lookup per key, and text scrubbed only when it
        could hold a pair or a credential. Numbers, None and other objects stay as they are.
        """
        if not self.enabled:
            return
        cache = self._cache
        for key, value in tuple(values.items()):
            sensitive = cache.get(key)
            if sensitive is None:
                sensitive = self.is_sensitive_key(key)
            if sensitive:
                values[key] = REDACTED
            elif type(value) is str:
                if "=" in value or ":" in value or " " in value:  # else text() returns it as is
                    values[key] = self.text(value)
            elif value is None or isinstance(value, (int, float)):
                continue  # the common non-text values, without the costlier ABC checks below
            elif isinstance(value, str):
                values[key] = self.text(value)
            elif isinstance(value, (Mapping, list, tuple)):
                values[key] = self.value(value)

    def attributes(self, attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """Scrub span/log attributes; returns None when nothing changed (no copy needed).

        Runs for every exported span and log record, so the common case (no secret, mostly
        short strings and numbers) is kept to one dict copy and a cache lookup per key.
        """
        if not self.enabled or not attributes:
            return None
        # BoundedAttributes (span, event and log attributes; a finished span hands them out in a
        # MappingProxyType) iterates key by key under its lock; copy() is one plain dict copy,
        # which is also the result when something changes.
        values: dict[str, Any]
        if isinstance(attributes, (BoundedAttributes, MappingProxyType)):
            copied = attributes.copy()
            values = copied if isinstance(copied, dict) else dict(copied)
        else:
            values = dict(attributes)
        cache = self._cache
        changed = False
        for key, item in values.items():
            sensitive = cache.get(key)
            if sensitive is None:
                sensitive = self.is_sensitive_key(key)
            if sensitive:
                new: Any = REDACTED
            elif type(item) is str:
                if "=" not in item and ":" not in item and " " not in item:
                    continue  # no pair and no credential: text() would return it as is
                new = self.text(item)
            elif isinstance(item, (int, float)):  # bool is an int
                continue
            else:
                new = self.value(item)
            if new is not item and new != item:
                values[key] = new  # an existing key: safe while iterating
                changed = True
        return values if changed else None
