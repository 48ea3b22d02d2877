"""SQLAlchemy instrumentation on SQLAlchemy's event API: one span and one duration per statement.

Listeners sit on the ``Engine`` *class*, so every engine is traced - created before or after
``instrument_sqlalchemy``, sync or the ``sync_engine`` behind an ``AsyncEngine`` - without patching
``create_engine``. Under asyncio SQLAlchemy runs the sync code in a greenlet that carries the
caller's contextvars, so spans nest under the caller's span there too.

Spans and metrics follow the stable database semantic conventions. ``db.query.text`` is the
statement as sent to the driver, with placeholders: bound parameter values are never read.

Pool metrics are observed from the registered engines' current pools. Engines are registered by
``add_engine`` or as soon as they are seen by any listener, and are held weakly. Used, idle and max
connections are known for ``QueuePool`` (the default for server databases and SQLite files) only.

Nothing here may break the application: a failure inside a listener is logged once per place and
swallowed, and the statement runs as if uninstrumented.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import quote

import sqlalchemy.exc
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import Span, SpanKind, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext, ExecutionContext
from sqlalchemy.pool import Pool, PoolProxiedConnection, QueuePool

__all__ = ["SqlAlchemyInstrumentation", "instrument_sqlalchemy"]

_logger = logging.getLogger("otel_dist.internal")

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

# Dialect names whose semconv `db.system.name` differs; any other dialect name is used as is.
_DB_SYSTEM_NAMES = {"mssql": "microsoft.sql_server", "oracle": "oracle.db"}

_STATE = "db.client.connection.state"
_POOL_NAME = "db.client.connection.pool.name"

# Where a statement's in-flight span lives: on SQLAlchemy's per-execution context object, so it
# dies with the execution even if no closing event ever fires.
_EXECUTION_ATTR = "_otel_dist_execution"
# Checkouts waiting for a connection, kept on the pool object (it dies with the pool).
_PENDING_ATTR = "_otel_dist_pending"
# Statements whose span name and attributes are kept per engine (SQLAlchemy reuses compiled
# statements, so an app has few); more than that are described anew each time.
_PREPARED_LIMIT = 512

_PROPAGATOR = TraceContextTextMapPropagator()

_lock = threading.Lock()
_active: SqlAlchemyInstrumentation | None = None


def instrument_sqlalchemy(
    *,
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
    engines: Sequence[Any] = (),
    sqlcommenter: bool = False,
) -> SqlAlchemyInstrumentation:
    """Trace and measure every SQLAlchemy statement, and observe connection pools.

    ``engines`` (``Engine`` or ``AsyncEngine``) have their pools observed from now on; any other
    engine is observed from its first checkout.
    ``sqlcommenter`` appends the statement span's W3C ``traceparent`` to the SQL as a comment, so
    database-side logs can be joined to traces; it makes each statement text unique, which defeats
    server-side statement caches keyed on the text, hence off by default.

    Calling it again returns the instrumentation already installed (its providers and options
    are kept) after registering the new ``engines``.
    """
    global _active  # noqa: PLW0603 - one set of class-level listeners per process, on purpose
    with _lock:
        if _active is None:
            _active = SqlAlchemyInstrumentation(tracer_provider, meter_provider, sqlcommenter)
            _active._install()
        elif (tracer_provider, meter_provider, sqlcommenter) != _active._options:
            _logger.warning(
                "otel_dist: SQLAlchemy is already instrumented; keeping the first providers "
                "and sqlcommenter setting"
            )
        instrumentation = _active
    for engine in engines:
        instrumentation.add_engine(engine)
    return instrumentation


class SqlAlchemyInstrumentation:
    """The installed listeners and pool instruments; obtained from ``instrument_sqlalchemy``."""

    def __init__(
        self, tracer_provider: TracerProvider, meter_provider: MeterProvider, sqlcommenter: bool
    ) -> None:
        self._options = (tracer_provider, meter_provider, sqlcommenter)
        self._meter_provider = meter_provider
        self._sqlcommenter = sqlcommenter
        self._tracer = tracer_provider.get_tracer(__name__)
        meter = meter_provider.get_meter(__name__)
        self._duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._timeouts = meter.create_counter(
            "db.client.connection.timeouts",
            unit="{timeout}",
            description="Connection checkouts that timed out waiting for the pool.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._observe_connection_count],
            unit="{connection}",
            description="Connections currently checked out (used) or in the pool (idle).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[self._observe_connection_max],
            unit="{connection}",
            description="Most connections the pool may open (pool size + max overflow).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[self._observe_pending_requests],
            unit="{request}",
            description="Checkouts currently waiting for a connection.",
        )
        self._listeners: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
            # retval=True lets sqlcommenter replace the statement (returned unchanged when off).
            ("before_cursor_execute", self._before_cursor_execute, {"retval": True}),
            ("after_cursor_execute", self._after_cursor_execute, {}),
            ("handle_error", self._handle_error, {}),
            ("engine_connect", self._engine_connect, {}),
        ]
        self._original_pool_connect = Pool.connect
        self._counting_pool_connect = self._wrap_pool_connect(Pool.connect)
        self._installed = False

    def add_engine(self, engine: Any) -> None:
        """Observe the pool of ``engine`` (an ``Engine`` or ``AsyncEngine``); idempotent."""
        sync_engine = getattr(engine, "sync_engine", engine)
        if not isinstance(sync_engine, Engine):
            msg = f"expected a SQLAlchemy Engine or AsyncEngine, got {type(engine).__name__}"
            raise TypeError(msg)
        if self._installed:
            _pools.register(sync_engine)

    def uninstrument(self) -> None:
        """Remove the listeners and the pool patch, and stop reporting pools; idempotent."""
        global _active  # noqa: PLW0603 - see instrument_sqlalchemy
        with _lock:
            if not self._installed:
                return
            self._installed = False
            for identifier, listener, _ in self._listeners:
                event.remove(Engine, identifier, listener)
            # Only undo our own patch: if someone wrapped it since, theirs stays (and calls ours).
            if Pool.__dict__.get("connect") is self._counting_pool_connect:
                Pool.connect = self._original_pool_connect  # type: ignore[method-assign]
            _pools.forget_engines()
            if _active is self:
                _active = None

    def _install(self) -> None:
        for identifier, listener, options in self._listeners:
            event.listen(Engine, identifier, listener, **options)
        Pool.connect = self._counting_pool_connect  # type: ignore[method-assign,assignment]
        self._installed = True

    # Statement listeners.

    def _before_cursor_execute(
        self,
        conn: Connection,
        _cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        _executemany: bool,
    ) -> tuple[str, Any]:
        with _GUARD_BEFORE:
            statement = self._start(conn.engine, statement, context)
        return statement, parameters

    def _after_cursor_execute(
        self,
        _conn: Connection,
        _cursor: Any,
        _statement: str,
        _parameters: Any,
        context: ExecutionContext | None,
        _executemany: bool,
    ) -> None:
        with _GUARD_AFTER:
            self._finish(context)

    def _handle_error(self, exception_context: ExceptionContext) -> None:
        with _never_raise("handle_error"):
            self._finish(exception_context.execution_context, exception_context.original_exception)

    def _engine_connect(self, conn: Connection) -> None:
        # Registers engines on their first checkout, before any statement could time out.
        with _GUARD_CONNECT:
            _pools.register(conn.engine)

    def _start(self, engine: Engine, statement: str, context: ExecutionContext | None) -> str:
        """Start the statement's span; return the statement to run (commented with sqlcommenter)."""
        if context is None:  # a raw cursor call outside any execution: nowhere to keep a span
            return statement
        if not is_instrumentation_enabled():  # e.g. the health checks' SELECT 1
            return statement
        prepared = _pools.register(engine).prepared(statement)
        span = self._tracer.start_span(
            prepared.span_name, kind=SpanKind.CLIENT, attributes=prepared.span_attributes
        )
        execution = _Execution(span, prepared.metric_attributes, time.perf_counter())
        setattr(context, _EXECUTION_ATTR, execution)
        if self._sqlcommenter:
            return _with_traceparent_comment(statement, span)
        return statement

    def _finish(self, context: ExecutionContext | None, error: BaseException | None = None) -> None:
        """End the statement's span and record its duration, once, whichever event comes first."""
        if context is None:
            return
        execution: _Execution | None = vars(context).pop(_EXECUTION_ATTR, None)
        if execution is None:
            return
        elapsed = time.perf_counter() - execution.started
        span, attributes = execution.span, execution.metric_attributes
        if error is not None:
            attributes = {**attributes, "error.type": _qualified_name(type(error))}
            span.set_attribute("error.type", attributes["error.type"])
            # The message may carry values: it goes to the exception event, which is scrubbed at
            # export, and not to the status description, which is not.
            span.record_exception(error)
            span.set_status(StatusCode.ERROR)
        # Recorded in the span's context so the exemplar points at this statement's trace.
        self._duration.record(elapsed, attributes, context=trace.set_span_in_context(span))
        span.end()

    # Pools.

    def _observed_pools(self) -> list[tuple[str, Pool]]:
        # The SDK keeps the first callbacks registered under a name on a meter, so after
        # uninstrument() these may serve a new instrumentation on the same MeterProvider.
        active = _active
        if active is None or active._meter_provider is not self._meter_provider:
            return []
        return _pools.current()

    def _wrap_pool_connect(
        self, connect: Callable[[Pool], PoolProxiedConnection]
    ) -> Callable[[Pool], PoolProxiedConnection]:
        """Wrap ``Pool.connect`` to count waiting checkouts and timeouts; errors pass through."""

        @functools.wraps(connect)
        def counting_connect(pool: Pool) -> PoolProxiedConnection:
            with _GUARD_CHECKOUT:
                _pools.add_pending(pool, 1)
            try:
                return connect(pool)
            except sqlalchemy.exc.TimeoutError:
                with _never_raise("pool timeout"):
                    self._count_timeout(pool)
                raise
            finally:
                with _GUARD_CHECKOUT:
                    _pools.add_pending(pool, -1)

        return counting_connect

    def _count_timeout(self, pool: Pool) -> None:
        name = _pools.name_of(pool)
        self._timeouts.add(1, {} if name is None else {_POOL_NAME: name})

    def _observe_connection_count(self, _options: CallbackOptions) -> list[Observation]:
        observations = []
        with _never_raise("db.client.connection.count"):
            for name, pool in self._observed_pools():
                # Only QueuePool (and its asyncio variant) keeps used/idle counts.
                if isinstance(pool, QueuePool):
                    used = Observation(pool.checkedout(), {_STATE: "used", _POOL_NAME: name})
                    idle = Observation(pool.checkedin(), {_STATE: "idle", _POOL_NAME: name})
                    observations += [used, idle]
        return observations

    def _observe_connection_max(self, _options: CallbackOptions) -> list[Observation]:
        observations = []
        with _never_raise("db.client.connection.max"):
            for name, pool in self._observed_pools():
                # QueuePool has no public max_overflow accessor; `_max_overflow` (-1 when
                # unbounded) is the same in 2.0 and 2.1.
                if isinstance(pool, QueuePool) and pool._max_overflow >= 0:
                    bound = pool.size() + pool._max_overflow
                    observations.append(Observation(bound, {_POOL_NAME: name}))
        return observations

    def _observe_pending_requests(self, _options: CallbackOptions) -> list[Observation]:
        observations = []
        with _never_raise("db.client.connection.pending_requests"):
            for name, pool in self._observed_pools():
                observations.append(Observation(_pools.pending(pool), {_POOL_NAME: name}))
        return observations


