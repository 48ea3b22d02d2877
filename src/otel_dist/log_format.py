"""``configure_structlog``: JSON lines for machines, readable lines on a terminal."""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from typing import Any, Literal

import structlog

from otel_dist.settings import option


def _stdout_is_tty() -> bool:
    stream = sys.stdout
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def configure_structlog(
    *, log_format: Literal["auto", "json", "console"] | None = None, level: int = logging.INFO
) -> None:
    """Configure structlog sensibly: JSON lines for machines, readable lines on a terminal.

    ``log_format`` defaults to ``OTEL_DIST_LOG_FORMAT`` (``auto``): ``"auto"`` picks the
    console renderer when stdout is a TTY, JSON otherwise. Events below ``level`` are dropped
    before any processor runs. Output goes to stdout. When log correlation is installed (before
    or after this call), ``inject_trace_ids`` is inserted before the renderer.
    """
    if log_format is None:
        # OTEL_DIST_LOG_FORMAT, validated like every other setting.
        log_format = option("log_format").parse(os.environ.get("OTEL_DIST_LOG_FORMAT") or "auto")
    console = log_format == "console" or (log_format == "auto" and _stdout_is_tty())
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
