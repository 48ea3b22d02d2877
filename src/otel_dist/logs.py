"""Trace ids in every log line, secrets out of it, and OTLP export for structlog and stdlib logs.

``install_log_correlation`` changes three things, all undone by ``LogCorrelation.uninstall``:

* **structlog**: ``inject_trace_ids`` (and, with a logger provider, the contrib
  ``StructlogProcessor`` right after it) is inserted into the current processor chain just before
  the last processor, which is assumed to be the renderer (``JSONRenderer``, ``ConsoleRenderer``,
  ``ProcessorFormatter.wrap_for_formatter``...). ``structlog.configure``, ``configure_once`` and
  ``reset_defaults`` are wrapped so a later call by the app keeps them there, exactly once.
* **stdlib logging**: a LogRecord factory adds ``trace_id``, ``span_id``, ``trace_flags``,
  ``service_name`` and ``request_id`` (empty strings when absent, so ``%(trace_id)s`` never fails)
  and scrubs the message, its string arguments and the traceback (pre-rendered into ``exc_text``).
  ``Logger.makeRecord`` is wrapped to scrub ``extra=`` and so that an app passing one of those
  names in ``extra=`` keeps its value instead of getting the stdlib's "Attempt to overwrite"
  KeyError.
* **OTLP** (only with a logger provider): one handler on the root logger exports stdlib records,
  except those structlog already exported and the ``opentelemetry``/``otel_dist`` loggers' own.
  Any other ``StructlogProcessor`` in the chain is dropped (it would export every event twice).
  Attributes are scrubbed and omit the ids and service name, which the OTLP record carries in
  its own context and resource.
  ``logging.basicConfig``, ``logging.config.dictConfig`` and ``fileConfig`` are wrapped to put it
  back after they reset the root handlers. Levels are never changed: the handler sees what the
  root logger's handlers see.

Known limits:

* loggers already assembled before install (``cache_logger_on_first_use=True`` after their first
  call) keep their old processor chain, and so do chains passed explicitly to ``wrap_logger``;
* ``configure``/``reset_defaults`` references taken before install (``from structlog import
  configure``) and ``structlog.stdlib.recreate_defaults`` bypass the wrappers;
* ``ProcessorFormatter`` renders foreign (stdlib) records through its own ``foreign_pre_chain``:
  add ``inject_trace_ids`` there to get ids as event keys (the record attributes are set anyway);
* only string ``args`` are scrubbed (a ``%d`` must stay a number), and formatters that render
  ``exc_info`` themselves instead of using ``exc_text`` (e.g. python-json-logger) bypass the
  traceback scrubbing; the OTLP exports are scrubbed either way.
"""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.instrumentation.structlog import StructlogProcessor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.trace import get_current_span

from otel_dist.fastapi.request_id import current_request_id
from otel_dist.global_changes import CHANGES
from otel_dist.internal_log import internal_logger
from otel_dist.log_format import configure_structlog
from otel_dist.log_records import (
    _OtlpLogHandler,
    _scrub_record,
    _ScrubbedStructlogProcessor,
    _structlog_record_pending,
    _warn_once,
    note_scrubbed,
)
from otel_dist.scrub import Scrubber
from otel_dist.span_ids import hex_ids

__all__ = ["LogCorrelation", "configure_structlog", "inject_trace_ids", "install_log_correlation"]

_logger = internal_logger()

# What the record factory adds; `extra=` may set them too (the app's value wins).
_RECORD_FACTORY = ("log record factory",)
_RECORD_FIELDS = frozenset({"trace_id", "span_id", "trace_flags", "service_name", "request_id"})


@dataclass(frozen=True)
class _State:
    service_name: str
    scrubber: Scrubber | None  # None when scrubbing is disabled: skip the loop entirely
    add_ids: bool = True  # False: OTEL_DIST_LOG_CORRELATION=false, export and scrub only


_state: _State | None = None
_installed: LogCorrelation | None = None


