"""Log correlation: trace ids in structlog and stdlib output, scrubbing, OTLP log export."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.instrumentation.structlog import StructlogProcessor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Span, Tracer

from otel_dist import logs
from otel_dist.fastapi import request_id
from otel_dist.logs import (
    LogCorrelation,
    configure_structlog,
    inject_trace_ids,
    install_log_correlation,
)
from otel_dist.scrub import Scrubber

SECRETS = ("CANARY1", "CANARY2", "CANARY3", "CANARY4", "CANARY5")


def ids(span: Span) -> tuple[str, str, str]:
    context = span.get_span_context()
    return (
        format(context.trace_id, "032x"),
        format(context.span_id, "016x"),
        format(context.trace_flags, "02x"),
    )


@pytest.fixture
def tracer() -> Tracer:
    return TracerProvider().get_tracer("test")


@pytest.fixture
def exporter() -> InMemoryLogRecordExporter:
    return InMemoryLogRecordExporter()


@pytest.fixture
def logger_provider(exporter: InMemoryLogRecordExporter) -> Iterator[LoggerProvider]:
    provider = LoggerProvider(resource=Resource.create({"service.name": "svc"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    """Put structlog and the root logger back as they were, whatever a test did."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    factory = logging.getLogRecordFactory()
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
    logging.setLogRecordFactory(factory)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def install() -> Iterator[Callable[..., LogCorrelation]]:
    installed: list[LogCorrelation] = []

    def _install(
        logger_provider: LoggerProvider | None = None, scrubber: Scrubber | None = None
    ) -> LogCorrelation:
        correlation = install_log_correlation(
            service_name="svc", scrubber=scrubber or Scrubber(), logger_provider=logger_provider
        )
        installed.append(correlation)
        return correlation

    yield _install
    for correlation in installed:
        correlation.uninstall()


@pytest.fixture
def app_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """The stdlib logger "app" at INFO, formatting ``%(trace_id)s %(message)s`` into a buffer."""
    logger = logging.getLogger("app")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(trace_id)s|%(span_id)s|%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def json_structlog(**configure: Any) -> io.StringIO:
    """Configure structlog as an app would: JSON lines into a buffer."""
    stream = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        **configure,
    )
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def position_of_ours(processors: list[Any]) -> list[int]:
    return [i for i, p in enumerate(processors) if p is inject_trace_ids]


# structlog: ids in the rendered event -----------------------------------------------------------


def test_structlog_event_carries_the_active_span_ids(install, tracer):
    install()
    stream = json_structlog()
    with tracer.start_as_current_span("work") as span:
        structlog.get_logger().info("hello")
    (event,) = lines(stream)
    assert (event["trace_id"], event["span_id"], event["trace_flags"]) == ids(span)
    assert len(event["trace_id"]) == 32
    assert len(event["trace_flags"]) == 2
    assert int(event["trace_flags"], 16) & 0x01  # sampled (the SDK may also set 0x02, random)
    assert event["service.name"] == "svc"


def test_unsampled_span_still_yields_ids_with_flags_00(install):
    install()
    stream = json_structlog()
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    with unsampled.start_as_current_span("work") as span:
        assert not span.is_recording()
        structlog.get_logger().info("hello")
    (event,) = lines(stream)
    assert (event["trace_id"], event["span_id"], event["trace_flags"]) == ids(span)
    assert not int(event["trace_flags"], 16) & 0x01  # "00", or "02" with the random flag


def test_outside_a_span_only_service_name_is_added(install):
    install()
    stream = json_structlog()
    structlog.get_logger().info("hello")
    (event,) = lines(stream)
    assert event["service.name"] == "svc"
    assert not {"trace_id", "span_id", "trace_flags", "request_id"} & set(event)


def test_request_id_is_added_when_bound(install):
    install()
    stream = json_structlog()
    token = request_id.bind("req-123")
    try:
        structlog.get_logger().info("hello")
    finally:
        request_id.unbind(token)
    assert lines(stream)[0]["request_id"] == "req-123"


