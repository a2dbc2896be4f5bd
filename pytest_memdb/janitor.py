"""The handle on one test's database: what the ``memdb`` fixture gives, and who cleans up.

Imports SQLAlchemy: load it lazily (the plugin does, on the first memdb fixture).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, orm
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pytest_memdb.config import Isolation
from pytest_memdb.dumps import save_committed, save_connection_view
from pytest_memdb.isolation import EngineSource
from pytest_memdb.memory import MemoryDatabase
from pytest_memdb.queries import QueryCounter
from pytest_memdb.sessions import DEFAULT_CLASSES, SessionClasses, SyncMakers


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
        classes: SessionClasses = DEFAULT_CLASSES,
        sync_makers: SyncMakers | None = None,
    ) -> None:
        self.database = database
        self.source = source
        """The fixture file the database was copied from (None for a metadata-only one)."""
        self.isolation: Isolation = isolation
        self._engines = engines
        self._release = release
        self._save = save
        self._classes = classes
        self._sync_makers = sync_makers or SyncMakers(classes)
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._sync_sessionmaker: orm.sessionmaker[orm.Session] | None = None
        self._closed = False

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
            self._sessionmaker = async_sessionmaker(
                self.engine, class_=self._classes.async_class, expire_on_commit=False
            )
        return self._sessionmaker

    @property
    def sync_sessionmaker(self) -> orm.sessionmaker[orm.Session]:
        if self._sync_sessionmaker is None:
            self._sync_sessionmaker = self._sync_makers.for_engine(self.sync_engine)
        return self._sync_sessionmaker

    def session(self) -> AsyncSession:
        """A new ``AsyncSession``; use it as ``async with memdb.session() as session:``."""
        return self.sessionmaker()

    @property
    def queries(self) -> QueryCounter:
        """Count or cap the statements run on this database (the ``memdb_queries`` fixture)."""
        return QueryCounter(self.name)

    def save(self, path: Path) -> str:
        """Write this database, as the test sees it now, to ``path`` as a SQLite file.

        In ``rollback`` mode that includes what the test committed (which lives only
        inside the outer transaction) and its sessions' uncommitted writes; in the
        other modes, what was committed, or, when a session of the test still holds a
        write (SQLite's memdb then lets no other connection read), what that session sees:
        the committed rows and its pending ones. Returns what was written, in words.
        """
        if self._save is not None:
            self._save(path)
            return "the database as the test left it"
        try:
            save_committed(self.database, path)
        except sqlite3.OperationalError:
            writer = getattr(self._engines, "pending_writer", lambda: None)()
            if writer is None:
                raise
            save_connection_view(writer, path)
            return (
                "the database as the test left it, with the uncommitted writes of the "
                "session that held them,"
            )
        return "the database as the test left it"

    def close(self) -> None:
        """Hand the database back (undone, as the isolation mode says); safe to call twice.

        Raises :class:`~pytest_memdb.errors.IsolationError` when the test escaped its
        isolation, after the database was made equal to the template again.
        """
        if not self._closed:
            self._closed = True
            self._release()

    def __repr__(self) -> str:
        return f"<MemdbHandle {self.name} isolation={self.isolation} source={str(self.source)!r}>"