def inject_trace_ids(
    logger: Any,  # noqa: ARG001
    method_name: str,  # noqa: ARG001
    event_dict: MutableMapping[str, Any],
) -> MutableMapping[str, Any]:
    """Structlog processor: add the current trace ids, service name and request id, then scrub.

    Ids come from the OTel context at log time and are added whenever the span context is valid,
    sampled or not (``trace_flags`` says which): an unsampled request still has a trace id that
    shows up in ``traceparent`` headers and error bodies. Keys the app set itself win. Sensitive
    keys are redacted and string values scrubbed, so nothing after this processor (renderer, OTLP
    export) sees a secret. Never raises.
    """
    try:
        state = _state
        if state is None or state.add_ids:
            _add_ids(event_dict)
        if state is not None:
            if state.add_ids:
                event_dict.setdefault("service.name", state.service_name)
            if state.scrubber is not None:
                state.scrubber.scrub_in_place(event_dict)
                note_scrubbed(event_dict)
    except Exception:
        _warn_once("inject_trace_ids")
    return event_dict


def _add_ids(event_dict: MutableMapping[str, Any]) -> None:
    context = get_current_span().get_span_context()
    if context.is_valid:
        trace_id, span_id, trace_flags = hex_ids(context)
        event_dict.setdefault("trace_id", trace_id)
        event_dict.setdefault("span_id", span_id)
        event_dict.setdefault("trace_flags", trace_flags)
    request_id = current_request_id()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)


