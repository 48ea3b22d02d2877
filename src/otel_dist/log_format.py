"""``configure_structlog``: JSON lines for machines, readable lines on a terminal.

The format is the ``log_format`` setting: ``configure(log_format=...)`` beats
``OTEL_DIST_LOG_FORMAT``, which beats ``auto``. ``configure()`` hands its resolved value here
(``use_configured_format``), before or after the app called ``configure_structlog``: called
before, its structlog configuration is redone in the configured format.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import structlog

from otel_dist.options import LogFormat
from otel_dist.settings import option

# The format configure() resolved (None: configure() has not run, read the environment).
_configured: LogFormat | None = None
# What the app's last configure_structlog() call asked for: (format given or None, level).
_applied: tuple[LogFormat | None, int] | None = None


def _stdout_is_tty() -> bool:
    stream = sys.stdout
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def use_configured_format(log_format: LogFormat) -> Callable[[], None]:
    """Make ``log_format`` the default of ``configure_structlog``; returns the undo.

    If the app already called ``configure_structlog`` without a format, it is applied again now,
    so the setting reaches structlog whichever call came first.
    """
    global _configured  # noqa: PLW0603 - the one value configure() hands down
    previous = _configured
    _configured = log_format
    if _applied is not None and _applied[0] is None:
        configure_structlog(level=_applied[1])

    def undo() -> None:
        global _configured  # noqa: PLW0603
        _configured = previous

    return undo


def _default_format() -> LogFormat:
    if _configured is not None:
        return _configured
    # OTEL_DIST_LOG_FORMAT, validated like every other setting.
    parsed: LogFormat = option("log_format").parse(os.environ.get("OTEL_DIST_LOG_FORMAT") or "auto")
    return parsed


def configure_structlog(*, log_format: LogFormat | None = None, level: int = logging.INFO) -> None:
    """Configure structlog sensibly: JSON lines for machines, readable lines on a terminal.

    ``log_format`` defaults to the ``log_format`` setting (``configure(log_format=...)``, else
    ``OTEL_DIST_LOG_FORMAT``, else ``auto``): ``"auto"`` picks the console renderer when stdout
    is a TTY, JSON otherwise. Events below ``level`` are dropped before any processor runs.
    Output goes to stdout. When log correlation is installed (before or after this call),
    ``inject_trace_ids`` is inserted before the renderer.
    """
    global _applied  # noqa: PLW0603 - remembered so configure() can apply its format later
    _applied = (log_format, level)
    chosen = _default_format() if log_format is None else log_format
    console = chosen == "console" or (chosen == "auto" and _stdout_is_tty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer(colors=_stdout_is_tty()))
    else:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(),
    )
