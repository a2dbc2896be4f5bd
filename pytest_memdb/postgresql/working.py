"""PostgreSQL's working database: what the backend-free driver
(:class:`~pytest_memdb.core.template.TemplateBase`) and the isolation strategies
(:mod:`pytest_memdb.core.isolation`) take turns on, by PostgreSQL's own means.

Imports SQLAlchemy and psycopg: load it lazily. One :class:`PgWorkingDatabase` serves the
``copy`` and ``rollback`` tests of a template (another one its ``session`` tests), as on
SQLite; what is under it differs:

* ``copy`` tests get :class:`MovableEngines` on a clone of the template (made ahead in the
  background by :class:`~pytest_memdb.postgresql.clones.ClonePool`). After a copy test the
  clone is given back (dropped in the background, ``WITH (FORCE)``: the connections the test
  leaked go with it) and the next copy test moves the same engine objects to the next
  clone. There is no cheap, certain way to know that nothing was written (PostgreSQL has no
  per-database ``data_version``: its statistics counters are flushed lazily), so every
  copy test gets a new clone;
* ``rollback`` tests get :class:`SharedSession`: one server session held on a clone of its
  own, each test in an outer transaction, verified at its end
  (:mod:`pytest_memdb.postgresql.rollback`); nothing to restore after a test that did not
  escape; after one that did, the held session moves to a fresh clone;
* ``memdb.reset()`` (``keep_name``) makes the test's database again under the *same* name
  (its connections ended, a clone made ahead renamed into its place:
  :meth:`~pytest_memdb.postgresql.clones.ClonePool.renew`), so ``memdb.url`` and every
  engine built from it keep reaching it (moving to another clone left them on the old one:
  found by the hostile pass).

A connection a test leaked never makes the next test wait: it holds no database-wide lock
(the next copy test is on another clone; rollback's working database takes no other
connection; a row lock is waited for ``lock_timeout`` at most), so :meth:`is_free` is
always true.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.isolation import EngineSource
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.errors import MemdbWarning
from pytest_memdb.postgresql import dumps
from pytest_memdb.postgresql.clones import ClonePool, Cluster
from pytest_memdb.postgresql.rollback import (
    LOCK_TIMEOUT_S,
    RollbackIsolation,
    conninfo,
    lock_wait_error,
    unbind_locks,
)

DRIVER_SYNC = "postgresql+psycopg"
"""The driver of the plugin's engines, sync and async: psycopg's connections do not belong
to one event loop, and pytest-asyncio gives each test its own (asyncpg's would not outlive
it; see :mod:`pytest_memdb.postgresql.rollback`)."""


@dataclass(frozen=True)
class PgDatabase:
    """What a handle shows of a PostgreSQL database: its name and URLs."""

    name: str
    url: URL

    @property
    def async_url(self) -> str:
        """The database's URL for ``create_async_engine`` (psycopg's async driver)."""
        return self.url.set(drivername=DRIVER_SYNC).render_as_string(hide_password=False)

    @property
    def sync_url(self) -> str:
        """The database's URL for ``create_engine``."""
        return self.url.set(drivername=DRIVER_SYNC).render_as_string(hide_password=False)


_LOCK = f"-c lock_timeout={int(LOCK_TIMEOUT_S * 1000)}"
"""Copy and session engines wait for a row lock as long as rollback's held session does:
a lock nobody will release (the test's own uncommitted write, a leaked connection's
``FOR UPDATE``) is then an error, not a hang (PostgreSQL's deadlock detector cannot see a
holder that is not waiting)."""


