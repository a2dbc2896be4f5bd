"""SQLAlchemy engines on an in-memory database, and what a test may leave on them.

Imports SQLAlchemy: load lazily. Engines here are safe to use from any event loop and
thread: aiosqlite runs each call on its own worker thread and answers on the caller's
loop, and the pool never makes a caller wait (``pool_size=0`` means "no limit"), which
is the only time SQLAlchemy's async pool binds itself to one loop. That lets
Starlette's ``TestClient`` run the app in its portal thread on our sessions.

The engines outlive the test that was handed them (their pooled connections and
SQLAlchemy's compiled-statement cache serve every test), so :class:`EnginePair` also
keeps each test from reaching the next through them:

* connections checked out and never given back are closed at the test's end (their
  pending writes rolled back);
* per-connection state (a PRAGMA, ``ATTACH``, a temp table, a function registered on
  the driver connection) empties the pools (:mod:`pytest_memdb.sqlite.connections`);
* event listeners a test added to an engine, its pool or its dialect are found by
  comparing the listeners with those the engine was made with, and the engines are then
  replaced by new ones, so they never fire in a later test;
* a ``connect`` listener added while connections are pooled would not fire for them, as
  it would on a fresh engine: a checkout notices and makes the pool open a new one;
* an invalidated connection (SQLAlchemy invalidates one whose statement was cancelled,
  by ``asyncio.wait_for`` or a timeout) is interrupted first, so the statement stops
  instead of running on in its worker thread with a lock held.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy import Engine, create_engine, event, exc, util
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, QueuePool

from pytest_memdb.core.collector import collection_paused
from pytest_memdb.sqlite.connections import (
    BUSY_TIMEOUT_S,
    TrackedConnection,
    connect,
    leaves_connection_state,
)
from pytest_memdb.sqlite.dumps import save_committed, save_connection_view
from pytest_memdb.sqlite.memory import MemoryDatabase
from pytest_memdb.sqlite.pragmas import Pragmas, apply_pragmas

__all__ = ["BUSY_TIMEOUT_S", "EnginePair", "leaves_connection_state"]

CLOSE_WAIT_S = 2.0
"""How long closing an aiosqlite connection waits for its worker thread (it answers in
microseconds when it runs)."""


class MemdbAioConnection(aiosqlite.Connection):
    """aiosqlite's connection, knowing the tracked ``sqlite3`` connection it runs on.

    ``commit()`` and ``rollback()`` with no transaction open return at once instead of
    sending a no-op to the worker thread: SQLAlchemy ends every connection's use with one
    (the pool's reset, a session that only read), and each hop costs 30-100 us here.
    """

    memdb_raw: TrackedConnection | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SQLAlchemy's dialect makes the worker thread a daemon only for connections it opens
        # itself, not an async_creator's (ours): without this, a pooled connection nobody
        # disposed keeps the interpreter waiting for its thread at exit, forever (a script
        # using InMemoryDatabase as the README shows never exited).
        self._thread.daemon = True

    async def commit(self) -> None:
        if self.memdb_raw is None or self.memdb_raw.in_transaction:
            await super().commit()

    async def rollback(self) -> None:
        if self.memdb_raw is None or self.memdb_raw.in_transaction:
            await super().rollback()

    async def close(self) -> None:
        """aiosqlite's close, bounded: never waits on a worker thread that has stopped.

        SQLAlchemy terminates a pooled connection whose session was garbage-collected (a
        session a test leaked): that stops aiosqlite's worker thread, from whichever
        thread the collector ran in, and can do so between aiosqlite's own "still
        running" check and its queueing of the close, whose answer then never comes (seen:
        a hang, once in a few hundred Hypothesis examples that each leaked a session, when
        the plugin closed the leftovers). The worker's own stop closes the ``sqlite3``
        connection; here it is closed directly when the worker is gone or does not answer.
        """
        thread = getattr(self, "_thread", None)
        if self._connection is not None and (thread is None or thread.is_alive()):
            try:
                await asyncio.wait_for(super().close(), CLOSE_WAIT_S)
                return
            except TimeoutError:
                pass
        self._connection = None
        if self.memdb_raw is not None:
            self.memdb_raw.close()  # rolls back what it held; closing twice is harmless


def raw_connection(dbapi_connection: object) -> TrackedConnection | None:
    """The tracked ``sqlite3`` connection under a pool's DBAPI connection, sync or async."""
    if isinstance(dbapi_connection, TrackedConnection):
        return dbapi_connection
    driver = getattr(dbapi_connection, "driver_connection", None)
    raw = getattr(driver, "memdb_raw", None)
    return raw if isinstance(raw, TrackedConnection) else None


