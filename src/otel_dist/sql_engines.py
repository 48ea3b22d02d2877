"""What the SQLAlchemy instrumentation keeps per engine and per pool (held weakly).

Each engine's description of the statements it ran (span name and attributes, computed once per
statement text), and the pools to observe with their pending checkouts.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from otel_dist.sql_statements import _describe_statement

# Dialect names whose semconv `db.system.name` differs; any other dialect name is used as is.
_DB_SYSTEM_NAMES = {"mssql": "microsoft.sql_server", "oracle": "oracle.db"}
# Checkouts waiting for a connection, kept on the pool object (it dies with the pool).
_PENDING_ATTR = "_otel_dist_pending"
# Statements whose span name and attributes are kept per engine (SQLAlchemy reuses compiled
# statements, so an app has few); more than that are described anew each time.
_PREPARED_LIMIT = 512


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