def test_keys_set_by_the_app_win(install, tracer):
    install()
    stream = json_structlog()
    with tracer.start_as_current_span("work"):
        structlog.get_logger().info("hello", trace_id="mine", **{"service.name": "other"})
    (event,) = lines(stream)
    assert event["trace_id"] == "mine"
    assert event["service.name"] == "other"


def test_secrets_never_reach_the_renderer_nor_the_exporter(install, logger_provider, exporter):
    install(logger_provider)
    stream = json_structlog()
    structlog.get_logger().info(
        "login", password="CANARY1", api_key="CANARY2", note="token=CANARY3", user="bob"
    )
    output = stream.getvalue()
    exported = [r.to_json() for r in exporter.get_finished_logs()]
    assert len(exported) == 1
    for secret in SECRETS:
        assert secret not in output
        assert secret not in exported[0]
    (event,) = lines(stream)
    assert event["user"] == "bob"
    assert event["password"] == "[REDACTED]"
    assert event["note"] == "token=[REDACTED]"


def test_inject_trace_ids_never_raises(install, monkeypatch):
    scrubber = Scrubber()
    install(scrubber=scrubber)

    def broken(value: str) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(scrubber, "text", broken)
    event = inject_trace_ids(None, "info", {"event": "hello"})
    assert event["event"] == "hello"


# structlog: where the processors go -------------------------------------------------------------


def test_app_configure_after_install_keeps_processor_before_renderer_once(install):
    install()
    json_structlog()
    processors = list(structlog.get_config()["processors"])
    assert position_of_ours(processors) == [len(processors) - 2]
    # An app re-using the current chain (ours included) must not get a second copy.
    structlog.configure(processors=[structlog.processors.TimeStamper(), *processors])
    processors = list(structlog.get_config()["processors"])
    assert len(position_of_ours(processors)) == 1
    assert isinstance(processors[-1], structlog.processors.JSONRenderer)
    # Positional processors are handled too.
    structlog.configure([structlog.processors.JSONRenderer()])
    assert structlog.get_config()["processors"][0] is inject_trace_ids


def test_app_configure_once_after_install_applies_with_our_processor(install):
    install()
    assert structlog.is_configured()  # our insertion configured structlog...
    stream = io.StringIO()
    structlog.configure_once(  # ...yet the app's first configure_once still applies.
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=stream),
    )
    assert next(iter(structlog.get_config()["processors"])) is inject_trace_ids
    structlog.get_logger().info("hello")
    assert lines(stream)[0]["service.name"] == "svc"
    with pytest.warns(RuntimeWarning):  # a second one is refused, as structlog does
        structlog.configure_once(processors=[])


def test_reset_defaults_keeps_processor_before_default_renderer(install):
    install()
    json_structlog()
    structlog.reset_defaults()
    processors = list(structlog.get_config()["processors"])
    assert position_of_ours(processors) == [len(processors) - 2]
    assert isinstance(processors[-1], structlog.dev.ConsoleRenderer)


def test_install_after_app_configuration_inserts_into_the_app_chain(install, tracer):
    stream = json_structlog()
    install()
    with tracer.start_as_current_span("work") as span:
        structlog.get_logger().info("hello")
    assert lines(stream)[0]["trace_id"] == ids(span)[0]


def test_wrap_for_formatter_keeps_our_processor_before_it(install, tracer):
    install()
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    processors = list(structlog.get_config()["processors"])
    assert processors[-1] is structlog.stdlib.ProcessorFormatter.wrap_for_formatter
    assert position_of_ours(processors) == [len(processors) - 2]

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=structlog.processors.JSONRenderer())
    )
    stdlib_logger = logging.getLogger("structlog_app")
    stdlib_logger.addHandler(handler)
    stdlib_logger.setLevel(logging.INFO)
    try:
        with tracer.start_as_current_span("work") as span:
            structlog.get_logger("structlog_app").info("hello", password="CANARY1")
    finally:
        stdlib_logger.removeHandler(handler)
        stdlib_logger.setLevel(logging.NOTSET)
    (event,) = lines(stream)
    assert event["trace_id"] == ids(span)[0]
    assert "CANARY1" not in stream.getvalue()


