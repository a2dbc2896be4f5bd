"""Rollback isolation: one connection, one outer transaction per test, savepoints inside.

Every engine and session of a rollback-mode test goes through one ``sqlite3``
connection to the template's *working database* (a copy, never the template itself),
opened with ``isolation_level=None``, so the driver never issues ``BEGIN``/``COMMIT``
on its own (the "pysqlite SAVEPOINT leak" in SQLAlchemy's SQLite docs: with the driver
in charge, a committed savepoint can end up committed for real). We emit the SQL
ourselves:

* at test start, ``BEGIN`` and ``SAVEPOINT memdb_outer`` (the outer transaction, and a
  mark that proves at teardown it is still ours); at teardown, ``ROLLBACK``;
* when a SQLAlchemy connection first *writes* in its transaction, it takes the
  connection's write lock and emits ``SAVEPOINT``; its ``commit()`` becomes
  ``RELEASE`` and its ``rollback()`` becomes ``ROLLBACK TO`` + ``RELEASE``. These run on
  the ``sqlite3`` connection straight from the caller's thread, not through aiosqlite's
  worker thread (one hop each, 30-100 us): the write lock means no other write of the
  test is in flight, and SQLite serializes the calls on one connection;
* the driver-level ``commit()``/``rollback()`` and ``close()`` are no-ops, so
  neither SQLAlchemy's pool reset nor an app's ``engine.dispose()`` can end the
  outer transaction or close the shared connection.

Because every test runs inside that transaction, a ``PRAGMA foreign_keys`` the test or the
app runs does nothing (SQLite ignores it inside a transaction): the test is warned
(:mod:`pytest_memdb.sqlite.ignored_pragmas`); ``memdb_pragmas`` are set before it begins.

SQLite can still end the outer transaction itself: a ``ROLLBACK``, ``COMMIT`` or ``END``
the test runs as text, ``INSERT OR ROLLBACK`` on a conflict, a trigger's
``RAISE(ROLLBACK, ...)``, an interrupted write. After every statement (and every
failed one) the connection is checked; when its transaction is gone, the escape is
recorded with the statement that caused it, and a new outer transaction is opened at
once so the test's later writes are contained again. Teardown checks once more
(``memdb_outer`` must still be there, for escapes behind SQLAlchemy's back) and
:meth:`SharedConnection.end_test` returns what happened, so the plugin can restore the
working database and report the test.

The write lock keeps savepoints strictly nested when several sessions of one
test run concurrently (SQLite's ``RELEASE`` of an outer name would otherwise
swallow an inner one). A second writer waits for it up to the busy timeout, as
with SQLite's own write lock, unless the holder cannot end its transaction while it
waits (:mod:`pytest_memdb.core.write_lock`); reads never wait for it. (In the other modes reads
do wait: SQLite's ``memdb`` VFS lets no new reader in while another connection
holds an uncommitted write, unlike a file in rollback-journal mode.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc, util
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.callers import place
from pytest_memdb.core.collector import collection_paused
from pytest_memdb.core.statements import leading_verb
from pytest_memdb.core.write_lock import Engine as EngineKind
from pytest_memdb.core.write_lock import WriteLock
from pytest_memdb.sqlite import connections
from pytest_memdb.sqlite.connections import TrackedConnection, connect, leaves_connection_state
from pytest_memdb.sqlite.dumps import save_connection_view
from pytest_memdb.sqlite.engines import CLOSE_WAIT_S, MemdbAioConnection, listeners
from pytest_memdb.sqlite.ignored_pragmas import foreign_keys_setting, ignored
from pytest_memdb.sqlite.memory import MemoryDatabase
from pytest_memdb.sqlite.pragmas import Pragmas, apply_pragmas

_await = getattr(util, "await_", None) or util.await_only


def _locked(reason: str) -> Exception:
    """A write lock wait that failed, as SQLite's own lock is reported."""
    return sqlite3.OperationalError(f"database is locked: {reason}")


_READ_VERBS = frozenset({"SELECT", "WITH", "EXPLAIN", "VALUES"})
OUTER = "memdb_outer"
_LISTENERS_CHANGED = "pytest-memdb: connect listeners changed"