@dataclass(frozen=True)
class _Prepared:
    """A statement's span name and attributes, shared by its executions (never mutated)."""

    span_name: str
    span_attributes: dict[str, AttributeValue]
    metric_attributes: dict[str, AttributeValue]


@dataclass(frozen=True)
class _EngineInfo:
    """What every statement of one engine shares, computed once per engine."""

    pool_name: str
    system: str
    metric_attributes: dict[str, AttributeValue]
    span_attributes: dict[str, AttributeValue]
    _statements: dict[str, _Prepared] = field(default_factory=dict, compare=False, repr=False)

    def prepared(self, statement: str) -> _Prepared:
        """Span name and attributes of ``statement`` on this engine, described once."""
        prepared = self._statements.get(statement)
        if prepared is None:
            parsed = _describe_statement(statement)
            prepared = _Prepared(
                parsed.span_name or self.system,
                {**self.span_attributes, **parsed.attributes, "db.query.text": statement},
                {**self.metric_attributes, **parsed.attributes},
            )
            if len(self._statements) < _PREPARED_LIMIT:
                self._statements[statement] = prepared
        return prepared

    @classmethod
    def of(cls, engine: Engine) -> _EngineInfo:
        url = engine.url
        system = _DB_SYSTEM_NAMES.get(engine.dialect.name, engine.dialect.name)
        shared: dict[str, AttributeValue] = {"db.system.name": system}
        if url.database:
            shared["db.namespace"] = url.database
        server: dict[str, AttributeValue] = {}
        if url.host:
            server["server.address"] = url.host
            if url.port is not None:
                server["server.port"] = url.port
        return cls(
            pool_name=url.render_as_string(hide_password=True),
            system=system,
            metric_attributes=shared,
            span_attributes={**shared, **server},
        )