# structlog: OTLP export ---------------------------------------------------------------------


def test_structlog_event_exported_with_span_context_and_scrubbed_attributes(
    install, tracer, logger_provider, exporter
):
    install(logger_provider)
    json_structlog()
    processors = list(structlog.get_config()["processors"])
    assert isinstance(processors[position_of_ours(processors)[0] + 1], StructlogProcessor)
    with tracer.start_as_current_span("work") as span:
        structlog.get_logger().info("order placed", order_id=42, secret="CANARY1")
    (exported,) = exporter.get_finished_logs()
    record = exported.log_record
    context = span.get_span_context()
    assert (record.trace_id, record.span_id) == (context.trace_id, context.span_id)
    assert record.body == "order placed"
    assert record.attributes is not None
    attributes = dict(record.attributes)
    assert attributes["order_id"] == 42
    assert attributes["secret"] == "[REDACTED]"
    assert not {"trace_id", "span_id", "service.name"} & set(attributes)


def test_structlog_exception_is_exported_scrubbed(install, logger_provider, exporter):
    install(logger_provider)
    json_structlog()
    try:
        raise ValueError("bad url /x?token=CANARY5")
    except ValueError:
        structlog.get_logger().exception("failed")
    (exported,) = exporter.get_finished_logs()
    assert "CANARY5" not in exported.to_json()
    assert "ValueError" in exported.to_json()


def test_another_structlog_otlp_processor_is_not_kept_next_to_ours(
    install, logger_provider, exporter
):
    other = StructlogProcessor(logger_provider=logger_provider)
    json_structlog()
    structlog.configure(processors=[other, structlog.processors.JSONRenderer()])
    install(logger_provider)
    processors = list(structlog.get_config()["processors"])
    assert other not in processors
    structlog.get_logger().info("once")
    assert len(exporter.get_finished_logs()) == 1


# stdlib logging ---------------------------------------------------------------------------------


def test_stdlib_format_shows_trace_id_and_scrubbed_args(install, tracer, app_logger):
    logger, stream = app_logger
    install()
    with tracer.start_as_current_span("work") as span:
        logger.info("hi %s", "/x?token=CANARY4")
    trace_id, span_id, _ = ids(span)
    assert stream.getvalue() == f"{trace_id}|{span_id}|hi /x?token=[REDACTED]\n"


def test_stdlib_fields_are_empty_strings_outside_a_span(install, app_logger):
    logger, stream = app_logger
    install()
    logger.info("hi")
    assert stream.getvalue() == "||hi\n"


def test_stdlib_secret_in_the_template_itself_is_scrubbed(install, app_logger):
    logger, stream = app_logger
    install()
    logger.info("login token=%s user=%s", "CANARY4", "bob")
    assert stream.getvalue() == "||login token=[REDACTED] user=bob\n"


def test_stdlib_exception_text_is_scrubbed(install, app_logger):
    logger, stream = app_logger
    install()
    try:
        raise ValueError("bad url /x?token=CANARY5")
    except ValueError:
        logger.exception("failed")
    assert "ValueError" in stream.getvalue()
    assert "CANARY5" not in stream.getvalue()


def test_stdlib_extra_with_our_field_names_keeps_app_value(install, app_logger):
    logger, stream = app_logger
    install()
    logger.info("hi", extra={"trace_id": "mine", "request_id": "r1", "password": "CANARY1"})
    assert stream.getvalue() == "mine||hi\n"