class LogCorrelation:
    """The changes made by ``install_log_correlation``; ``uninstall`` undoes them.

    Wrappers stay harmless when something else wrapped them after us: once uninstalled they
    only pass calls through.
    """

    def __init__(
        self,
        *,
        service_name: str,
        scrubber: Scrubber,
        logger_provider: LoggerProvider | None,
        add_ids: bool = True,
    ) -> None:
        self._state = _State(service_name, scrubber if scrubber.enabled else None, add_ids)
        self._scrubber = self._state.scrubber
        self._active = False
        self._patches: list[tuple[Any, str]] = []
        self._structlog_otlp: _ScrubbedStructlogProcessor | None = None
        self._handler: _OtlpLogHandler | None = None
        if logger_provider is not None:
            self._structlog_otlp = _ScrubbedStructlogProcessor(logger_provider, scrubber)
            self._handler = _OtlpLogHandler(logger_provider, scrubber)
        self._structlog_configured_by_app = False
        # What we wrap, captured at install time.
        self._configure: Callable[..., None]
        self._configure_once: Callable[..., None]
        self._reset_defaults: Callable[[], None]
        self._previous_factory: Callable[..., logging.LogRecord]
        self._factory = self._record_factory  # one bound method, so `is` finds it again

    def _install(self) -> None:
        global _state  # noqa: PLW0603
        self._configure = structlog.configure
        self._configure_once = structlog.configure_once
        self._reset_defaults = structlog.reset_defaults
        self._active = True
        _state = self._state
        self._install_structlog()
        self._previous_factory = logging.getLogRecordFactory()
        CHANGES.register(_RECORD_FACTORY, self._set_record_factory)
        self._patch(logging.Logger, "makeRecord", self._wrap_make_record(logging.Logger.makeRecord))
        if self._handler is not None:
            self._install_handler(self._handler)

    def uninstall(self) -> None:
        """Remove our processors, factory and handler and restore what we wrapped. Idempotent."""
        global _state, _installed  # noqa: PLW0603
        if not self._active:
            return
        self._active = False
        if _state is self._state:
            _state = None
        if _installed is self:
            _installed = None
        processors = [p for p in structlog.get_config()["processors"] if not self._is_ours(p)]
        if self._structlog_configured_by_app:
            self._configure(processors=processors)
        else:
            self._reset_defaults()
        CHANGES.undo(_RECORD_FACTORY)
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
        for owner, name in reversed(self._patches):
            CHANGES.unpatch(owner, name)
        self._patches.clear()

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        if CHANGES.patch(owner, name, replacement):
            self._patches.append((owner, name))

    def _set_record_factory(self) -> Callable[[], None]:
        logging.setLogRecordFactory(self._factory)

        def restore() -> None:
            if logging.getLogRecordFactory() is self._factory:
                logging.setLogRecordFactory(self._previous_factory)

        return restore

    # structlog ---------------------------------------------------------------------------------

    def _install_structlog(self) -> None:
        self._structlog_configured_by_app = structlog.is_configured()
        self._configure(processors=self._with_ours(structlog.get_config()["processors"]))
        self._patch(structlog, "configure", self._patched_configure)
        self._patch(structlog, "configure_once", self._patched_configure_once)
        self._patch(structlog, "reset_defaults", self._patched_reset_defaults)

    def _is_ours(self, processor: object) -> bool:
        return processor is inject_trace_ids or (
            self._structlog_otlp is not None and processor is self._structlog_otlp
        )

    def _with_ours(self, processors: Iterable[Any]) -> list[Any]:
        """``processors`` with ours before the renderer (or where the app put ``inject_trace_ids``).

        When we export, other ``StructlogProcessor`` instances are dropped: they would export each
        event a second time, unscrubbed. Otherwise ours go before the first of them, so their
        export carries the ids and scrubbed values.
        """
        chain = [
            p
            for p in processors
            if not (self._structlog_otlp is not None and isinstance(p, StructlogProcessor))
        ]
        ours: list[Any] = []
        inject_at = next((i for i, p in enumerate(chain) if p is inject_trace_ids), None)
        if inject_at is not None:
            at = inject_at + 1
        else:
            at = max(len(chain) - 1, 0)
            foreign = (i for i, p in enumerate(chain[:at]) if isinstance(p, StructlogProcessor))
            at = next(foreign, at)
            ours.append(inject_trace_ids)
        if self._structlog_otlp is not None:
            ours.append(self._structlog_otlp)
        chain[at:at] = ours
        return chain

    def _with_ours_in_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        try:
            if kwargs.get("processors") is not None:
                kwargs["processors"] = self._with_ours(kwargs["processors"])
            elif args and args[0] is not None:
                args = (self._with_ours(args[0]), *args[1:])
        except Exception:
            _warn_once("inserting the trace id processor")
        return args, kwargs

    def _patched_configure(self, *args: Any, **kwargs: Any) -> None:
        if self._active:
            self._structlog_configured_by_app = True
            args, kwargs = self._with_ours_in_call(args, kwargs)
        self._configure(*args, **kwargs)

    def _patched_configure_once(self, *args: Any, **kwargs: Any) -> None:
        # Our own configure() at install made structlog "configured": the app's first
        # configure_once() must still apply, with our processors in its chain.
        if self._active and not self._structlog_configured_by_app:
            self._structlog_configured_by_app = True
            args, kwargs = self._with_ours_in_call(args, kwargs)
            self._configure(*args, **kwargs)
            return
        self._configure_once(*args, **kwargs)

    def _patched_reset_defaults(self) -> None:
        self._reset_defaults()
        if self._active:
            self._structlog_configured_by_app = False
            self._configure(processors=self._with_ours(structlog.get_config()["processors"]))

    # stdlib logging ----------------------------------------------------------------------------

    def _record_factory(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self._previous_factory(*args, **kwargs)
        if self._active:
            try:
                self._correlate(record)
            except Exception:
                _warn_once("log record correlation")
        return record

    def _correlate(self, record: logging.LogRecord) -> None:
        fields = record.__dict__
        context = get_current_span().get_span_context()
        if context.is_valid and self._state.add_ids:
            fields["trace_id"], fields["span_id"], fields["trace_flags"] = hex_ids(context)
        else:
            fields["trace_id"] = fields["span_id"] = fields["trace_flags"] = ""
        fields["service_name"] = self._state.service_name
        fields["request_id"] = (current_request_id() or "") if self._state.add_ids else ""
        pending = _structlog_record_pending.get()
        if pending is not None and pending == record.name:
            _structlog_record_pending.set(None)
            fields["_from_structlog"] = True
        if self._scrubber is not None and not fields.get("_from_structlog"):
            # A structlog line was scrubbed as an event dict before it was rendered.
            _scrub_record(record, self._scrubber)

    def _wrap_make_record(self, original: Callable[..., logging.LogRecord]) -> Callable[..., Any]:
        """``Logger.makeRecord`` scrubbing ``extra=`` and letting it set our field names.

        The stdlib raises KeyError when ``extra`` names an attribute the factory already set:
        ``extra={"request_id": ...}`` must keep working, and keep the app's value.
        """

        def make_record(logger: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
            # Signature: (name, level, fn, lno, msg, args, exc_info, func, extra, sinfo).
            positional = len(args) > 8
            extra = args[8] if positional else kwargs.get("extra")
            if not extra or not self._active:
                return original(logger, *args, **kwargs)
            try:
                if self._scrubber is not None:
                    extra = self._scrubber.mapping(extra)
                ours = {key: extra[key] for key in _RECORD_FIELDS.intersection(extra)}
                rest = {key: value for key, value in extra.items() if key not in _RECORD_FIELDS}
            except Exception:
                _warn_once("scrubbing extra=")
                return original(logger, *args, **kwargs)
            if positional:
                args = (*args[:8], rest, *args[9:])
            else:
                kwargs["extra"] = rest
            record = original(logger, *args, **kwargs)
            record.__dict__.update(ours)
            return record

        return make_record

    def _install_handler(self, handler: _OtlpLogHandler) -> None:
        root = logging.getLogger()
        if any(isinstance(h, LoggingHandler) for h in root.handlers):
            _logger.warning(
                "otel-dist: the root logger already has an OTel LoggingHandler; stdlib "
                "records may be exported twice (disable the 'logging' auto-instrumentation)"
            )
        root.addHandler(handler)
        self._patch(logging, "basicConfig", self._keeping_handler(logging.basicConfig))
        self._patch(logging.config, "dictConfig", self._keeping_handler(logging.config.dictConfig))
        self._patch(logging.config, "fileConfig", self._keeping_handler(logging.config.fileConfig))

    def _keeping_handler(self, config_fn: Callable[..., Any]) -> Callable[..., Any]:
        """``config_fn`` run without our handler on root, then with it put back.

        Taking it off first also lets ``basicConfig()`` configure a root that only had ours.
        """

        def keeping_handler(*args: Any, **kwargs: Any) -> Any:
            root = logging.getLogger()
            handler = self._handler
            if not self._active or handler is None or handler not in root.handlers:
                return config_fn(*args, **kwargs)
            root.removeHandler(handler)
            try:
                return config_fn(*args, **kwargs)
            finally:
                root.addHandler(handler)

        return keeping_handler


def install_log_correlation(
    *,
    service_name: str,
    scrubber: Scrubber,
    logger_provider: LoggerProvider | None,
    add_ids: bool = True,
) -> LogCorrelation:
    """Put trace ids and scrubbing into structlog and stdlib logs, and export them if asked.

    ``logger_provider=None`` means correlation and scrubbing only, no OTLP log export.
    ``add_ids=False`` (``OTEL_DIST_LOG_CORRELATION=false``) scrubs and exports without adding ids
    to rendered output (stdlib fields stay, empty, so formats never fail). A previous
    installation is uninstalled first. See the module docstring for what changes and the limits.
    """
    global _installed  # noqa: PLW0603
    if _installed is not None:
        _installed.uninstall()
    correlation = LogCorrelation(
        service_name=service_name,
        scrubber=scrubber,
        logger_provider=logger_provider,
        add_ids=add_ids,
    )
    correlation._install()
    _installed = correlation
    return correlation