@dataclass(frozen=True)
class _Execution:
    """A statement in flight."""

    span: Span
    metric_attributes: dict[str, AttributeValue]
    started: float


class _Pools:
    """Process-wide, like the listeners: engines seen so far (held weakly), waits per pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: weakref.WeakKeyDictionary[Engine, _EngineInfo] = weakref.WeakKeyDictionary()

    def register(self, engine: Engine) -> _EngineInfo:
        """Return the engine's cached attributes, registering it on first sight."""
        info = self._engines.get(engine)
        if info is None:
            info = _EngineInfo.of(engine)
            with self._lock:
                info = self._engines.setdefault(engine, info)
        return info

    def forget_engines(self) -> None:
        with self._lock:
            self._engines.clear()

    def engines(self) -> list[Engine]:
        """The engines registered so far (alive), in no particular order."""
        with self._lock:
            return list(self._engines)

    def current(self) -> list[tuple[str, Pool]]:
        """(pool name, pool) per registered engine, read now because ``dispose()`` swaps pools.

        Engines made by ``execution_options()`` share their parent's pool: each pool counts once.
        """
        with self._lock:
            engines = list(self._engines.items())
        pools: dict[int, tuple[str, Pool]] = {}
        for engine, info in engines:
            pools.setdefault(id(engine.pool), (info.pool_name, engine.pool))
        return list(pools.values())

    def name_of(self, pool: Pool) -> str | None:
        # Only needed on a timeout, which is rare: a scan is fine.
        return next((name for name, current in self.current() if current is pool), None)

    def add_pending(self, pool: Pool, delta: int) -> None:
        # Kept on the pool itself: one dict lookup per checkout instead of two weak-key lookups.
        counts = vars(pool)
        with self._lock:
            counts[_PENDING_ATTR] = counts.get(_PENDING_ATTR, 0) + delta

    def pending(self, pool: Pool) -> int:
        with self._lock:
            count: int = vars(pool).get(_PENDING_ATTR, 0)
            return count