def test_stdlib_record_exported_with_context(install, tracer, logger_provider, exporter):
    install(logger_provider)
    logger = logging.getLogger("app.orders")
    logger.setLevel(logging.INFO)
    try:
        with tracer.start_as_current_span("work") as span:
            logger.info("hi %s", "/x?token=CANARY4", extra={"api_key": "CANARY2", "n": 1})
    finally:
        logger.setLevel(logging.NOTSET)
    (exported,) = exporter.get_finished_logs()
    record = exported.log_record
    assert record.trace_id == span.get_span_context().trace_id
    assert record.body == "hi /x?token=[REDACTED]"
    assert record.attributes is not None
    attributes = dict(record.attributes)
    assert attributes["n"] == 1
    assert attributes["api_key"] == "[REDACTED]"
    assert not {"trace_id", "span_id", "trace_flags", "service_name", "request_id"} & set(
        attributes
    )
    assert "CANARY" not in exported.to_json()


def test_stdlib_exception_export_reuses_the_scrubbed_traceback(
    install, logger_provider, exporter, monkeypatch
):
    formatted: list[object] = []
    real_format = traceback.format_exception

    def counting_format(*args: Any, **kwargs: Any) -> list[str]:
        formatted.append(args)
        return real_format(*args, **kwargs)

    # The contrib handler formats with traceback.format_exception; the record factory (through
    # logging.Formatter) does not, so any call here is a second formatting of the same traceback.
    monkeypatch.setattr(traceback, "format_exception", counting_format)
    install(logger_provider)
    logger = logging.getLogger("app.orders")
    try:
        raise ValueError("bad url /x?token=CANARY5")
    except ValueError:
        logger.exception("failed")
    (exported,) = exporter.get_finished_logs()
    attributes = dict(exported.log_record.attributes or {})
    assert attributes["exception.type"] == "ValueError"
    assert attributes["exception.message"] == "bad url /x?token=[REDACTED]"
    stacktrace = str(attributes["exception.stacktrace"])
    assert stacktrace.startswith("Traceback (most recent call last):")
    assert "ValueError: bad url /x?token=[REDACTED]" in stacktrace
    assert "CANARY" not in exported.to_json()
    assert formatted == []


def test_structlog_records_via_stdlib_are_exported_once(install, logger_provider, exporter):
    install(logger_provider)
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    logger = logging.getLogger("app.structlog")
    logger.setLevel(logging.INFO)
    try:
        structlog.get_logger("app.structlog").info("from structlog")
        logger.info("from stdlib")
    finally:
        logger.setLevel(logging.NOTSET)
    bodies = [r.log_record.body for r in exporter.get_finished_logs()]
    assert bodies == ["from structlog", "from stdlib"]


def test_wrap_for_formatter_records_are_exported_once(install, logger_provider, exporter):
    install(logger_provider)
    structlog.configure(
        processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    logger = logging.getLogger("app.wrapped")
    logger.setLevel(logging.INFO)
    try:
        structlog.get_logger("app.wrapped").info("hello")
    finally:
        logger.setLevel(logging.NOTSET)
    assert [r.log_record.body for r in exporter.get_finished_logs()] == ["hello"]


def test_otel_and_otel_dist_internal_records_are_not_exported(install, logger_provider, exporter):
    install(logger_provider)
    for name in ("opentelemetry.sdk", "otel_dist.internal", "app", "otel_dist.errors"):
        logging.getLogger(name).warning("note")
    exported = exporter.get_finished_logs()
    assert [r.log_record.body for r in exported] == ["note", "note"]
    assert [r.instrumentation_scope.name for r in exported] == ["app", "otel_dist.errors"]


def test_handler_survives_dict_config_and_basic_config(install, logger_provider, exporter):
    install(logger_provider)
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"null": {"class": "logging.NullHandler"}},
            "root": {"handlers": ["null"], "level": "INFO"},
        }
    )
    logging.getLogger("app").info("after dictConfig")
    logging.basicConfig(force=True, level=logging.INFO, stream=io.StringIO())
    logging.getLogger("app").info("after basicConfig")
    bodies = [r.log_record.body for r in exporter.get_finished_logs()]
    assert bodies == ["after dictConfig", "after basicConfig"]
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logs._OtlpLogHandler)]
    assert len(ours) == 1


def test_basic_config_still_configures_a_root_that_only_has_our_handler(install, logger_provider):
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    install(logger_provider)
    stream = io.StringIO()
    logging.basicConfig(stream=stream, format="%(trace_id)s|%(message)s")
    logging.getLogger("app").warning("hi")
    assert stream.getvalue() == "|hi\n"