class MovableEngines:
    """A sync and an async engine whose connections go to the *current* database: moving
    them to another clone (:meth:`move_to`) keeps the same engine objects, so every engine,
    sessionmaker and session handed out stays usable after ``memdb.reset()``.

    Their connections are pooled (SQLAlchemy's default pools) for one test: a test that
    opens several sessions (a FastAPI test's requests) reuses them instead of connecting
    again (a connection costs 3-5 ms here). At the test's end (:meth:`end_test`) the pools
    are emptied, so the next test, ``session`` mode's too, starts on new connections: what a
    test leaves on a connection (``SET``, ``SET SESSION CHARACTERISTICS``, temp tables,
    prepared statements, ``LISTEN``, advisory locks) never reaches it, and the
    ``lock_timeout`` every connection starts with bounds its waits (a pooled connection with
    ``lock_timeout = 0`` made the next session test hang: the hostile pass). A connection
    the test left checked out (never closed) is ended by the server then, its transaction
    and locks with it, as SQLite's engines close theirs. Async ones made in an earlier
    event loop get new ``asyncio`` locks at checkout
    (:func:`~pytest_memdb.postgresql.rollback.unbind_locks`)."""

    def __init__(self, database: PgDatabase, *, echo: bool, server_version: int = 0) -> None:
        self.database = database
        self.server_version = server_version
        """The server's ``server_version_num`` (the ``pg_dump`` it needs)."""
        url = database.url.set(drivername=DRIVER_SYNC)
        # no cap (max_overflow=-1): connections a test leaks must not make a later one wait
        self.async_engine: AsyncEngine = create_async_engine(
            url, async_creator=self._connect_async, max_overflow=-1, echo=echo
        )
        self.sync_engine: Engine = create_engine(
            url, creator=self._connect_sync, max_overflow=-1, echo=echo
        )
        self._out: dict[int, int] = {}
        """The connections checked out now: the record's id -> the server's pid."""
        for engine in (self.sync_engine, self.async_engine.sync_engine):
            event.listen(engine, "handle_error", self._name_lock_holders)
            event.listen(engine.pool, "checkout", self._checked_out)
            event.listen(engine.pool, "checkin", self._checked_in)
        event.listen(self.async_engine.sync_engine, "checkout", unbind_locks)

    def _checked_out(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        raw = record.driver_connection
        if isinstance(raw, psycopg.Connection | psycopg.AsyncConnection):
            self._out[id(record)] = raw.info.backend_pid

    def _checked_in(self, dbapi_connection: Any, record: Any) -> None:
        self._out.pop(id(record), None)

    def end_test(self, end_sessions: Callable[[list[int]], None]) -> None:
        """The test is over: ``end_sessions`` ends the connections it left checked out (by
        their server pids), and the pools are emptied (see the class doc)."""
        leaked, self._out = list(self._out.values()), {}
        if leaked:
            end_sessions(leaked)
        run_sync(self.aclose())

    def _name_lock_holders(self, context: Any) -> Exception | None:
        """A lock wait that reached ``lock_timeout`` names the sessions holding locks on the
        database (rollback's held session does the same), not only PostgreSQL's "canceling
        statement due to lock timeout"."""
        if not isinstance(context.original_exception, psycopg.errors.LockNotAvailable):
            return None
        driver = getattr(context.connection, "connection", None)
        raw = getattr(driver, "driver_connection", None)
        me = (
            raw.info.backend_pid
            if isinstance(raw, psycopg.Connection | psycopg.AsyncConnection)
            else 0
        )
        return lock_wait_error(context, self.database.url, me, LOCK_TIMEOUT_S)

    def _connect_sync(self) -> psycopg.Connection[Any]:
        return psycopg.connect(**conninfo(self.database.url), options=_LOCK, connect_timeout=10)

    async def _connect_async(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            **conninfo(self.database.url), options=_LOCK, connect_timeout=10
        )

    def move_to(self, database: PgDatabase) -> None:
        """Point the engines at ``database`` (closed by :meth:`aclose` before: nothing
        pooled reaches the old one). Their ``url`` says which (the creators connect;
        ``memdb_queries`` and reprs read it)."""
        self.database = database
        url = database.url.set(drivername=DRIVER_SYNC)
        self.sync_engine.url = url
        self.async_engine.sync_engine.url = url

    async def aclose(self) -> None:
        """Close every pooled connection (the checked-out ones a test leaked are ended by
        :meth:`end_test`, or with their database)."""
        await self.async_engine.dispose()
        self.sync_engine.dispose()

    dump_suffix = dumps.SUFFIX

    def dump(self, path: Path) -> str:
        """``--memdb-keep-failed`` in copy and session mode: ``pg_dump`` of the clone the
        engines are on (:mod:`pytest_memdb.postgresql.dumps`); what the file holds."""
        program = dumps.find_pg_dump(self.server_version)
        return dumps.dump_database(program, self.database.url, path)


class SharedSession:
    """Rollback mode's held session, as the handle and the strategies see it."""

    def __init__(self, isolation: RollbackIsolation, cluster: Cluster) -> None:
        self.isolation = isolation
        self._cluster = cluster

    @property
    def async_engine(self) -> AsyncEngine:
        return self.isolation.async_engine

    @property
    def sync_engine(self) -> Engine:
        return self.isolation.sync_engine

    @property
    def database(self) -> PgDatabase:
        name = self.isolation.database
        return PgDatabase(name, self._cluster.url_for(name))

    def begin_test(self) -> None:
        self.isolation.begin_test()

    def end_test(self) -> str | None:
        verdict = self.isolation.end_test()
        left = [*verdict.state]
        if verdict.others:
            left.append(f"other sessions on the working database (ended): {verdict.others}")
        if left and verdict.escape is None:
            warnings.warn(
                MemdbWarning(
                    "pytest-memdb: the test left session state on rollback mode's held "
                    "PostgreSQL session, cleared before the next test (DISCARD ALL): "
                    + "; ".join(left)
                ),
                stacklevel=2,
            )
        return verdict.escape

    dump_suffix = dumps.SUFFIX

    def dump(self, path: Path) -> str:
        """``--memdb-keep-failed``: what the held session sees, the test's uncommitted outer
        transaction included, as a ``.sql`` file (:mod:`pytest_memdb.postgresql.dumps`):
        the schema from a scratch clone of the template (the working database takes no
        other connection), dropped afterwards. What the file holds, in words."""
        program = dumps.find_pg_dump(self._cluster.server_version)
        scratch = self._cluster.new_name("keep")
        self._cluster.create(scratch, template=self.isolation.pool.template.name)
        try:
            return dumps.dump_held_session(
                program, self.isolation.session.raw, self._cluster.url_for(scratch), path
            )
        finally:
            self._cluster.drop(scratch)


class PgWorkingDatabase:
    """One template's working database on the server (see the module doc)."""

    def __init__(self, pool: ClonePool, *, echo: bool, stats: MemdbStats) -> None:
        self._pool = pool
        self._cluster = pool.cluster
        self._echo = echo
        self._stats = stats
        self._engines: MovableEngines | None = None
        self._current: str | None = None
        """The clone the copy engines are on; None once given back (the next copy test
        takes another)."""
        self._shared: SharedSession | None = None
        self.last_handed: object = None

    def _database(self, name: str) -> PgDatabase:
        return PgDatabase(name, self._cluster.url_for(name))

    @property
    def engines(self) -> MovableEngines:
        """The copy tests' engines, on a clone of their own (taken on first use)."""
        if self._current is None:
            self._current = self._pool.take()
            if self._engines is None:
                self._engines = MovableEngines(
                    self._database(self._current),
                    echo=self._echo,
                    server_version=self._cluster.server_version,
                )
            else:
                self._engines.move_to(self._database(self._current))
        assert self._engines is not None
        return self._engines

    @property
    def shared(self) -> SharedSession:
        """Rollback mode's held session, on a clone of its own (made on first use)."""
        if self._shared is None:
            self._shared = SharedSession(RollbackIsolation(self._pool), self._cluster)
        return self._shared

    @property
    def shared_if_made(self) -> SharedSession | None:
        return self._shared

    def database_of(self, engines: EngineSource) -> PgDatabase:
        """The clone ``engines`` (the copy engines or the held session) reach."""
        database = getattr(engines, "database", None)
        assert isinstance(database, PgDatabase)
        return database

    def is_free(self) -> bool:
        """Always (see the module doc)."""
        return True

    def make_equal(
        self,
        *,
        after_test: bool = False,
        force: bool = False,
        doubt: bool = False,
        keep_name: bool = False,
    ) -> bool:
        """Before a test: nothing (a copy test takes its clone when it asks for the
        engines). After a copy test (or with ``force``: a ``session`` database's reset): its
        clone given back, or with ``keep_name`` (a reset) made again under the same name.
        After a rollback test: nothing; its end was verified (an escape moved the held
        session to a fresh clone)."""
        if not after_test:
            return True
        copied = self.last_handed is self._engines
        if self._engines is None or self._current is None or not (copied or force):
            self._stats.restores_none += 1
            return True
        # the engines' pools were emptied by close_leftovers, just before (core's _wind_down)
        if keep_name:
            self._pool.renew(self._current)
        else:
            self._pool.give_back(self._current)
            self._current = None
        self._stats.restored("clone")
        return True

    def close_leftovers(self) -> None:
        """The copy or session engines' connections ended and closed (see
        :meth:`MovableEngines.end_test`)."""
        if self._engines is not None:
            self._engines.end_test(self._end_sessions)

    def _end_sessions(self, pids: list[int]) -> None:
        with self._cluster.admin.connect() as conn:
            for pid in pids:
                conn.execute(text("SELECT pg_terminate_backend(:pid, 1000)"), {"pid": pid})

    def needs_settling(self, source: object) -> bool:
        """Never: the copy engines pool nothing (each test connects anew), and the held
        session's state is checked and cleared by its own end (``DISCARD ALL``)."""
        return False

    def settle_if_needed(
        self, source: object, *, keep_engines: bool = False, needed: bool | None = None
    ) -> None:
        self.last_handed = source

    async def aclose(self) -> None:
        """Close the engines and the held session; their clones are dropped."""
        try:
            if self._engines is not None:
                await self._engines.aclose()
            if self._current is not None:
                self._pool.give_back(self._current)
                self._current = None
        finally:
            shared, self._shared = self._shared, None
            if shared is not None:
                shared.isolation.close()
