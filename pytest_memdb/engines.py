"""SQLAlchemy engines on an in-memory database (imports SQLAlchemy: load lazily).

Engines here are safe to use from any event loop and thread: aiosqlite runs each
call on its own worker thread and answers on the caller's loop, and the pool
never makes a caller wait (``pool_size=0`` means "no limit"), which is the only
time SQLAlchemy's async pool binds itself to one loop. That lets Starlette's
``TestClient`` run the app in its portal thread on our sessions.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

from pytest_memdb.memory import MemoryDatabase
from pytest_memdb.pragmas import Pragmas, apply_pragmas
from pytest_memdb.statements import leading_verb

BUSY_TIMEOUT_S = 5.0
"""How long a connection waits for another one's write lock, as ``sqlite3``'s default."""


def async_engine(database: MemoryDatabase, *, echo: bool, pragmas: Pragmas = ()) -> AsyncEngine:
    """An aiosqlite engine whose every connection opens ``database`` by name."""
    engine = create_async_engine(
        database.async_url,
        echo=echo,
        poolclass=AsyncAdaptedQueuePool,
        pool_size=0,
        connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
    )
    set_pragmas_on_connect(engine.sync_engine, pragmas)
    explain_lock_errors(engine.sync_engine)
    return engine


def sync_engine(database: MemoryDatabase, *, echo: bool, pragmas: Pragmas = ()) -> Engine:
    """A stdlib-``sqlite3`` engine on ``database``, for sync tests and set-up code."""
    engine = create_engine(
        database.sync_url,
        echo=echo,
        poolclass=QueuePool,
        pool_size=0,
        connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
    )
    set_pragmas_on_connect(engine, pragmas)
    explain_lock_errors(engine)
    return engine


LOCK_HINT = (
    "pytest-memdb: another connection to this in-memory database holds an uncommitted "
    "write. SQLite's memdb lets no other connection read or write past it (a database "
    f"file would let readers in), and this one gave up after the {BUSY_TIMEOUT_S:.0f} s busy "
    "timeout. Commit or roll back the other session first (in a test, often the test's own "
    "memdb_session before calling the app), or use memdb_isolation = rollback, where reads "
    "never wait."
)


def explain_lock_errors(engine: Engine) -> None:
    """Add what ``database is locked`` means here, and the way out, to SQLAlchemy's error."""

    def handle_error(context: Any) -> None:
        error = context.sqlalchemy_exception
        if error is not None and "database is locked" in str(context.original_exception):
            error.add_detail(LOCK_HINT)

    event.listen(engine, "handle_error", handle_error)


def set_pragmas_on_connect(engine: Engine, pragmas: Pragmas) -> None:
    """Apply ``memdb_pragmas`` to each new DBAPI connection, before any transaction."""
    if not pragmas:
        return

    def connect(dbapi_connection: Any, record: Any) -> None:
        apply_pragmas(dbapi_connection, pragmas)

    event.listen(engine, "connect", connect)


_STATEFUL_VERBS = frozenset(
    {"PRAGMA", "ATTACH", "DETACH", "CREATE", "DROP", "ALTER", "VACUUM", "REINDEX", "ANALYZE"}
)


def leaves_connection_state(statement: str) -> bool:
    """Whether ``statement`` may leave state on the connection that ran it, or change the schema.

    ``PRAGMA`` (``foreign_keys``, ``journal_mode``, ...), ``ATTACH``/``DETACH`` and
    ``CREATE TEMP ...`` outlive the transaction on that one connection; every other DDL
    is counted too (it is rare in tests, and a ``CREATE TABLE temp.x`` is DDL as well).
    """
    return leading_verb(statement) in _STATEFUL_VERBS


class EnginePair:
    """The async and sync engines of one database, made on first use, disposed together.

    With ``watch_state``, every statement run through either engine is looked at, and
    :attr:`stateful` turns True once one of them may have left per-connection state
    (see :func:`leaves_connection_state`): pooled connections must then not be reused.
    """

    def __init__(
        self,
        database: MemoryDatabase,
        *,
        echo: bool,
        pragmas: Pragmas = (),
        watch_state: bool = False,
    ) -> None:
        self._database = database
        self._echo = echo
        self._pragmas = pragmas
        self._watch = watch_state
        self._async: AsyncEngine | None = None
        self._sync: Engine | None = None
        self.stateful = False

    @property
    def async_engine(self) -> AsyncEngine:
        if self._async is None:
            self._async = async_engine(self._database, echo=self._echo, pragmas=self._pragmas)
            self._watch_engine(self._async.sync_engine)
        return self._async

    @property
    def sync_engine(self) -> Engine:
        if self._sync is None:
            self._sync = sync_engine(self._database, echo=self._echo, pragmas=self._pragmas)
            self._watch_engine(self._sync)
        return self._sync

    def _watch_engine(self, engine: Engine) -> None:
        if not self._watch:
            return

        def before_cursor_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if not self.stateful and leaves_connection_state(statement):
                self.stateful = True

        event.listen(engine, "before_cursor_execute", before_cursor_execute)

    async def aclose(self) -> None:
        """Close every pooled connection, so the database can be freed (engines stay usable)."""
        self.stateful = False
        if self._async is not None:
            await self._async.dispose()
        if self._sync is not None:
            self._sync.dispose()