def is_write(statement: str) -> bool:
    """Whether ``statement`` may change the database (and so needs a savepoint)."""
    verb = leading_verb(statement)
    if not verb:
        return False
    if verb == "PRAGMA":
        return "=" in statement
    return verb not in _READ_VERBS


class _SharedAioConnection(MemdbAioConnection):
    """aiosqlite on the shared connection; transaction ends and close are ours to make."""

    memdb_on_close: Callable[[], None] | None = None
    """Told when the connection is closed (by a test, or by the pool's dispose)."""

    async def commit(self) -> None:
        """Ending a transaction is a ``RELEASE``, emitted by :class:`SharedConnection`."""

    async def rollback(self) -> None:
        """Undoing a transaction is a ``ROLLBACK TO``, emitted by :class:`SharedConnection`."""

    async def close(self) -> None:
        """Stop the worker thread but keep the shared ``sqlite3`` connection open.

        A test that closes it (``await driver_connection.close()``) leaves the async engine
        a connection with no worker: its owner is told, and renews it before another test.
        """
        if self._connection is None:
            return
        if self.memdb_on_close is not None:
            self.memdb_on_close()
        future = self.stop()
        if future is not None:
            with contextlib.suppress(TimeoutError):  # a worker stopped already
                await asyncio.wait_for(future, CLOSE_WAIT_S)

    def stop(self) -> asyncio.Future[Any] | None:
        """Stop the worker thread only, also when aiosqlite calls this from ``__del__``.

        aiosqlite's own ``stop`` closes the ``sqlite3`` connection: here that is the
        shared one, and every later rollback-mode test would find it closed.
        With ``_connection`` cleared first, it only stops the thread.

        aiosqlite 0.22.0 has no ``stop``; its ``_stop_running`` stops the thread
        without touching the ``sqlite3`` connection, which is what we want here.
        """
        self._connection = None
        parent_stop = getattr(super(), "stop", None)
        if parent_stop is None:  # aiosqlite 0.22.0
            parent_stop = getattr(self, "_stop_running")  # noqa: B009
        future: asyncio.Future[Any] | None = parent_stop()
        return future


class _SharedSyncConnection:
    """The shared ``sqlite3`` connection as SQLAlchemy's sync driver sees it."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        object.__setattr__(self, "_raw", raw)

    def commit(self) -> None:
        """See :meth:`_SharedAioConnection.commit`."""

    def rollback(self) -> None:
        """See :meth:`_SharedAioConnection.rollback`."""

    def close(self) -> None:
        """The shared connection outlives every engine; :class:`SharedConnection` closes it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._raw, name, value)  # row_factory and friends: the shared connection's


