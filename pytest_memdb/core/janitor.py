"""The handle on one test's database: what the ``memdb`` fixture gives, and who cleans up.

Imports SQLAlchemy: load it lazily (the plugin does, on the first memdb fixture).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from sqlalchemy import Engine, orm
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pytest_memdb.core.config import Isolation
from pytest_memdb.core.isolation import Database, EngineSource
from pytest_memdb.errors import MemdbError
from pytest_memdb.integrations.queries import QueryCounter
from pytest_memdb.integrations.sessions import DEFAULT_CLASSES, SessionClasses, SyncMakers
from pytest_memdb.messages import TEST_ENDED


@runtime_checkable
class Dumps(Protocol):
    """Engines that write their database out (``--memdb-keep-failed``), as a file of their
    backend's kind (SQLite's ``.sqlite``, PostgreSQL's ``.sql``:
    :mod:`pytest_memdb.postgresql.dumps`)."""

    dump_suffix: str

    def dump(self, path: Path) -> str:
        """Write the database, as the test sees it now, to ``path``; what, in words."""


class MemdbHandle:
    """One test's in-memory database and the SQLAlchemy objects on it.

    Sessions made here use ``expire_on_commit=False``, as SQLAlchemy's asyncio
    docs advise: after ``commit()`` an expired attribute would need lazy I/O,
    which async code cannot do implicitly (``MissingGreenlet``).
    """

    def __init__(
        self,
        *,
        database: Database,
        source: Path | None,
        isolation: Isolation,
        engines: EngineSource,
        release: Callable[[], None],
        classes: SessionClasses = DEFAULT_CLASSES,
        sync_makers: SyncMakers | None = None,
        restart: Callable[[], EngineSource] | None = None,
    ) -> None:
        self.database = database
        self.source = source
        """The fixture file the database was copied from (None for a metadata-only one)."""
        self.isolation: Isolation = isolation
        self._engines = engines
        self._release = release
        self._classes = classes
        self._sync_makers = sync_makers or SyncMakers(classes)
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._sync_sessionmaker: orm.sessionmaker[orm.Session] | None = None
        self._closed = False
        self._restart = restart
        self._sessions: list[weakref.ref[AsyncSession | orm.Session]] = []
        """The sessions :meth:`session` and :meth:`sync_session` made, closed by a reset."""
        self._around_reset: list[tuple[Callable[[], None], Callable[[EngineSource], None]]] = []

    @property
    def engines_handed(self) -> EngineSource:
        """The engines this test was handed (a reset may hand new ones)."""
        return self._engines

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
        """A ``sessionmaker`` of this test's own (on the ``Session`` subclass made once per
        engine: making one costs 128 us), so ending the test ends it alone."""
        if self._sync_sessionmaker is None:
            shared = self._sync_makers.for_engine(self.sync_engine)
            mine: orm.sessionmaker[orm.Session] = object.__new__(orm.sessionmaker)
            mine.__dict__.update(shared.__dict__)
            mine.kw = dict(shared.kw)
            self._sync_sessionmaker = mine
        return self._sync_sessionmaker

    def session(self) -> AsyncSession:
        """A new ``AsyncSession``; use it as ``async with memdb.session() as session:``."""
        session = self.sessionmaker()
        self._sessions.append(weakref.ref(session))
        return session

    def sync_session(self) -> orm.Session:
        """A new ``Session`` on the sync engine; ``with memdb.sync_session() as session:``."""
        session = self.sync_sessionmaker()
        self._sessions.append(weakref.ref(session))
        return session

    def reset(self) -> None:
        """Start again from the template, within one test: one Hypothesis example after another.

        Closes the sessions this handle made (the ``memdb_session`` and
        ``memdb_sync_session`` fixtures' too: they stay usable, empty, and begin anew on
        their next statement), rolls back or restores what the test did, as its isolation
        mode does at teardown (in ``session`` mode too), and begins again. An escape from
        ``rollback`` isolation is reported here, as at teardown. In an async test, ``await
        memdb.areset()`` does the same without leaving the test's event loop.
        """
        from pytest_memdb.core._loop import run_sync

        for session in self._made_sessions():
            if isinstance(session, AsyncSession):
                run_sync(session.close())
            else:
                session.close()
        self._begin_again()

    async def areset(self) -> None:
        """:meth:`reset`, awaited in the test's own event loop."""
        for session in self._made_sessions():
            if isinstance(session, AsyncSession):
                await session.close()
            else:
                session.close()
        self._begin_again()

    def _made_sessions(self) -> list[AsyncSession | orm.Session]:
        alive = [made for made in (ref() for ref in self._sessions) if made is not None]
        self._sessions = [weakref.ref(made) for made in alive]
        return alive

    def around_reset(
        self, before: Callable[[], None], after: Callable[[EngineSource], None]
    ) -> None:
        """Have ``before`` run at each reset before the database is restored, and ``after``
        with the engines the test has after it: what the plugin does at the test's end and
        start for this handle (``memdb_takeover``'s connections closed, then the suite's
        engines pointed at it again), a reset does too."""
        self._around_reset.append((before, after))

    def _begin_again(self) -> None:
        if self._closed or self._restart is None:
            raise MemdbError(f"pytest-memdb: {self.name} cannot be reset: it was handed back.")
        for before, _ in self._around_reset:
            before()
        self._engines = self._restart()
        self._rebind()
        for _, after in self._around_reset:
            after(self._engines)

    def _rebind(self) -> None:
        """Point this handle's sessionmakers and sessions at the engines the test has now.

        A reset replaces engines a test changed (listeners, options) and renews rollback's
        shared connection after per-connection state; the sessions the test holds (its
        fixtures') and the sessionmakers it handed the app are re-bound in place
        (``configure(bind=...)``), so they reach the new ones.
        """
        if self._sessionmaker is not None and self._sessionmaker.kw.get("bind") is not self.engine:
            self._sessionmaker.configure(bind=self.engine)
        sync_maker = self._sync_sessionmaker
        if sync_maker is not None and sync_maker.kw.get("bind") is not self.sync_engine:
            sync_maker.configure(bind=self.sync_engine)
        for session in self._made_sessions():
            if isinstance(session, AsyncSession):
                if session.bind is not self.engine:
                    session.bind = self.engine
                    session.sync_session.bind = self.engine.sync_engine
            elif session.bind is not self.sync_engine:
                session.bind = self.sync_engine

    @property
    def queries(self) -> QueryCounter:
        """Count or cap the statements run on this database (the ``memdb_queries`` fixture)."""
        return QueryCounter(self.name)

    @property
    def dump_suffix(self) -> str:
        """What the file :meth:`save` writes ends with: ``.sqlite``, or the backend's
        (PostgreSQL's ``.sql``)."""
        return self._engines.dump_suffix if isinstance(self._engines, Dumps) else ".sqlite"

    def save(self, path: Path) -> str:
        """Write this database, as the test sees it now, to ``path``, as a file of its
        backend's kind (:attr:`dump_suffix`): the engines do it (:class:`Dumps`: SQLite's
        :class:`~pytest_memdb.sqlite.engines.EnginePair` and shared connection, PostgreSQL's
        :mod:`pytest_memdb.postgresql.dumps`). Returns what was written, in words."""
        if isinstance(self._engines, Dumps):
            return self._engines.dump(path)
        raise MemdbError(f"pytest-memdb: {self.database.name!r} cannot be written to a file.")

    def close(self) -> None:
        """Hand the database back (undone, as the isolation mode says); safe to call twice.

        Raises :class:`~pytest_memdb.errors.IsolationError` when the test escaped its
        isolation, after the database was made equal to the template again.
        """
        if not self._closed:
            self._closed = True
            try:
                self._release()
            finally:
                self._retire()

    def _retire(self) -> None:
        """Make what this test was handed fail from now on: its sessionmakers and the
        sessions made here are pointed at engines that refuse to connect, with an error
        saying why. The working database is the next test's: an asyncio task or a thread
        the test left running would otherwise write into it (the engines themselves, and
        ``memdb.url``, are shared by the tests of a template and stay out of reach)."""
        if self._sessionmaker is None and self._sync_sessionmaker is None and not self._sessions:
            return
        ended_async, ended_sync = _ended_engines()
        if self._sessionmaker is not None:
            self._sessionmaker.configure(bind=ended_async)
        if self._sync_sessionmaker is not None:
            self._sync_sessionmaker.configure(bind=ended_sync)
        for session in self._made_sessions():
            if isinstance(session, AsyncSession):
                session.bind = ended_async
                session.sync_session.bind = ended_sync
            else:
                session.bind = ended_sync

    def __repr__(self) -> str:
        return f"<MemdbHandle {self.name} isolation={self.isolation} source={str(self.source)!r}>"


_ended: list[tuple[AsyncEngine, Engine]] = []


def _refuse(engine: Engine) -> None:
    raise MemdbError(TEST_ENDED())


def _ended_engines() -> tuple[AsyncEngine, Engine]:
    """Engines that never connect (made once): where a finished test's sessions point."""
    if not _ended:
        from sqlalchemy import create_engine
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        made_async = create_async_engine("sqlite+aiosqlite://", poolclass=NullPool)
        made_sync = create_engine("sqlite://", poolclass=NullPool)
        for engine in (made_async.sync_engine, made_sync):
            engine._connection_cls = _refuse  # type: ignore[assignment]
        _ended.append((made_async, made_sync))
    return _ended[0]