async def open_aio(uri: str) -> MemdbAioConnection:
    """A new aiosqlite connection on a tracked ``sqlite3`` connection to ``uri``."""
    made: list[TrackedConnection] = []
    abandoned: list[bool] = []

    def connector() -> TrackedConnection:  # on aiosqlite's worker thread
        made.append(connect(uri))
        if abandoned:
            made[0].close()
        return made[0]

    connection = MemdbAioConnection(connector, iter_chunk_size=64)
    try:
        await connection
    except BaseException:
        # Cancelled while connecting (a test's asyncio.wait_for around its first query):
        # aiosqlite drops what its worker makes, before or after this (0.22.0 waits for the
        # worker, 0.22.1 does not). Left open, it was collected unclosed (a ResourceWarning
        # on Python 3.13): closed here, or by the connector when it runs later.
        abandoned.append(True)
        for raw in made:
            raw.close()
        raise
    connection.memdb_raw = made[0]
    return connection


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


def listeners(engine: Engine) -> tuple[object, ...]:
    """The listeners added to ``engine``, its pool and its dialect, as one comparable value.

    SQLAlchemy has no public way to list them; each ``dispatch`` names its events in
    ``_event_names`` (unchanged since SQLAlchemy 1.4), and each event's own listeners are
    in its collection's ``listeners`` (empty for an event nobody listens to on this
    object). Listeners on a class (``event.listen(Engine, ...)``) reach every engine, new
    ones too, so they are not counted. About 2.6 us per engine (7 us with the class-level
    ones).
    """
    found: list[object] = []
    for target in (engine, engine.pool, engine.dialect):
        dispatch: Any = target.dispatch
        for name in getattr(dispatch, "_event_names", ()):
            own = getattr(getattr(dispatch, name), "listeners", ())
            if own:
                found.append((name, tuple(own)))
    return tuple(found)


