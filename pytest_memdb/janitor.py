"""The handle on one test's database: what the ``memdb`` fixture gives, and who cleans up.

Imports SQLAlchemy: load it lazily (the plugin does, on the first memdb fixture).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine, event, orm, util
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from pytest_memdb._loop import run_sync
from pytest_memdb.config import Isolation
from pytest_memdb.dumps import save_committed
from pytest_memdb.memory import MemoryDatabase
from pytest_memdb.queries import QueryCounter


class EngineSource(Protocol):
    """Where a handle's engines come from (an :class:`EnginePair` or a rollback connection)."""

    @property
    def async_engine(self) -> AsyncEngine: ...

    @property
    def sync_engine(self) -> Engine: ...


class MemdbHandle:
    """One test's in-memory database and the SQLAlchemy objects on it.

    Sessions made here use ``expire_on_commit=False``, as SQLAlchemy's asyncio
    docs advise: after ``commit()`` an expired attribute would need lazy I/O,
    which async code cannot do implicitly (``MissingGreenlet``).
    """

    def __init__(
        self,
        *,
        database: MemoryDatabase,
        source: Path | None,
        isolation: Isolation,
        engines: EngineSource,
        release: Callable[[], None],
        save: Callable[[Path], Path] | None = None,
    ) -> None:
        self.database = database
        self.source = source
        """The fixture file the database was copied from (None for a metadata-only one)."""
        self.isolation: Isolation = isolation
        self._engines = engines
        self._release = release
        self._save = save
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._sync_sessionmaker: orm.sessionmaker[orm.Session] | None = None
        self._closed = False
        # Rollback mode's one shared connection is rolled back at teardown instead.
        self._watch = (
            None
            if isolation == "rollback"
            else CheckoutWatch([engines.async_engine.sync_engine, engines.sync_engine])
        )

    @property
    def name(self) -> str:
        """The in-memory database's name (unique per run and xdist worker)."""
        return self.database.name

    @property
    def url(self) -> str:
        """The ``sqlite+aiosqlite://`` URL of this database."""
        return self.database.async_url

    @property
    def sync_url(self) -> str:
        """The ``sqlite://`` URL of this database, for ``create_engine``."""
        return self.database.sync_url

    @property
    def engine(self) -> AsyncEngine:
        return self._engines.async_engine

    @property
    def sync_engine(self) -> Engine:
        return self._engines.sync_engine

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        """Hand this to application code (for example a FastAPI dependency override)."""
        if self._sessionmaker is None:
            self._sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        return self._sessionmaker

    @property
    def sync_sessionmaker(self) -> orm.sessionmaker[orm.Session]:
        if self._sync_sessionmaker is None:
            self._sync_sessionmaker = orm.sessionmaker(self.sync_engine, expire_on_commit=False)
        return self._sync_sessionmaker

    def session(self) -> AsyncSession:
        """A new ``AsyncSession``; use it as ``async with memdb.session() as session:``."""
        return self.sessionmaker()

    @property
    def queries(self) -> QueryCounter:
        """Count or cap the statements run on this database (the ``memdb_queries`` fixture)."""
        return QueryCounter(self.name)

    def save(self, path: Path) -> Path:
        """Write this database, as the test sees it now, to ``path`` as a SQLite file.

        In ``rollback`` mode that includes what the test committed (which lives only
        inside the outer transaction) and its sessions' uncommitted writes; in the
        other modes, what was committed.
        """
        if self._save is not None:
            return self._save(path)
        return save_committed(self.database, path)

    def close(self) -> None:
        """Undo or free this test's database; safe to call twice."""
        if not self._closed:
            self._closed = True
            try:
                if self._watch is not None:
                    self._watch.close_leftovers()
            finally:
                self._release()

    def __repr__(self) -> str:
        return f"<MemdbHandle {self.name} isolation={self.isolation} source={str(self.source)!r}>"


class CheckoutWatch:
    """Connections a test takes from its engines' pools; those never given back are closed.

    A test that ends (fails, is skipped, is interrupted) with a session it never closed
    keeps a pooled connection, and with it any write still pending: in ``session`` mode
    that write lock would make every later test wait for the busy timeout and fail with
    "database is locked"; in ``copy`` mode the connection would keep its copy's memory
    and its aiosqlite thread. Closing the connection rolls the pending write back.
    """

    def __init__(self, engines: list[Engine]) -> None:
        self._pools = [engine.pool for engine in engines]
        self._out: dict[int, ConnectionPoolEntry] = {}
        for pool in self._pools:
            event.listen(pool, "checkout", self._checkout)
            event.listen(pool, "checkin", self._checkin)

    def _checkout(self, dbapi_conn: object, record: ConnectionPoolEntry, proxy: object) -> None:
        self._out[id(record)] = record

    def _checkin(self, dbapi_conn: object, record: ConnectionPoolEntry) -> None:
        self._out.pop(id(record), None)

    def close_leftovers(self) -> None:
        """Stop watching; close every connection still checked out (safe to call twice)."""
        for pool in self._pools:
            if event.contains(pool, "checkout", self._checkout):
                event.remove(pool, "checkout", self._checkout)
                event.remove(pool, "checkin", self._checkin)
        leftovers, self._out = list(self._out.values()), {}
        if leftovers:
            run_sync(util.greenlet_spawn(_invalidate, leftovers))


def _invalidate(entries: list[ConnectionPoolEntry]) -> None:
    for entry in entries:
        entry.invalidate()
