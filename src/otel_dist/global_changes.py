"""Every process-global change otel-dist makes, registered where it is made, undone in one place.

Patched attributes (``FastAPI.__init__``, ``Pool.connect``, ``structlog.configure``,
``logging.basicConfig``/``dictConfig``, ``Logger.makeRecord``), the log record factory, log
filters, environment variables, signal handlers and at-fork hooks: each is made through
``CHANGES``, which remembers how to undo it, and ``Telemetry.shutdown()`` undoes them all,
newest first (``CHANGES.undo_all()``).

One idempotence rule for all of them: a change is keyed by what it changes (an attribute of an
object, a filter class on a logger, a variable). While a key is registered, making it again
changes nothing and returns False, so configuring twice never stacks a second wrapper; once
undone, it can be made again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Change:
    key: Hashable
    undo: Callable[[], None]


class GlobalChanges:
    """The registry: ``patch``, ``add_filter``, ``set_env_default``, ``register`` and undo."""

    def __init__(self) -> None:
        self._changes: list[_Change] = []
        self._lock = threading.RLock()

    def made(self, key: Hashable) -> bool:
        """True while a change with ``key`` is registered."""
        with self._lock:
            return any(change.key == key for change in self._changes)

    def register(self, key: Hashable, make: Callable[[], Callable[[], None]]) -> bool:
        """Run ``make`` (which returns its undo) unless ``key`` is already changed."""
        with self._lock:
            if self.made(key):
                return False
            self._changes.append(_Change(key, make()))
            return True

    def patch(self, owner: Any, name: str, replacement: Any) -> bool:
        """Replace ``owner.name``; undone only if nobody replaced our replacement since."""
        original = getattr(owner, name)

        def make() -> Callable[[], None]:
            setattr(owner, name, replacement)

            def restore() -> None:
                if getattr(owner, name) is replacement:
                    setattr(owner, name, original)

            return restore

        return self.register(("patch", id(owner), name), make)

    def add_filter(self, logger_name: str, log_filter: logging.Filter) -> bool:
        """Add ``log_filter`` to a logger (one filter of its class per logger)."""
        logger = logging.getLogger(logger_name)
        key = ("filter", logger_name, type(log_filter))
        with self._lock:
            if not any(isinstance(f, type(log_filter)) for f in logger.filters):
                self._forget(key)  # someone reset the logger's filters: ours is gone

            def make() -> Callable[[], None]:
                logger.addFilter(log_filter)
                return lambda: logger.removeFilter(log_filter)

            return self.register(key, make)

    def set_env_default(self, variable: str, value: str) -> bool:
        """Set an environment variable the user did not set; undo removes it again."""

        def make() -> Callable[[], None]:
            if variable in os.environ:
                return lambda: None  # the user's value: never ours to remove
            os.environ[variable] = value
            return lambda: _pop_if(variable, value)

        return self.register(("env", variable), make)

    def at_fork(self, key: Hashable, after_in_child: Callable[[], None]) -> bool:
        """Run ``after_in_child`` in every forked child until undone.

        ``os.register_at_fork`` hooks cannot be removed: the registered hook checks a switch
        that undo turns off.
        """

        def make() -> Callable[[], None]:
            active = [True]

            def hook() -> None:
                if active[0]:
                    after_in_child()

            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=hook)
            return lambda: active.__setitem__(0, False)

        return self.register(("at fork", key), make)

    def unpatch(self, owner: Any, name: str) -> None:
        """Undo ``patch(owner, name, ...)``."""
        self.undo(("patch", id(owner), name))

    def remove_filter(self, logger_name: str, filter_type: type[logging.Filter]) -> None:
        """Undo ``add_filter(logger_name, <a filter_type>)``."""
        self.undo(("filter", logger_name, filter_type))

    def _forget(self, key: Hashable) -> None:
        self._changes = [change for change in self._changes if change.key != key]

    def undo(self, key: Hashable) -> None:
        """Undo the change registered with ``key`` (nothing if there is none)."""
        with self._lock:
            found = [change for change in self._changes if change.key == key]
            self._changes = [change for change in self._changes if change.key != key]
        for change in reversed(found):
            change.undo()

    def undo_all(self) -> None:
        """Undo every registered change, newest first."""
        with self._lock:
            changes, self._changes = self._changes, []
        for change in reversed(changes):
            change.undo()


def _pop_if(variable: str, value: str) -> None:
    if os.environ.get(variable) == value:
        del os.environ[variable]


CHANGES = GlobalChanges()
"""The one registry of the process."""
