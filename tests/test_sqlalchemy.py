"""SQLAlchemy instrumentation: what reaches the span exporter and the metric reader, and the SQL
that reaches SQLite, for real sync and async engines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy.exc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import QueuePool

import otel_dist.sqlalchemy as instrumentation_module
from otel_dist import sql_engines, sql_statements
from otel_dist.sqlalchemy import SqlAlchemyInstrumentation, instrument_sqlalchemy

CANARY = "canary-7f3a9c-secret-value"
POOL_NAME = "db.client.connection.pool.name"
COUNT = "db.client.connection.count"


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self, kind: SpanKind | None = SpanKind.CLIENT) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if kind is None or s.kind == kind]

    def points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def value(self, name: str, attributes: dict[str, str]) -> Any:
        """The one data point of ``name`` carrying ``attributes`` (among others)."""
        matching = [
            p.value for p in self.points(name) if attributes.items() <= dict(p.attributes).items()
        ]
        assert len(matching) == 1, (name, attributes, self.points(name))
        return matching[0]

    def instrument(self, **kwargs: Any) -> SqlAlchemyInstrumentation:
        return instrument_sqlalchemy(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kwargs
        )


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    metrics = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[metrics])
    yield Telemetry(tracer_provider, meter_provider, spans, metrics)
    meter_provider.shutdown()
    tracer_provider.shutdown()


@pytest.fixture
def instrumented(telemetry: Telemetry) -> Iterator[SqlAlchemyInstrumentation]:
    instrumentation = telemetry.instrument()
    yield instrumentation
    instrumentation.uninstrument()


@pytest.fixture(autouse=True)
def _always_uninstrument() -> Iterator[None]:
    """Listeners are process-wide: never let one test's instrumentation leak into the next."""
    yield
    if instrumentation_module._active is not None:
        instrumentation_module._active.uninstrument()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A SQLite file with a ``users`` table, made with sqlite3 so that no span is involved."""
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    return f"sqlite:///{path}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine(db_url, poolclass=QueuePool)
    yield engine
    engine.dispose()


def _executed_sql(engine: Engine) -> list[str]:
    """The SQL text SQLite itself runs, for connections opened from now on."""
    executed: list[str] = []

    @event.listens_for(engine, "connect")
    def trace_statements(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(executed.append)

    engine.dispose()  # so the next checkout opens a traced connection
    return executed


def _traceparent(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def test_select_is_one_client_span_with_stable_semconv(instrumented, telemetry, engine, db_url):
    with engine.connect() as conn:
        conn.execute(text("SELECT id, name FROM users WHERE id = :id"), {"id": 1}).all()

    (span,) = telemetry.finished()
    assert span.name == "SELECT users"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "db.system.name": "sqlite",
        "db.namespace": db_url.removeprefix("sqlite:///"),
        "db.operation.name": "SELECT",
        "db.collection.name": "users",
        "db.query.text": "SELECT id, name FROM users WHERE id = ?",
    }


def test_statement_span_is_child_of_current_span(instrumented, telemetry, engine):
    tracer = telemetry.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("handler") as parent, engine.connect() as conn:
        conn.execute(text("SELECT 1")).all()

    (span,) = telemetry.finished()
    assert span.name == "SELECT"
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id


def test_executemany_is_one_span(instrumented, telemetry, engine):
    rows = [{"name": f"user-{i}"} for i in range(5)]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (name) VALUES (:name)"), rows)

    (span,) = telemetry.finished()
    assert span.name == "INSERT users"
    assert span.attributes is not None
    assert span.attributes["db.query.text"] == "INSERT INTO users (name) VALUES (?)"


def test_bound_parameter_values_never_reach_telemetry(instrumented, telemetry, engine):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (name) VALUES (:name)"), {"name": CANARY})
        conn.execute(text("SELECT id FROM users WHERE name = :name"), {"name": CANARY}).all()

    spans = telemetry.finished(kind=None)
    assert len(spans) == 2
    for span in spans:
        assert CANARY not in span.to_json()
    assert CANARY not in telemetry.metrics.get_metrics_data().to_json()


def test_failing_statement_marks_span_and_duration_as_error(instrumented, telemetry, engine):
    with engine.connect() as conn, pytest.raises(sqlalchemy.exc.OperationalError):
        conn.execute(text("SELECT * FROM missing_table"))

    (span,) = telemetry.finished()
    assert span.name == "SELECT missing_table"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "sqlite3.OperationalError"
    (exception_event,) = [e for e in span.events if e.name == "exception"]
    assert exception_event.attributes is not None
    assert "missing_table" in str(exception_event.attributes["exception.message"])
    (point,) = telemetry.points("db.client.operation.duration")
    assert point.attributes["error.type"] == "sqlite3.OperationalError"


def test_async_session_spans_are_children_of_the_surrounding_span(telemetry, tmp_path):
    async def run() -> int:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'async.db'}")
        telemetry.instrument(engines=[engine])
        tracer = telemetry.tracer_provider.get_tracer("test")
        try:
            with tracer.start_as_current_span("handler") as parent:
                async with AsyncSession(engine) as session:
                    await session.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY)"))
                    await session.execute(text("INSERT INTO items (id) VALUES (1)"))
                    await session.commit()
            # The async engine was registered through its sync engine, under its URL.
            names = {p.attributes[POOL_NAME] for p in telemetry.points(COUNT)}
            assert names == {engine.url.render_as_string(hide_password=True)}
            return parent.get_span_context().span_id
        finally:
            await engine.dispose()

    parent_span_id = asyncio.run(run())

    spans = telemetry.finished()
    assert [s.name for s in spans] == ["CREATE", "INSERT items"]
    for span in spans:
        assert span.parent is not None
        assert span.parent.span_id == parent_span_id


def test_duration_histogram_has_semconv_attributes_and_exemplar(instrumented, telemetry, engine):
    tracer = telemetry.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("handler"), engine.connect() as conn:
        conn.execute(text("SELECT name FROM users")).all()

    (span,) = telemetry.finished()
    (point,) = telemetry.points("db.client.operation.duration")
    assert dict(point.attributes) == {
        "db.system.name": "sqlite",
        "db.namespace": span.attributes["db.namespace"],
        "db.operation.name": "SELECT",
        "db.collection.name": "users",
    }
    assert point.count == 1
    assert list(point.explicit_bounds) == [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10]
    (exemplar,) = point.exemplars
    assert exemplar.trace_id == span.context.trace_id
    assert exemplar.span_id == span.context.span_id


def test_pool_connection_count_follows_checkouts(telemetry, engine, db_url):
    telemetry.instrument(engines=[engine])
    pool = {POOL_NAME: db_url}

    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        assert telemetry.value(COUNT, {**pool, "db.client.connection.state": "used"}) == 1
        assert telemetry.value(COUNT, {**pool, "db.client.connection.state": "idle"}) == 0

    assert telemetry.value(COUNT, {**pool, "db.client.connection.state": "used"}) == 0
    assert telemetry.value(COUNT, {**pool, "db.client.connection.state": "idle"}) == 1
    assert telemetry.value("db.client.connection.max", pool) == 5 + 10  # QueuePool defaults

    engine.dispose()  # replaces the pool: the new, empty one is reported
    assert telemetry.value(COUNT, {**pool, "db.client.connection.state": "idle"}) == 0


@pytest.mark.parametrize(
    ("url", "system", "pool_name"),
    [
        (
            "postgresql+psycopg://scott:tiger@db.example:5433/app",
            "postgresql",
            "postgresql+psycopg://scott:***@db.example:5433/app",
        ),
        (
            "mssql+pyodbc://scott:tiger@db.example:5433/app",
            "microsoft.sql_server",
            "mssql+pyodbc://scott:***@db.example:5433/app",
        ),
    ],
)
def test_server_url_gives_attributes_and_a_pool_name_without_password(url, system, pool_name):
    # No server driver is installed: a stand-in engine carries the real URL object.
    url = make_url(url)
    engine = SimpleNamespace(url=url, dialect=SimpleNamespace(name=url.get_backend_name()))

    info = sql_engines._EngineInfo.of(engine)

    assert info.pool_name == pool_name
    assert info.span_attributes == {
        "db.system.name": system,
        "db.namespace": "app",
        "server.address": "db.example",
        "server.port": 5433,
    }
    assert info.metric_attributes == {"db.system.name": system, "db.namespace": "app"}


def test_engines_seen_by_events_are_registered_for_pool_metrics(
    instrumented, telemetry, engine, db_url
):
    with engine.connect():
        pass

    assert telemetry.value(COUNT, {POOL_NAME: db_url, "db.client.connection.state": "idle"}) == 1


def test_saturated_pool_counts_a_timeout_and_pending_returns_to_zero(telemetry, db_url):
    engine = create_engine(
        db_url, poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=0.1
    )
    telemetry.instrument(engines=[engine])
    pool = {POOL_NAME: db_url}

    with engine.connect(), pytest.raises(sqlalchemy.exc.TimeoutError):
        engine.connect()

    assert telemetry.value("db.client.connection.timeouts", pool) == 1
    assert telemetry.value("db.client.connection.pending_requests", pool) == 0
    assert telemetry.value("db.client.connection.max", pool) == 1
    engine.dispose()


def test_waiting_checkout_is_pending_until_a_connection_frees_up(telemetry, db_url):
    engine = create_engine(
        db_url, poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=10
    )
    telemetry.instrument(engines=[engine])
    pool = {POOL_NAME: db_url}
    held = engine.connect()
    waiter = threading.Thread(target=lambda: engine.connect().close())
    waiter.start()
    try:
        deadline = time.monotonic() + 5
        while telemetry.value("db.client.connection.pending_requests", pool) != 1:
            assert time.monotonic() < deadline, "the waiting checkout was never reported"
            time.sleep(0.01)
    finally:
        held.close()
        waiter.join(timeout=10)

    assert telemetry.value("db.client.connection.pending_requests", pool) == 0
    assert not telemetry.points("db.client.connection.timeouts")
    engine.dispose()


@pytest.mark.parametrize(
    ("statement", "ending"),
    [
        ("SELECT name FROM users WHERE name = 'it''s ünïcødé */ --'", "*/"),
        ("SELECT name FROM users WHERE name = 'it''s ünïcødé */ --';", "*/;"),
    ],
)
def test_sqlcommenter_appends_the_statement_spans_traceparent(telemetry, engine, statement, ending):
    telemetry.instrument(sqlcommenter=True)
    executed = _executed_sql(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (name) VALUES ('it''s ünïcødé */ --')"))
        rows = conn.execute(text(statement)).all()

    assert rows == [("it's ünïcødé */ --",)]
    select_span = telemetry.finished()[-1]
    assert select_span.name == "SELECT users"
    assert select_span.attributes["db.query.text"] == statement  # without the comment
    (select_sql,) = [sql for sql in executed if sql.startswith("SELECT name")]
    assert select_sql.endswith(f" /*traceparent='{_traceparent(select_span)}'{ending}")


def test_sqlcommenter_is_off_by_default(instrumented, engine):
    executed = _executed_sql(engine)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).all()

    assert "SELECT 1" in executed
    assert not [sql for sql in executed if "traceparent" in sql]


def test_sqlcommenter_skips_the_comment_without_a_valid_span(telemetry, engine):
    instrument_sqlalchemy(
        tracer_provider=NoOpTracerProvider(),
        meter_provider=telemetry.meter_provider,
        sqlcommenter=True,
    )
    executed = _executed_sql(engine)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).all()

    assert "SELECT 1" in executed


def test_instrumenting_twice_returns_the_same_instrumentation_and_one_span(telemetry, engine):
    first = telemetry.instrument()
    second = telemetry.instrument(engines=[engine])
    second.add_engine(engine)
    assert second is first

    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).all()

    assert len(telemetry.finished()) == 1
    assert len(telemetry.points(COUNT)) == 2  # used + idle, once


def test_uninstrument_stops_spans_and_pool_metrics(telemetry, engine):
    instrumentation = telemetry.instrument(engines=[engine])
    instrumentation.uninstrument()
    instrumentation.uninstrument()

    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).all()

    assert telemetry.finished() == []
    assert telemetry.points(COUNT) == []


def test_instrumenting_again_after_uninstrument_brings_everything_back(telemetry, engine):
    telemetry.instrument(engines=[engine]).uninstrument()
    telemetry.instrument(engines=[engine])

    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).all()

    assert [s.name for s in telemetry.finished()] == ["SELECT"]
    assert len(telemetry.points(COUNT)) == 2


def test_engine_created_before_instrumentation_is_traced(telemetry, engine):
    with engine.connect() as conn:  # the engine is already in use
        conn.execute(text("SELECT 1")).all()
    telemetry.instrument()

    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).all()

    assert [s.name for s in telemetry.finished()] == ["SELECT"]


def test_add_engine_rejects_what_is_not_an_engine(instrumented):
    with pytest.raises(TypeError, match="expected a SQLAlchemy Engine or AsyncEngine, got str"):
        instrumented.add_engine("sqlite://")


def test_instrumentation_failure_is_logged_once_and_the_query_still_runs(
    instrumented, telemetry, engine, monkeypatch, caplog
):
    def broken(_statement: str) -> None:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(sql_engines, "_describe_statement", broken)
    monkeypatch.setattr(instrumentation_module, "_reported", set())
    with caplog.at_level(logging.DEBUG, logger="otel_dist"), engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
        assert conn.execute(text("SELECT 2")).scalar() == 2

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "before_cursor_execute" in errors[0].getMessage()
    assert telemetry.finished() == []


@pytest.mark.parametrize(
    ("statement", "operation", "collection"),
    [
        ("SELECT a FROM users WHERE b = ?", "SELECT", "users"),
        ("  /* hint */ select * from main.users", "SELECT", "main.users"),
        ('SELECT "user".id FROM "user" JOIN t ON 1', "SELECT", "user"),
        ("-- note\nINSERT INTO `orders` (id) VALUES (?)", "INSERT", "orders"),
        ("UPDATE [dbo].[accounts] SET x = ?", "UPDATE", "dbo.accounts"),
        ("DELETE FROM sessions", "DELETE", "sessions"),
        ("SELECT 'from nowhere' AS x", "SELECT", None),
        ("(SELECT 1)", "SELECT", None),
        ("PRAGMA user_version", "PRAGMA", None),
        ("", None, None),
    ],
)
def test_operation_and_collection_are_parsed_best_effort(statement, operation, collection):
    parsed = sql_statements._describe_statement(statement)
    assert (parsed.operation, parsed.collection) == (operation, collection)


def test_sync_engine_works_without_greenlet(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        sys.modules["greenlet"] = None  # as if greenlet were not installed

        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from sqlalchemy import create_engine, text

        from otel_dist.sqlalchemy import instrument_sqlalchemy

        spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        instrument_sqlalchemy(tracer_provider=tracer_provider, meter_provider=MeterProvider())
        with create_engine("sqlite://").connect() as conn:
            assert conn.execute(text("SELECT 41 + 1")).scalar() == 42
        assert [s.name for s in spans.get_finished_spans()] == ["SELECT"]
        assert "sqlalchemy.ext.asyncio" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
