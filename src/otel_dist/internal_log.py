"""Where otel-dist reports on itself: the ``otel_dist.internal`` logger, always visible.

Our own warnings (a bad setting, a flush that hit its bound) must reach a human even when the
root logger only has the OTLP handler, and must never be exported over OTLP themselves (logging
about logging). So the logger writes to stderr and does not propagate, unless the app configured
it first. Request errors use ``otel_dist.errors``, which propagates like any app logger.

Every message starts with ``PREFIX`` so a reader can grep our lines out of the app's.
"""

from __future__ import annotations

import logging
import sys

INTERNAL_LOGGER = "otel_dist.internal"
PREFIX = "otel-dist: "


def internal_logger() -> logging.Logger:
    """The logger every otel-dist module reports on (messages start with ``PREFIX``)."""
    return logging.getLogger(INTERNAL_LOGGER)


def make_visible() -> logging.Logger:
    """Give the internal logger a stderr handler unless the app already configured one."""
    logger = internal_logger()
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    return logger
