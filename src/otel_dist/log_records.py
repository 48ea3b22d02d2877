"""What a log record carries out of the process: scrubbed fields, and its OTLP export.

The structlog processor and the stdlib handler that export records, and the scrubbing of event
dicts and records; ``logs`` wires them in.
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry._logs import Logger, NoOpLogger
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.instrumentation.structlog import StructlogProcessor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.util.types import AnyValue

from otel_dist.internal_log import INTERNAL_LOGGER, internal_logger
from otel_dist.scrub import Scrubber

_logger = internal_logger()

# Carried by the OTLP LogRecord itself (context, resource): not repeated as attributes.
_CONTEXT_KEYS = frozenset({"trace_id", "span_id", "trace_flags", "service_name", "service.name"})
# Loggers whose records must not be exported over OTLP: exporting them would log about logging.
# (``otel_dist.errors``, the unhandled-request-exception log, is exported like any app log.)
_OWN_LOGGERS = ("opentelemetry", INTERNAL_LOGGER)
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_TRACEBACK_FORMATTER = logging.Formatter()
# Logger names are few in an app; a bound keeps a name-per-request app from growing memory.
_LOGGER_CACHE_LIMIT = 1024

# Set by the structlog OTLP processor when the event is about to reach a stdlib logger, and
# consumed by the record factory: that record was already exported and is marked to be skipped.
_structlog_record_pending: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "otel_dist_structlog_record_pending", default=None
)


_warned: set[str] = set()

# The event dict ``inject_trace_ids`` scrubbed last. The OTLP processor comes right after it in
# the chain: finding the same dict there, it scrubs only the attributes it added itself (the
# exception's), not every value a second time. Compared by identity and held until then, so a
# dict is never mistaken for another; another thread's event in between only means a full scrub.
_scrubbed_event: object = None


def note_scrubbed(event_dict: MutableMapping[str, Any]) -> None:
    """Record that ``event_dict``'s keys and values were just scrubbed."""
    global _scrubbed_event  # noqa: PLW0603 - a one-entry handover to the next processor
    _scrubbed_event = event_dict


def _was_scrubbed(event_dict: Mapping[str, Any]) -> bool:
    global _scrubbed_event  # noqa: PLW0603
    scrubbed = _scrubbed_event is event_dict
    _scrubbed_event = None
    return scrubbed


def _warn_once(where: str) -> None:
    """Report an internal failure once; logging must go on without our addition."""
    if where in _warned:
        return
    _warned.add(where)
    _logger.warning("otel-dist: %s failed; continuing without it", where, exc_info=True)


class _ScrubbedStructlogProcessor(StructlogProcessor):
    """The contrib processor, minus context keys in attributes and with scrubbed exceptions.

    The event keys are already scrubbed by ``inject_trace_ids``; the exception attributes are
    formatted here from ``exc_info``, so they are scrubbed here.
    """

    def __init__(self, logger_provider: LoggerProvider, scrubber: Scrubber) -> None:
        super().__init__(logger_provider=logger_provider)  # type: ignore[no-untyped-call]
        self._scrubber = scrubber
        self._provider = logger_provider
        # OTel logger per structlog logger name: the provider's lookup takes a lock every time.
        self._loggers: dict[str, Logger] = {}

    def __call__(self, logger: Any, method_name: str, event_dict: dict[Any, Any]) -> dict[Any, Any]:
        try:
            # As the contrib processor does, with the OTel logger looked up once per name.
            name = getattr(logger, "name", StructlogProcessor.__module__)
            otel_logger = self._loggers.get(name)
            if otel_logger is None:
                otel_logger = self._provider.get_logger(name)
                if len(self._loggers) < _LOGGER_CACHE_LIMIT:
                    self._loggers[name] = otel_logger
            if not isinstance(otel_logger, NoOpLogger):
                otel_logger.emit(self._translate(event_dict, method_name))
            if isinstance(logger, logging.Logger) and logger.isEnabledFor(
                _LEVELS.get(method_name, logging.NOTSET)
            ):
                _structlog_record_pending.set(logger.name)
        except Exception:
            _warn_once("structlog OTLP export")
        return event_dict

    # The contrib declares it a staticmethod but calls it as self._get_attributes(event_dict).
    def _get_attributes(self, event_dict: dict[Any, Any]) -> dict[str, Any]:  # type: ignore[override]
        attributes = StructlogProcessor._get_attributes(event_dict)
        for key in _CONTEXT_KEYS.intersection(attributes):
            del attributes[key]
        if _was_scrubbed(event_dict):
            return self._scrub_added(attributes, event_dict)
        return self._scrubber.attributes(attributes) or attributes

    def _scrub_added(
        self, attributes: dict[str, Any], event_dict: dict[Any, Any]
    ) -> dict[str, Any]:
        """Scrub the attributes that are not the (already scrubbed) event's own values."""
        added = {
            key: value
            for key, value in attributes.items()
            if key not in event_dict or event_dict[key] is not value
        }
        scrubbed = self._scrubber.attributes(added)
        if scrubbed is not None:
            attributes.update(scrubbed)
        return attributes