_pools = _Pools()


def instrumented_engines() -> list[Engine]:
    """Engines passed to ``add_engine`` or seen opening a connection.

    The sync engine stands for an ``AsyncEngine``. The health checks run ``SELECT 1`` on them.
    """
    return _pools.engines()


class _Statement(NamedTuple):
    operation: str | None
    collection: str | None

    @property
    def attributes(self) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {}
        if self.operation:
            attributes["db.operation.name"] = self.operation
        if self.collection:
            attributes["db.collection.name"] = self.collection
        return attributes

    @property
    def span_name(self) -> str | None:
        if self.operation and self.collection:
            return f"{self.operation} {self.collection}"
        return self.operation


# String literals and comments can hold anything, keywords included: blank them before parsing.
_LITERALS_AND_COMMENTS = re.compile(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", re.DOTALL)
_OPERATION = re.compile(r"[\s(]*([A-Za-z]+)")
_IDENTIFIER = r'(?:"[^"]+"|`[^`]+`|\[[^\]]+\]|[\w$]+)'
_COLLECTION = re.compile(
    rf"\b(?:FROM|INTO|UPDATE)\s+({_IDENTIFIER}(?:\s*\.\s*{_IDENTIFIER})*)", re.IGNORECASE
)


@functools.lru_cache(maxsize=512)  # SQLAlchemy reuses compiled statements: parse each once
def _describe_statement(statement: str) -> _Statement:
    """Best-effort operation (first keyword) and collection (first table after FROM/INTO/UPDATE)."""
    text = _LITERALS_AND_COMMENTS.sub(" ", statement)
    operation = _OPERATION.match(text)
    collection = _COLLECTION.search(text)
    return _Statement(
        operation.group(1).upper() if operation else None,
        _unquote(collection.group(1)) if collection else None,
    )


def _unquote(name: str) -> str:
    return re.sub(r'["`\[\]]', "", re.sub(r"\s*\.\s*", ".", name))


def _with_traceparent_comment(statement: str, span: Span) -> str:
    """Append the span's trace context as a sqlcommenter comment, before a trailing ``;``."""
    if not span.get_span_context().is_valid:
        return statement
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    # sqlcommenter: sorted key='value' pairs, URL-encoded. quote(safe="") also encodes ' * and /,
    # so no value can end the comment or the quoted string early.
    pairs = ",".join(
        f"{quote(k, safe='')}='{quote(v, safe='')}'" for k, v in sorted(carrier.items())
    )
    body = statement.rstrip()
    if body.endswith(";"):
        return f"{body[:-1]} /*{pairs}*/;"
    return f"{body} /*{pairs}*/"


def _qualified_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


_reported: set[str] = set()


class _NeverRaise:
    """Swallow an instrumentation failure: logged in full once per place, then at debug level.

    A class rather than a ``@contextmanager``: it guards every statement and checkout, where a
    generator-based context manager cost more than the work it guards.
    """

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is None or not issubclass(exc_type, Exception):
            return False
        where = self.where
        if where in _reported:
            _logger.debug("otel_dist: SQLAlchemy instrumentation failed in %s", where, exc_info=exc)
        else:
            _reported.add(where)
            _logger.error(
                "otel_dist: SQLAlchemy instrumentation failed in %s; the application is unaffected",
                where,
                exc_info=exc,
            )
        return True


_never_raise = _NeverRaise


_GUARD_BEFORE = _NeverRaise("before_cursor_execute")
_GUARD_AFTER = _NeverRaise("after_cursor_execute")
_GUARD_CONNECT = _NeverRaise("engine_connect")
_GUARD_CHECKOUT = _NeverRaise("pool connect")