class EnginePair:
    """The async and sync engines of one database, made on first use, disposed together.

    With ``watch_state``, every statement run on the engines' connections is looked at
    (by the connections themselves: :meth:`TrackedConnection.arm`), and :attr:`stateful`
    turns True once one of them may have left per-connection state (see
    :func:`leaves_connection_state`), or a function was registered on a connection a test
    was handed: pooled connections must then not be reused.
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
        self._baseline: dict[int, tuple[object, ...]] = {}
        self._out: dict[int, ConnectionPoolEntry] = {}
        self._detached: list[Any] = []
        """Connections a pool let go of while a test held them, to close with the
        leftovers. SQLAlchemy 2.0 cannot terminate an aiosqlite connection, so when the
        garbage collector takes a session a test leaked, its connection is detached and
        dropped as it is: open, its write still pending (the next restore found the
        database locked), closed only when collected in turn (a ResourceWarning)."""
        self.stateful = False

    @property
    def async_engine(self) -> AsyncEngine:
        if self._async is None:
            uri = self._database.sqlite_uri
            self._async = create_async_engine(
                self._database.async_url,
                echo=self._echo,
                poolclass=AsyncAdaptedQueuePool,
                pool_size=0,
                async_creator=lambda: open_aio(uri),
            )
            self._prepare(self._async.sync_engine)
        return self._async

    @property
    def sync_engine(self) -> Engine:
        if self._sync is None:
            uri = self._database.sqlite_uri
            self._sync = create_engine(
                self._database.sync_url,
                echo=self._echo,
                poolclass=QueuePool,
                pool_size=0,
                creator=lambda: connect(uri),
            )
            self._prepare(self._sync)
        return self._sync

    @property
    def database(self) -> MemoryDatabase:
        return self._database

    def connect_sync(self) -> TrackedConnection:
        """A new driver connection to the database, as the sync engine makes them (its
        pragmas are set by the engine's ``connect`` listener: see :meth:`prepare`)."""
        return connect(self._database.sqlite_uri)

    async def connect_async(self) -> MemdbAioConnection:
        """A new aiosqlite connection to the database, as the async engine makes them."""
        return await open_aio(self._database.sqlite_uri)

    def prepare(self, dbapi_connection: Any) -> None:
        """What the engines do to each new connection they make (``memdb_pragmas``): for a
        connection made for an engine of the app's (``memdb_takeover``)."""
        if self._pragmas:
            apply_pragmas(dbapi_connection, self._pragmas)

    def _engines(self) -> list[Engine]:
        made = [self._async.sync_engine if self._async is not None else None, self._sync]
        return [engine for engine in made if engine is not None]

    def _prepare(self, engine: Engine) -> None:
        def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            self.prepare(dbapi_connection)
            record.info["memdb_connect"] = tuple(engine.pool.dispatch.connect)

        def on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
            if record.info.get("memdb_connect") != tuple(engine.pool.dispatch.connect):
                # A connect listener came (or went) since this connection was made.
                raise exc.DisconnectionError("pytest-memdb: connect listeners changed")
            raw = raw_connection(dbapi_connection)
            if raw is not None and raw.memdb_on_state is None:
                raw.arm(self._state_left, statements=self._watch)
            self._out[id(record)] = record

        def on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            self._out.pop(id(record), None)

        def on_detach(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            self._out.pop(id(record), None)
            self._detached.append(dbapi_connection)

        def on_invalidate(dbapi_connection: Any, record: ConnectionPoolEntry, error: Any) -> None:
            self._out.pop(id(record), None)
            raw = raw_connection(dbapi_connection)
            if raw is not None:
                # A cancelled statement may still run in its worker thread. (A connection
                # the garbage collector terminated meanwhile is closed: nothing runs.)
                with contextlib.suppress(sqlite3.ProgrammingError):
                    raw.interrupt()

        event.listen(engine, "connect", on_connect)
        event.listen(engine, "checkout", on_checkout)
        event.listen(engine, "checkin", on_checkin)
        event.listen(engine, "detach", on_detach)
        event.listen(engine, "invalidate", on_invalidate)
        event.listen(engine, "soft_invalidate", on_invalidate)
        explain_lock_errors(engine)
        self._baseline[id(engine)] = listeners(engine)

    def _state_left(self) -> None:
        self.stateful = True

    def close_leftovers(self) -> None:
        """Close every connection a test took from the pools and never gave back.

        A test that ends (fails, is skipped, is interrupted) with a session it never
        closed keeps a pooled connection, and with it any write still pending: in
        ``session`` mode that write lock would make every later test wait for the busy
        timeout; in ``copy`` mode it would keep the working database locked. Closing the
        connection rolls the pending write back.

        The garbage collector is kept from running meanwhile
        (:mod:`pytest_memdb.core.collector`): finalizing a leaked session while the same
        connection is invalidated here failed SQLAlchemy's own checks (seen once in a few
        hundred Hypothesis examples that each leaked a session).
        """
        with collection_paused():
            leftovers, self._out = list(self._out.values()), {}
            detached, self._detached = self._detached, []
            if leftovers or detached:
                from pytest_memdb.core._loop import run_sync

                run_sync(_close_leftovers(leftovers, detached))

    dump_suffix = ".sqlite"

    def dump(self, path: Path) -> str:
        """Write the database, as the test sees it now, to ``path`` as a SQLite file
        (``--memdb-keep-failed``): what was committed, or, when a session of the test still
        holds a write (SQLite's memdb then lets no other connection read), what that session
        sees: the committed rows and its pending ones. Returns what was written, in words."""
        try:
            save_committed(self._database, path)
        except sqlite3.OperationalError:
            writer = self.pending_writer()
            if writer is None:
                raise
            save_connection_view(writer, path)
            return (
                "the database as the test left it, with the uncommitted writes of the "
                "session that held them,"
            )
        return "the database as the test left it"

    def pending_writer(self) -> TrackedConnection | None:
        """A connection a test holds (checked out) with a transaction open, if there is one."""
        for record in list(self._out.values()):
            raw = raw_connection(record.dbapi_connection)
            if raw is not None and raw.in_transaction:
                return raw
        return None

    def listeners_changed(self) -> bool:
        """Whether a listener was added to (or removed from) an engine since it was made, or
        its execution options or ``echo`` were changed (``update_execution_options``)."""
        return any(
            listeners(engine) != self._baseline[id(engine)]
            or engine.get_execution_options()
            or engine.echo != self._echo
            for engine in self._engines()
        )

    async def settle(self, *, replace: bool = True) -> None:
        """After a test: new engines if it changed their listeners (with ``replace``), empty
        pools if it left per-connection state; otherwise nothing (the pools and caches serve
        the next test)."""
        if replace and self.listeners_changed():
            await self.aclose()
            self._async = self._sync = None
            self._baseline.clear()
        elif self.stateful:
            await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection, so the database can be freed (engines stay usable)."""
        self._out.clear()
        detached, self._detached = self._detached, []
        try:
            await _close_leftovers([], detached)
            if self._async is not None:
                await self._async.dispose()
            if self._sync is not None:
                self._sync.dispose()
        finally:
            self.stateful = False  # after the dispose: closing a connection tells it too


async def _close_leftovers(live: list[ConnectionPoolEntry], detached: list[Any]) -> None:
    if live:
        await util.greenlet_spawn(_invalidate, live)
    for connection in detached:
        driver = getattr(connection, "driver_connection", connection)
        if isinstance(driver, MemdbAioConnection):
            # Not when its worker was told to stop already: SQLAlchemy 2.1 terminates a
            # collected session's connection itself, and the stop closes it.
            if driver._running:
                await driver.close()
        elif isinstance(driver, sqlite3.Connection):
            driver.close()


def _invalidate(entries: list[ConnectionPoolEntry]) -> None:
    for entry in entries:
        if entry.dbapi_connection is not None:  # else closed already (terminated)
            raw = raw_connection(entry.dbapi_connection)
            if raw is not None and raw.in_transaction:
                # Rolled back before it is closed: a cursor the test still holds keeps its
                # statement unfinalized, and SQLite then defers the close (a "zombie"
                # connection, sqlite3_close_v2) with its write lock held (SQLAlchemy 2.0,
                # whose invalidate closes without a rollback first).
                with contextlib.suppress(sqlite3.Error):
                    raw.rollback()
            entry.invalidate()
