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
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import sqlalchemy.exc
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import SpanKind, StatusCode, TracerProvider
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext, ExecutionContext
from sqlalchemy.pool import Pool, PoolProxiedConnection, QueuePool

from otel_dist.global_changes import CHANGES
from otel_dist.internal_log import internal_logger
from otel_dist.sql_engines import _Execution, _pools
from otel_dist.sql_statements import _with_traceparent_comment

__all__ = ["SqlAlchemyInstrumentation", "instrument_sqlalchemy"]

_logger = internal_logger()

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

_STATE = "db.client.connection.state"
_POOL_NAME = "db.client.connection.pool.name"

# Where a statement's in-flight span lives: on SQLAlchemy's per-execution context object, so it
# dies with the execution even if no closing event ever fires.
_EXECUTION_ATTR = "_otel_dist_execution"
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
                "otel-dist: SQLAlchemy is already instrumented; keeping the first providers "
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
            # Only our own patch is undone: if someone wrapped it since, theirs stays.
            CHANGES.unpatch(Pool, "connect")
            _pools.forget_engines()
            if _active is self:
                _active = None

    def _install(self) -> None:
        for identifier, listener, options in self._listeners:
            event.listen(Engine, identifier, listener, **options)
        CHANGES.patch(Pool, "connect", self._counting_pool_connect)
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
            _logger.debug("otel-dist: SQLAlchemy instrumentation failed in %s", where, exc_info=exc)
        else:
            _reported.add(where)
            _logger.error(
                "otel-dist: SQLAlchemy instrumentation failed in %s; the application is unaffected",
                where,
                exc_info=exc,
            )
        return True


_never_raise = _NeverRaise


_GUARD_BEFORE = _NeverRaise("before_cursor_execute")
_GUARD_AFTER = _NeverRaise("after_cursor_execute")
_GUARD_CONNECT = _NeverRaise("engine_connect")
_GUARD_CHECKOUT = _NeverRaise("pool connect")