class SharedConnection:
    """Owns a rollback-mode working database's connection, its engines and its write lock.

    It lives across tests while they leave it as it was made. :meth:`needs_renewal` says
    when one did not (per-connection state, a cancelled statement, listeners added,
    a connection SQLite would not roll back): then the owner closes it and makes a new one.
    """

    def __init__(self, database: MemoryDatabase, *, echo: bool, pragmas: Pragmas = ()) -> None:
        self.database = database
        self._echo = echo
        self._pragmas = pragmas
        self._disposing = False
        self.raw = self._open_raw()
        self._write_lock = WriteLock(wait_s=lambda: connections.BUSY_TIMEOUT_S, error=_locked)
        self._savepoints: dict[int, str] = {}
        self._warned: set[str] = set()
        """Statements the running test was warned of (:meth:`_notice_ignored_pragma`)."""
        self._names = itertools.count(1)
        self._in_test = False
        self._escape: str | None = None
        self.stateful = False
        """A statement or a driver call may have left per-connection state."""
        self.disturbed: str | None = None
        """Why the connection cannot be trusted for another test (a cancelled statement)."""
        # The URLs name the working database (so query counting can tell whose statements
        # these are); connections come from the creators, never from the URLs.
        self.async_engine: AsyncEngine = create_async_engine(
            database.async_url,
            async_creator=self._connect_async,
            poolclass=StaticPool,
            echo=echo,
        )
        self.sync_engine: Engine = create_engine(
            database.sync_url,
            creator=lambda: _SharedSyncConnection(self.raw),
            poolclass=StaticPool,
            echo=echo,
        )
        self._listen(self.async_engine.sync_engine, "async", wait=self._wait_async)
        self._listen(self.sync_engine, "sync", wait=self._write_lock.wait_blocking)
        for engine in (self.async_engine.sync_engine, self.sync_engine):
            self._listen_pool(engine)
        event.listen(self.async_engine.sync_engine, "checkout", _unbind_execute_mutex)
        self._mutex_renewable = False
        # StaticPool makes its one connection lazily; made on first use, fifty concurrent
        # first checkouts would each open their own on the shared sqlite3 connection.
        run_sync(self._prime())
        self._baseline = [listeners(e) for e in (self.async_engine.sync_engine, self.sync_engine)]

    def _open_raw(self) -> TrackedConnection:
        raw = connect(self.database.sqlite_uri, isolation_level=None)
        apply_pragmas(raw, self._pragmas)  # once, outside any transaction (foreign_keys needs it)
        return raw

    async def _prime(self) -> None:
        await self._prime_async_pool()
        with self.sync_engine.connect():
            pass
        self.raw.arm(self._state_left)  # after SQLAlchemy registered its own functions

    async def _dispose_engines(self) -> None:
        """Close the pools' one connection each; see :mod:`pytest_memdb.core.collector` for why
        the collector waits meanwhile."""
        self._disposing = True
        try:
            with collection_paused():
                await self.async_engine.dispose()
                self.sync_engine.dispose()
        finally:
            self._disposing = False

    def _adapter_closed(self) -> None:
        if not self._disposing:
            self.disturbed = self.disturbed or "its aiosqlite connection was closed by a test"

    async def renew(self) -> None:
        """A new ``sqlite3`` connection under the *same* engines: what a test left on the old
        one (per-connection state, a cancelled statement, a closed driver connection) goes
        with it, and every engine and sessionmaker handed out stays usable (``memdb.reset()``
        between Hypothesis examples relies on that)."""
        await self._dispose_engines()
        old, self.raw = self.raw, self._open_raw()
        with contextlib.suppress(sqlite3.Error):
            if self.disturbed is not None:
                old.interrupt()  # a cancelled statement may still run in a worker thread
        old.close()  # rolls back whatever is still open
        self.stateful = False
        self.disturbed = None
        self._in_test = False
        self._escape = None
        self._savepoints.clear()
        self._write_lock.release()
        await self._prime()

    async def _prime_async_pool(self) -> None:
        async with self.async_engine.connect() as conn:
            adapter = (await conn.get_raw_connection()).dbapi_connection
            mutex = getattr(adapter, "_execute_mutex", None)
            self._mutex_renewable = isinstance(mutex, asyncio.Lock)

    async def _connect_async(self) -> MemdbAioConnection:
        connection = await self.connect_async()
        connection.memdb_on_close = self._adapter_closed
        return connection

    async def connect_async(self) -> _SharedAioConnection:
        """An aiosqlite connection on the shared ``sqlite3`` connection (its own worker
        thread; closing it stops the thread only)."""
        raw = self.raw
        connection = _SharedAioConnection(lambda: raw, iter_chunk_size=64)
        connection.memdb_raw = raw
        await connection
        return connection

    def connect_sync(self) -> _SharedSyncConnection:
        """The shared ``sqlite3`` connection as a sync engine's driver connection."""
        return _SharedSyncConnection(self.raw)

    def prepare(self, dbapi_connection: Any) -> None:
        """Nothing: the shared connection got its pragmas when it was opened."""

    def join(self, engine: Engine, *, is_async: bool) -> Callable[[], None]:
        """Make ``engine`` (an app's, whose connections come from :meth:`connect_sync` or
        :meth:`connect_async`: ``memdb_takeover``) keep to this test's transaction as the
        plugin's own engines do: a savepoint per write, ``RELEASE`` for its commits,
        ``ROLLBACK TO`` for its rollbacks, the write lock, the escape checks. Returns what
        takes those listeners off it again (at the test's end)."""
        if is_async:
            return self._listen(engine, "async", wait=self._wait_async)
        return self._listen(engine, "sync", wait=self._write_lock.wait_blocking)

    def begin_test(self) -> None:
        """Open the outer transaction that teardown will roll back.

        SQLAlchemy's aiosqlite adapter holds an ``asyncio.Lock`` that binds to the first
        event loop that waits on it, and the next test runs in another loop ("bound to a
        different event loop"). A checkout gives the adapter a new lock when the old one
        is bound to another loop (:func:`_unbind_execute_mutex`); where the adapter has no
        such lock to renew (another SQLAlchemy version), each test gets a new adapter,
        which costs a worker thread start per test.
        """
        if not self._mutex_renewable:
            run_sync(self._renew_async_connection())
        self._open_outer()
        self._warned.clear()
        self._in_test = True

    def _open_outer(self) -> None:
        self.raw.execute("BEGIN")
        self.raw.execute(f"SAVEPOINT {OUTER}")

    async def _renew_async_connection(self) -> None:
        self._disposing = True
        try:
            with collection_paused():
                await self.async_engine.dispose()
        finally:
            self._disposing = False
        await self._prime_async_pool()

    def end_test(self) -> str | None:
        """Roll everything the test did back; say how the test escaped, if it did.

        Returns None when the outer transaction was the plugin's to the end: then nothing
        the test did through this connection was committed.
        """
        self._in_test = False
        self._savepoints.clear()
        self._write_lock.release()
        escape, self._escape = self._escape, None
        try:
            if escape is None and not self.raw.in_transaction:
                escape = "the outer transaction was ended behind SQLAlchemy's back"
            elif escape is None:
                try:
                    self.raw.execute(f"ROLLBACK TO {OUTER}")
                except sqlite3.OperationalError as error:
                    if "no such savepoint" not in str(error):
                        raise
                    escape = "the outer transaction was ended and begun again"
            if self.raw.in_transaction:
                self.raw.execute("ROLLBACK")
        except sqlite3.Error as error:  # a statement still in progress: renew the connection
            self.disturbed = self.disturbed or f"it could not be rolled back ({error})"
        return escape

    def needs_renewal(self) -> bool:
        """Whether the last test left anything on this connection or its engines."""
        return self.stateful or self.disturbed is not None or self.engines_changed()

    def engines_changed(self) -> bool:
        """Whether a test added listeners to the engines, or changed their options or echo
        (only new engines undo that; :meth:`renew` keeps them)."""
        engines = (self.async_engine.sync_engine, self.sync_engine)
        if any(e.get_execution_options() or e.echo != self._echo for e in engines):
            return True  # update_execution_options(), echo set by the test
        return [listeners(e) for e in engines] != self._baseline

    dump_suffix = ".sqlite"

    def dump(self, path: Path) -> str:
        """Write the test's view to ``path`` (``--memdb-keep-failed``): what the test
        committed, which lives only inside the outer transaction (its savepoints), and its
        sessions' uncommitted writes."""
        save_connection_view(self.raw, path)
        return "the database as the test left it"

    async def aclose(self) -> None:
        """Dispose of both engines and close the shared connection."""
        if self.disturbed is not None:
            with contextlib.suppress(sqlite3.ProgrammingError):  # a test closed it
                self.raw.interrupt()  # a cancelled statement may still run in a worker thread
        self._in_test = False
        self._savepoints.clear()
        self._write_lock.release()
        try:
            await self._dispose_engines()
        finally:
            self.raw.close()  # rolls back whatever is still open

    # --- SQLAlchemy event hooks -------------------------------------------------

    def _state_left(self) -> None:
        self.stateful = True

    def _listen(
        self, engine: Engine, kind: EngineKind, *, wait: Callable[[], None]
    ) -> Callable[[], None]:
        """The listeners that keep ``engine``'s work inside the test's transaction; returns
        what removes them."""

        def before_cursor_execute(
            conn: Connection, cursor: Any, statement: str, *args: Any
        ) -> None:
            if leaves_connection_state(statement):
                self.stateful = True
                if self._in_test:
                    self._notice_ignored_pragma(statement, kind)
            if id(conn) in self._savepoints or not is_write(statement):
                return
            if not self._write_lock.acquire_now():
                try:
                    wait()
                except sqlite3.OperationalError as error:
                    # As SQLAlchemy wraps SQLite's own "database is locked": 2.1 wraps what
                    # this hook raises, 2.0 does not (the caller would get a bare sqlite3
                    # error, which `except sqlalchemy.exc.OperationalError` misses).
                    raise exc.DBAPIError.instance(
                        statement, args[0], error, sqlite3.Error, dialect=conn.dialect
                    ) from error
            self._write_lock.taken(kind)
            name = f"memdb_sp_{next(self._names)}"
            self._savepoints[id(conn)] = name
            self.raw.execute(f"SAVEPOINT {name}")

        def after_cursor_execute(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
            self._check_outer(statement)

        def handle_error(context: Any) -> None:
            self._check_outer(context.statement or "")

        def commit(conn: Connection) -> None:
            self._finish(conn, "RELEASE {0}")

        def rollback(conn: Connection) -> None:
            self._finish(conn, "ROLLBACK TO {0}", "RELEASE {0}")

        def invalidate(dbapi_connection: Any, record: ConnectionPoolEntry, error: Any) -> None:
            if _LISTENERS_CHANGED in str(error):
                return
            self.disturbed = self.disturbed or f"its connection was invalidated ({error!r})"
            with contextlib.suppress(sqlite3.ProgrammingError):  # a test closed it
                self.raw.interrupt()  # a cancelled statement may still run in its worker thread

        listening: list[tuple[str, Callable[..., None]]] = [
            ("before_cursor_execute", before_cursor_execute),
            ("after_cursor_execute", after_cursor_execute),
            ("handle_error", handle_error),
            ("commit", commit),
            ("rollback", rollback),
            ("invalidate", invalidate),
            ("soft_invalidate", invalidate),
        ]
        for name, listener in listening:
            event.listen(engine, name, listener)

        def remove() -> None:
            for name, listener in listening:
                event.remove(engine, name, listener)

        return remove

    def _listen_pool(self, engine: Engine) -> None:
        """A ``connect`` listener added to one of the plugin's engines after it was made
        would not fire for its pooled connection: a checkout notices, and opens a new one."""

        def connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            record.info["memdb_connect"] = tuple(engine.pool.dispatch.connect)

        def checkout(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
            if record.info.get("memdb_connect") != tuple(engine.pool.dispatch.connect):
                raise exc.DisconnectionError(_LISTENERS_CHANGED)

        event.listen(engine, "connect", connect)
        event.listen(engine, "checkout", checkout)

    def _notice_ignored_pragma(self, statement: str, kind: EngineKind) -> None:
        """Warn, once a test, of a ``PRAGMA foreign_keys`` SQLite ignores in its transaction."""
        wanted = foreign_keys_setting(statement)
        if wanted is None or statement in self._warned:
            return
        current = self.raw.execute("PRAGMA foreign_keys").fetchone()[0]
        if current == wanted:
            return
        self._warned.add(statement)
        warning = ignored(statement, wanted, current)
        filename, line, _ = place(awaited=kind == "async") or ("<unknown>", 0, "")
        warnings.warn_explicit(warning, type(warning), filename, line)

    def _check_outer(self, statement: str) -> None:
        """After a statement: if SQLite ended the outer transaction, record it and reopen."""
        if not self._in_test or self.raw.in_transaction:
            return
        if self._escape is None:
            shown = " ".join(statement.split())[:200]
            self._escape = f"the statement {shown!r} ended it"
        self._savepoints.clear()
        self._write_lock.release()
        try:
            self._open_outer()
        except sqlite3.Error as error:
            self.disturbed = self.disturbed or f"it could not begin again ({error})"

    def _finish(self, conn: Connection, *templates: str) -> None:
        name = self._savepoints.pop(id(conn), None)
        if name is None:
            return
        try:
            for template in templates:
                self.raw.execute(template.format(name))
        except sqlite3.OperationalError as error:
            # SQLite ended the transaction behind SQLAlchemy's back (a raw driver call):
            # the savepoint went with it. The teardown check reports it.
            if "no such savepoint" not in str(error):
                raise
        finally:
            self._write_lock.release()

    def _wait_async(self) -> None:
        _await(self._write_lock.wait_async())


def _unbind_execute_mutex(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Give the aiosqlite adapter a new lock when its lock is bound to another event loop.

    Only an idle lock is replaced: one held right now belongs to a statement in flight.
    """
    mutex = getattr(dbapi_connection, "_execute_mutex", None)
    bound = getattr(mutex, "_loop", None)
    if bound is None or not isinstance(mutex, asyncio.Lock) or mutex.locked():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return
    if bound is not running:
        dbapi_connection._execute_mutex = asyncio.Lock()