# configure_structlog ----------------------------------------------------------------------------


def test_configure_structlog_json_renders_json_lines_with_trace_id(install, tracer, capsys):
    install()
    configure_structlog(log_format="json")
    with tracer.start_as_current_span("work") as span:
        structlog.get_logger().info("hello", n=1)
        structlog.get_logger().debug("dropped below INFO")
    (line,) = capsys.readouterr().out.splitlines()
    event = json.loads(line)
    assert event["trace_id"] == ids(span)[0]
    assert (event["event"], event["n"], event["level"]) == ("hello", 1, "info")
    assert "timestamp" in event


def test_configure_structlog_console_renders_readable_line_with_trace_id(install, tracer, capsys):
    configure_structlog(log_format="console")
    install()
    with tracer.start_as_current_span("work") as span:
        structlog.get_logger().info("hello")
    (line,) = capsys.readouterr().out.splitlines()
    assert ids(span)[0] in line
    assert "hello" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


# uninstall ----------------------------------------------------------------------------------------


def test_uninstall_restores_everything(logger_provider):
    originals = (
        structlog.configure,
        structlog.configure_once,
        structlog.reset_defaults,
        logging.getLogRecordFactory(),
        logging.Logger.makeRecord,
        logging.basicConfig,
        logging.config.dictConfig,
        logging.config.fileConfig,
    )
    root_handlers = list(logging.getLogger().handlers)
    stream = json_structlog()
    app_processors = list(structlog.get_config()["processors"])

    correlation = install_log_correlation(
        service_name="svc", scrubber=Scrubber(), logger_provider=logger_provider
    )
    assert structlog.configure is not originals[0]
    assert logging.getLogRecordFactory() is not originals[3]
    correlation.uninstall()
    correlation.uninstall()  # idempotent

    assert (
        structlog.configure,
        structlog.configure_once,
        structlog.reset_defaults,
        logging.getLogRecordFactory(),
        logging.Logger.makeRecord,
        logging.basicConfig,
        logging.config.dictConfig,
        logging.config.fileConfig,
    ) == originals
    assert list(structlog.get_config()["processors"]) == app_processors
    assert logging.getLogger().handlers == root_handlers
    structlog.get_logger().info("hello", password="x")
    assert "service.name" not in lines(stream)[0]


def test_uninstall_without_app_configuration_leaves_structlog_unconfigured():
    correlation = install_log_correlation(
        service_name="svc", scrubber=Scrubber(), logger_provider=None
    )
    correlation.uninstall()
    assert not structlog.is_configured()
    assert inject_trace_ids not in list(structlog.get_config()["processors"])


def test_installing_again_replaces_the_previous_installation(install):
    first = install()
    install()
    json_structlog()
    assert len(position_of_ours(list(structlog.get_config()["processors"]))) == 1
    first.uninstall()  # already replaced: a no-op that leaves the second one working
    assert len(position_of_ours(list(structlog.get_config()["processors"]))) == 1


def test_add_ids_false_scrubs_and_exports_without_ids(logger_provider, exporter):
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(out),
    )
    correlation = install_log_correlation(
        service_name="svc", scrubber=Scrubber(), logger_provider=logger_provider, add_ids=False
    )
    try:
        tracer = TracerProvider().get_tracer("t")
        with tracer.start_as_current_span("s") as span:
            structlog.get_logger("app").info("hello", password="CANARY9")
            record = logging.getLogRecordFactory()("app", logging.INFO, __file__, 1, "m", (), None)
        line = json.loads(out.getvalue())
        assert "trace_id" not in line
        assert "service.name" not in line
        assert line["password"] == "[REDACTED]"
        assert record.trace_id == ""
        exported = exporter.get_finished_logs()
        assert exported[0].log_record.trace_id == span.get_span_context().trace_id
    finally:
        correlation.uninstall()
        structlog.reset_defaults()