class _OtlpLogHandler(LoggingHandler):
    """The contrib OTLP handler for stdlib records that structlog did not already export."""

    def __init__(self, logger_provider: LoggerProvider, scrubber: Scrubber) -> None:
        super().__init__(level=logging.NOTSET, logger_provider=logger_provider)
        self._scrubber = scrubber

    def emit(self, record: logging.LogRecord) -> None:
        """Export ``record`` unless it came from structlog or from OTel / otel_dist itself."""
        if getattr(record, "_from_structlog", False) or isinstance(record.msg, dict):
            return
        if record.name.startswith(_OWN_LOGGERS):
            return
        try:
            super().emit(record)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Flush as the contrib handler does; at interpreter exit, leave it to the exit hook.

        ``logging.shutdown()`` flushes every handler at exit, and the contrib handler flushes on
        a new thread, which Python 3.12+ refuses to start then. otel-dist's exit hook, which
        runs before logging's, has already flushed and shut the logger provider down.
        """
        try:
            super().flush()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            return

    def _get_attributes(self, record: logging.LogRecord) -> tuple[dict[str, AnyValue], str | None]:
        attributes: dict[str, AnyValue]
        # The record factory already formatted and scrubbed the traceback: reuse it rather than
        # formatting and scrubbing it a second time (the costliest part of a 500). Without the
        # traceback object the contrib handler still sets exception.type and .message.
        exc_info = record.exc_info
        stacktrace = record.exc_text if exc_info and record.exc_text else None
        if stacktrace is not None and exc_info:
            exc_type, exc_value, _ = exc_info
            if exc_type is not None and exc_value is not None:
                record.exc_info = (exc_type, exc_value, None)
        try:
            attributes, event_name = super()._get_attributes(record)
        finally:
            record.exc_info = exc_info
        for key in _CONTEXT_KEYS.intersection(attributes):
            del attributes[key]
        attributes.pop("_from_structlog", None)
        if attributes.get("request_id") == "":
            del attributes["request_id"]
        if stacktrace is not None:
            attributes.pop("exception.stacktrace", None)
        scrubbed = self._scrubber.attributes(attributes) or attributes
        if stacktrace is not None:
            scrubbed["exception.stacktrace"] = stacktrace
        return scrubbed, event_name


def _scrub_record(record: logging.LogRecord, scrubber: Scrubber) -> None:
    args = record.args
    if args:
        if isinstance(args, Mapping):
            record.args = scrubber.mapping(args)
        else:
            record.args = tuple(scrubber.text(a) if isinstance(a, str) else a for a in args)
    msg = record.msg
    if isinstance(msg, str):
        scrubbed = scrubber.text(msg)
        if scrubbed != msg:
            if record.args:
                # The template itself held a secret ("token=%s"): its placeholders may be gone,
                # so render the message once and keep the scrubbed result.
                try:
                    scrubbed = scrubber.text(record.getMessage())
                    record.args = ()
                except (TypeError, ValueError, KeyError):
                    pass  # the app's own format error; the stdlib reports it when formatting
            record.msg = scrubbed
    if record.exc_info and not record.exc_text:
        record.exc_text = scrubber.text(_TRACEBACK_FORMATTER.formatException(record.exc_info))
