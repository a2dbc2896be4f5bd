"""Rollback isolation on PostgreSQL: one server session per working database, held across
tests; each test inside an outer transaction, its sessions' commits savepoints.

SQLAlchemy documents the recipe for one ``Session`` (``join_transaction_mode=
"create_savepoint"`` on a ``Connection``), but the plugin hands tests *engines* and
sessionmakers, as the SQLite side does (:mod:`pytest_memdb.sqlite.savepoints`). The same design,
on PostgreSQL:

* one libpq connection (psycopg) to the working database (a clone of the template), opened
  once. The plugin drives it in autocommit mode, so it alone says ``BEGIN``: at test start
  ``BEGIN; SAVEPOINT memdb_outer`` (one round trip); at teardown ``ROLLBACK``;
* a sync engine and an async engine (``StaticPool``) whose one driver connection is that
  same libpq connection: a ``psycopg.Connection`` and a ``psycopg.AsyncConnection`` made on
  its ``PGconn``, their ``commit``/``rollback``/``close`` no-ops, so no pool reset and no
  ``dispose()`` ends the outer transaction. Sync and async engines of a test see each
  other's writes, as on SQLite. (Sync and async statements *at the same instant*, from two
  threads, are not serialized with each other; each engine's are.)
* a SQLAlchemy transaction's first statement takes a ``SAVEPOINT`` (PostgreSQL aborts the
  whole transaction on any error, a failed read too, so every transaction needs one to go
  back to); its ``commit()`` is a ``RELEASE``, its ``rollback()`` a ``ROLLBACK TO``.
  Writes take the test's write lock (:mod:`pytest_memdb.core.write_lock`, as on SQLite: a
  second writer waits, or fails at once with the holder named when the holder cannot end
  its transaction meanwhile) and a savepoint of their own, so a writer's ``ROLLBACK TO``
  undoes its writes and no one else's; a reader gets a new savepoint when someone wrote
  since its last one. The savepoints are kept as PostgreSQL has them: none is released
  under another open transaction's, and none the plugin names is already gone (an error
  there would abort the outer transaction);
* a failed statement is rolled back to its transaction's savepoint (or SQLAlchemy's own,
  ``begin_nested``) by the cursor, before the driver connection's lock is let go: other
  tasks' statements never meet the aborted state (concurrent sessions of one test, one
  hitting a unique violation). One difference from a connection of its own: a
  ``Connection`` that goes on after an error without rolling back is not refused.

Why psycopg and not asyncpg for the async engine: an asyncpg connection belongs to the
event loop it was opened in ("got Future attached to a different loop" from another loop,
checked here with asyncpg 0.32), and pytest-asyncio gives each test its own loop; the held
session must outlive them. psycopg's ``AsyncConnection`` waits on whichever loop runs the
call; its ``asyncio.Lock`` and SQLAlchemy's adapter lock are renewed at checkout when bound
to an earlier test's loop. An ``asyncpg`` URL can still drive the copy and session modes
(a connection per test).

Verified at teardown. After every statement the transaction status libpq keeps is read
(no round trip): ``IDLE`` means the test's SQL ended the outer transaction (``COMMIT`` or
``ROLLBACK`` as text); the statement is recorded and the outer transaction opened again
at once, so the test's later work is contained. Teardown checks once more
(``ROLLBACK TO SAVEPOINT memdb_outer`` must work). After the ``ROLLBACK``, the session
*state* is compared with what it was when opened, rather than statements parsed:
``pg_settings`` whose source is ``session`` (``SET``, ``SET SESSION CHARACTERISTICS``),
``pg_listening_channels()``, the temp schema's relations, ``pg_prepared_statements``,
``pg_cursors`` (``WITH HOLD``) and advisory locks in ``pg_locks`` for
``pg_backend_pid()``. A ``SET``, ``LISTEN`` or temp table made inside the outer transaction
goes with its rollback; ``PREPARE``, a session advisory lock, and all of them after an
escaped ``COMMIT`` stay: :class:`Verdict` lists them, and ``DISCARD ALL`` clears them.
Other sessions still connected to the working database (a connection the test opened and
leaked) are named and ended. The rollback, the check and the list of other sessions are
one round trip. After an escape, :class:`RollbackIsolation` moves the same engines to a
fresh clone (what the test committed stays in the old one, which is dropped).

Bounded waits. The held session runs with ``lock_timeout`` (:data:`LOCK_TIMEOUT_S`), the
plugin's checks with ``statement_timeout``: a statement waiting for a lock another session
holds fails with :class:`LockWaitTimeout`, naming the sessions that hold locks on the
working database (``pg_locks`` and ``pg_stat_activity``).

Measured (``benchmarks/bench_pg_core.py``: PostgreSQL 15.18, psycopg 3.3.9, SQLAlchemy
2.1.9, unix socket, 2 cores with a CI run going, load 4-5; medians of 100-300): a test's
begin and end with nothing in it, 2.4-3.2 ms (the state check is most of it: ``pg_settings``
alone 0.6 ms, planning the query 0.5 ms); with one ``Session`` that writes and commits,
3.5-4.7 ms. That ``Session`` costs 0.8-1.3 ms inside a test against 0.5-0.6 ms on a plain
pooled engine (``SAVEPOINT``/``RELEASE`` where it would say ``BEGIN``/``COMMIT``, plus the
hooks); an ``AsyncSession``'s in a new event loop, 1.7-2.4 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import psycopg
from psycopg import pq
from sqlalchemy import Engine, create_engine, event, exc, util
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.statements import leading_verb
from pytest_memdb.core.write_lock import Engine as EngineKind
from pytest_memdb.core.write_lock import WriteLock
from pytest_memdb.postgresql.clones import APPLICATION, ClonePool, quote

_await = getattr(util, "await_", None) or util.await_only


OUTER = "memdb_outer"
_NO_SAVEPOINT = (pq.TransactionStatus.INERROR, pq.TransactionStatus.IDLE)
"""Where a transaction gets no savepoint: an aborted one, or none (the outer one ended; the
statement's end notices). ``ACTIVE`` (another task's statement in flight) gets one."""
LOCK_TIMEOUT_S = 10.0
"""The held session's ``lock_timeout``: how long a test's statement waits for a lock."""
OWN_STATEMENT_TIMEOUT_S = 10.0
"""The bound on the plugin's own statements on the held session (checks, ``DISCARD ALL``)."""

_OTHERS = (
    "SELECT a.pid, format('pid %s (application %L, %s, last query %L%s)', a.pid,"
    " a.application_name, a.state, left(a.query, 200), ', holding ' || string_agg(DISTINCT"
    " l.locktype || ' ' || l.mode || coalesce(' on ' || l.relation::regclass::text, ''), ', '))"
    " AS description"
    " FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid AND l.granted"
    " AND l.locktype <> 'virtualxid'"
    " WHERE a.datname = current_database() AND a.pid <> {me} AND a.backend_type = 'client backend'"
    " GROUP BY a.pid, a.application_name, a.state, a.query"
)
"""The other sessions on the working database and the locks they hold (pid, description)."""

_STATE = (
    "SELECT 'settings', name || ' = ' || setting, NULL::int FROM pg_settings"
    " WHERE source = 'session' AND name NOT IN ('statement_timeout', 'lock_timeout')"
    " UNION ALL SELECT 'listening', 'LISTEN ' || c, NULL FROM pg_listening_channels() c"
    " UNION ALL SELECT 'temp tables', relname::text, NULL FROM pg_class"
    " WHERE relnamespace = pg_my_temp_schema()"
    " UNION ALL SELECT 'prepared statements', name || ': ' || left(statement, 200), NULL"
    " FROM pg_prepared_statements"
    " UNION ALL SELECT 'cursors', name || ': ' || left(statement, 200), NULL FROM pg_cursors"
    " UNION ALL SELECT 'advisory locks', 'advisory lock ' || classid || ' ' || objid || ' '"
    " || mode, NULL FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    " UNION ALL SELECT 'others', description, pid FROM ("
    + _OTHERS.format(me="pg_backend_pid()")
    + ") o WHERE pg_stat_get_db_numbackends((SELECT oid FROM pg_database"
    " WHERE datname = current_database())) > 1"  # a one-time filter: cheap when alone
    " ORDER BY 1, 2"
)
"""In one round trip: what a session keeps beyond a transaction, as (kind, text, NULL), and
the other sessions on the working database, as ('others', text, pid)."""


class LockWaitTimeout(exc.OperationalError):
    """A test's statement waited longer than ``lock_timeout`` for a lock another session
    holds (an ``OperationalError``, as PostgreSQL's own lock timeout is)."""

    holders: str = ""

    def __str__(self) -> str:
        return (
            f"pytest-memdb: a statement waited {self.waited:g} s (lock_timeout) for a lock"
            f" on the working database and gave up. Sessions holding locks there:"
            f" {self.holders or 'none now (released meanwhile)'}. A connection the test"
            " opened and left in a transaction holds it (one of its own sessions, an engine"
            " built from memdb_url, a raw connection): commit or close it, or end it with"
            " SELECT pg_terminate_backend(pid)."
            f"\n{super().__str__()}"
        )

    waited: float = 0.0


def lock_wait_error(context: Any, url: URL, me: int, waited: float) -> LockWaitTimeout:
    """``context``'s lock timeout as a :class:`LockWaitTimeout` naming the sessions holding
    locks on the database, asked on a connection of its own (the waiting one is in an
    aborted transaction); ``me``: the waiting session's pid."""
    holders = ""
    with contextlib.suppress(psycopg.Error):
        info = {**conninfo(url), "connect_timeout": 5}
        with psycopg.connect(**info, options="-c statement_timeout=5000") as probe:
            rows = probe.execute(_OTHERS.format(me=int(me))).fetchall()
            holders = "; ".join(description for _, description in rows)
    error = LockWaitTimeout(context.statement, context.parameters, context.original_exception)
    error.holders = holders
    error.waited = waited
    return error


@dataclass
class Verdict:
    """How a test left the held session."""

    escape: str | None = None
    """How the outer transaction was ended (its writes may be committed), or None."""
    state: list[str] = field(default_factory=list)
    """Session state the test left (cleared with ``DISCARD ALL`` before the next test)."""
    others: str = ""
    """Other sessions that were connected to the working database (ended)."""

    @property
    def clean(self) -> bool:
        return self.escape is None and not self.state and not self.others


@dataclass
class _Savepoint:
    owner: int | None
    """The SQLAlchemy connection (its id) whose transaction it is; None: forgotten (its
    transaction ended while others' savepoints were above it)."""
    name: str
    writes: int
    """The test's write count when it was taken."""


_READ_VERBS = frozenset({"SELECT", "SHOW", "EXPLAIN", "VALUES", "TABLE", "FETCH"})
_WRITE_WORDS = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)


def _is_write(statement: str) -> bool:
    """Whether ``statement`` may change data (or session state): it takes the write lock."""
    verb = leading_verb(statement)
    if verb == "WITH":
        return _WRITE_WORDS.search(statement) is not None
    return verb not in _READ_VERBS


class _WriteWait(Exception):
    """Why a write gave up waiting for another connection of the test (the driver-level
    error of the ``OperationalError`` raised)."""


def _rollback_to(conn: Any, name: str | None) -> Any:
    """The command that ends an aborted state at savepoint ``name`` (None: nothing to do)."""
    if name is None or conn.pgconn.transaction_status != pq.TransactionStatus.INERROR:
        return None
    return conn._exec_command(f"ROLLBACK TO SAVEPOINT {name}".encode())


class _RecoveringCursor(psycopg.Cursor[Any]):
    """A cursor whose failed statement is undone to its transaction's savepoint before the
    connection's lock is let go: no other thread's statement meets the aborted state.
    (psycopg's own ``execute``, with that step added.)"""

    memdb_savepoint: str | None = None

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Self:
        with self._conn.lock:
            try:
                self._conn.wait(self._execute_gen(query, params, **kwargs))
            except psycopg.Error:
                recover = _rollback_to(self._conn, self.memdb_savepoint)
                if recover is not None:
                    with contextlib.suppress(psycopg.Error):
                        self._conn.wait(recover)
                raise
        return self


class _RecoveringAsyncCursor(psycopg.AsyncCursor[Any]):
    """:class:`_RecoveringCursor` for the async engine: no other task's statement meets it."""

    memdb_savepoint: str | None = None

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Self:
        async with self._conn.lock:
            try:
                await self._conn.wait(self._execute_gen(query, params, **kwargs))
            except psycopg.Error:
                recover = _rollback_to(self._conn, self.memdb_savepoint)
                if recover is not None:
                    with contextlib.suppress(psycopg.Error):
                        await self._conn.wait(recover)
                raise
        return self


class _HeldSync(psycopg.Connection[Any]):
    """The held session as the sync engine's driver connection."""

    _pool = None  # psycopg's __del__ then does not warn: the held session outlives it

    def __init__(self, pgconn: pq.abc.PGconn) -> None:
        super().__init__(pgconn)
        # Never a BEGIN of psycopg's own (the setter refuses inside a transaction)
        self._autocommit = True
        self.prepare_threshold = None
        self.cursor_factory = _RecoveringCursor

    def commit(self) -> None:
        """Ending a transaction is a ``RELEASE``, emitted by :class:`HeldSession`."""

    def rollback(self) -> None:
        """Undoing a transaction is a ``ROLLBACK TO``, emitted by :class:`HeldSession`."""

    def close(self) -> None:
        """The held session outlives every engine; :class:`HeldSession` closes it."""


class _HeldAsync(psycopg.AsyncConnection[Any]):
    """The held session as the async engine's driver connection."""

    _pool = None

    def __init__(self, pgconn: pq.abc.PGconn) -> None:
        super().__init__(pgconn)
        self._autocommit = True  # see _HeldSync
        self.prepare_threshold = None
        self.cursor_factory = _RecoveringAsyncCursor

    async def commit(self) -> None:
        """See :meth:`_HeldSync.commit`."""

    async def rollback(self) -> None:
        """See :meth:`_HeldSync.rollback`."""

    async def close(self) -> None:
        """See :meth:`_HeldSync.close`."""


def conninfo(url: URL) -> dict[str, Any]:
    """psycopg's connection arguments for ``url``: a unix socket in ``?host=``, and any
    other query argument (``sslmode``...) passed on."""
    query = dict(url.query)
    info: dict[str, Any] = {
        "host": query.pop("host", url.host),
        "port": query.pop("port", url.port),
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    info.update(query)
    return {k: v for k, v in info.items() if v is not None}


class HeldSession:
    """The held server session of one working database, its engines, its savepoints.

    ``url`` names the working database (any driver: the engines use psycopg's).
    """

    def __init__(self, url: str | URL, *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.url = make_url(url)
        self.lock_timeout_s = lock_timeout_s
        self._names = itertools.count(1)
        self._stack: list[_Savepoint] = []
        """The savepoints above ``memdb_outer``, oldest first, as PostgreSQL has them."""
        self._write_lock = WriteLock(wait_s=lambda: lock_timeout_s, error=_WriteWait)
        self._writer: int | None = None
        """The SQLAlchemy connection (its id) holding the write lock."""
        self._writes = 0
        """Write statements of the test so far."""
        self._nested: dict[int, list[str]] = {}
        """SQLAlchemy's own savepoints (``begin_nested``) open on each connection."""
        self._in_test = False
        self._escape: str | None = None
        self.raw = self._open()
        sync_url = self.url.set(drivername="postgresql+psycopg")
        self.sync_engine: Engine = create_engine(
            sync_url, creator=lambda: self._sync_driver, poolclass=StaticPool
        )
        self.async_engine: AsyncEngine = create_async_engine(
            sync_url, async_creator=self._connect_async, poolclass=StaticPool
        )
        self._listen(self.sync_engine, self._run_sync, "sync")
        self._listen(self.async_engine.sync_engine, self._run_async, "async")
        event.listen(self.async_engine.sync_engine, "checkout", unbind_locks)
        self._prime()

    def _open(self) -> psycopg.Connection[Any]:
        ms = int(self.lock_timeout_s * 1000)
        raw = psycopg.connect(
            **conninfo(self.url),
            autocommit=True,
            prepare_threshold=None,  # no driver-made prepared statements to tell from a test's
            application_name=APPLICATION,
            options=f"-c lock_timeout={ms}",
            connect_timeout=10,
        )
        self.raw = raw
        self._baseline = [f"{k}: {t}" for k, t, pid in self._state() if pid is None]
        self._sequences = self._sequence_state()
        self._sync_driver = _HeldSync(raw.pgconn)
        self._async_driver = _HeldAsync(raw.pgconn)
        return raw

    async def _connect_async(self) -> _HeldAsync:
        return self._async_driver

    def _run_sync(self, sql: str) -> None:
        """A statement of the plugin's during a sync engine's work: on its driver
        connection, whose lock keeps it from another thread's statement in flight."""
        self._sync_driver.execute(sql)

    def _run_async(self, sql: str) -> None:
        """The same for the async engine (its hooks run in SQLAlchemy's greenlet): waiting
        on the async driver connection's lock, for a statement another task has in flight."""
        _await(self._async_driver.execute(sql))

    def _prime(self) -> None:
        """First connects run the dialect's set-up queries: outside any test."""
        with self.sync_engine.connect():
            pass

        async def prime() -> None:
            async with self.async_engine.connect():
                pass

        run_sync(prime())

    # --- a test --------------------------------------------------------------

    def begin_test(self) -> None:
        """Open the outer transaction the test runs in."""
        self.raw.execute(f"BEGIN; SAVEPOINT {OUTER}")  # one round trip
        self._in_test = True

    @staticmethod
    def _open_outer(run: Callable[[str], Any]) -> None:
        run("BEGIN")
        run(f"SAVEPOINT {OUTER}")

    def end_test(self) -> Verdict:
        """Roll back what the test did; say how it escaped and what session state it left
        (cleared), and end other sessions left on the working database."""
        self._in_test = False
        self._stack.clear()
        self._nested.clear()
        self._writer = None
        self._write_lock.release()
        verdict = Verdict(escape=self._escape)
        self._escape = None
        status = self.raw.pgconn.transaction_status
        if verdict.escape is None and status == pq.TransactionStatus.IDLE:
            verdict.escape = "the outer transaction was ended behind SQLAlchemy's back"
        rows = None
        if status != pq.TransactionStatus.IDLE and verdict.escape is None:
            try:  # one round trip: the rest is skipped when the first fails
                rows = self._state(f"ROLLBACK TO SAVEPOINT {OUTER}; ROLLBACK; ")
            except psycopg.errors.InvalidSavepointSpecification:
                verdict.escape = "the outer transaction was ended and begun again"
        if rows is None:
            idle = self.raw.pgconn.transaction_status == pq.TransactionStatus.IDLE
            rows = self._state("" if idle else "ROLLBACK; ")
        self._restore_sequences()
        verdict.state = [f"{kind}: {text}" for kind, text, pid in rows if pid is None]
        verdict.state = [line for line in verdict.state if line not in self._baseline]
        if verdict.state:
            self.raw.execute("DISCARD ALL")
        others = [(pid, text) for kind, text, pid in rows if pid is not None]
        if others:
            verdict.others = "; ".join(text for _, text in others)
            pids = ", ".join(str(pid) for pid, _ in others)
            self.raw.execute(
                f"SELECT pg_terminate_backend(pid, 1000) FROM unnest(ARRAY[{pids}]) pid"
            )
        return verdict

    def _state(self, before: str = "") -> list[tuple[str, str, int | None]]:
        """``before`` and the state query in one round trip, bounded by ``statement_timeout``
        (local to the implicit transaction the statements after a ``ROLLBACK`` form)."""
        ms = int(OWN_STATEMENT_TIMEOUT_S * 1000)
        cursor = self.raw.execute(f"{before}SET LOCAL statement_timeout = {ms}; {_STATE}")
        while cursor.nextset():
            pass
        return cursor.fetchall()

    def _sequence_state(self) -> dict[str, tuple[int | None, int]]:
        """Every sequence's ``last_value`` (None: never used) and ``start_value``."""
        rows = self.raw.execute(
            "SELECT format('%I.%I', schemaname, sequencename), last_value, start_value"
            " FROM pg_sequences"
        ).fetchall()
        return {name: (last, start) for name, last, start in rows}

    def _restore_sequences(self) -> None:
        """Put every sequence back as the clone had it: ``nextval`` is not transactional,
        so the outer ``ROLLBACK`` leaves them advanced, and the next test's first id would
        be 2 where copy mode and SQLite give 1 (found by the hostile pass). One round trip,
        and a second one only when a sequence moved."""
        now = self._sequence_state()
        moved = [
            (name, before) for name, before in self._sequences.items() if now.get(name) != before
        ]
        if not moved:
            return
        calls = ", ".join(
            f"setval('{name.replace(chr(39), chr(39) * 2)}', {last}, true)"
            if last is not None
            else f"setval('{name.replace(chr(39), chr(39) * 2)}', {start}, false)"
            for name, (last, start) in moved
        )
        self.raw.execute(f"SELECT {calls}")

    def move_to(self, url: str | URL) -> None:
        """Hold a session on another working database (a new clone), under the *same*
        engines: every engine and sessionmaker handed out stays usable."""
        self.sync_engine.dispose()
        run_sync(self.async_engine.dispose())
        old = self.raw
        self.url = make_url(url)
        self.raw = self._open()
        old.close()
        self._prime()

    def close(self) -> None:
        """Dispose of both engines and close the session."""
        self.sync_engine.dispose()
        run_sync(self.async_engine.dispose())
        self.raw.close()

    # --- SQLAlchemy event hooks --------------------------------------------------

    def _listen(self, engine: Engine, run: Callable[[str], None], kind: EngineKind) -> None:
        def before_cursor_execute(
            conn: Connection, cursor: Any, statement: str, params: Any, *args: Any
        ) -> None:
            if self._in_test:
                target = getattr(cursor, "_cursor", cursor)  # the async adapter's psycopg cursor
                target.memdb_savepoint = self._before(id(conn), statement, params, run, kind)

        def after_cursor_execute(conn: Connection, cursor: Any, statement: str, *a: Any) -> None:
            self._check_outer(statement, run)

        def handle_error(context: Any) -> Any:
            self._check_outer(context.statement or "", run)
            original = context.original_exception
            if isinstance(original, psycopg.errors.LockNotAvailable):
                return self._lock_wait_error(context)
            return None

        def savepoint(conn: Connection, name: str) -> None:
            self._nested.setdefault(id(conn), []).append(name)

        def savepoint_ended(conn: Connection, name: str, *args: Any) -> None:
            names = self._nested.get(id(conn), [])
            if name in names:
                del names[names.index(name) :]

        def commit(conn: Connection) -> None:
            self._finish(id(conn), run, rollback=False)

        def rollback(conn: Connection) -> None:
            self._finish(id(conn), run, rollback=True)

        event.listen(engine, "before_cursor_execute", before_cursor_execute)
        event.listen(engine, "after_cursor_execute", after_cursor_execute)
        event.listen(engine, "handle_error", handle_error)
        event.listen(engine, "commit", commit)
        event.listen(engine, "savepoint", savepoint)
        event.listen(engine, "rollback_savepoint", savepoint_ended)
        event.listen(engine, "release_savepoint", savepoint_ended)
        event.listen(engine, "rollback", rollback)

    def _push(self, key: int, run: Callable[[str], None]) -> None:
        name = f"memdb_sp_{next(self._names)}"
        self._stack.append(_Savepoint(key, name, self._writes))
        run(f"SAVEPOINT {name}")

    def _before(
        self, key: int, statement: str, params: Any, run: Callable[[str], None], kind: EngineKind
    ) -> str | None:
        """Before a statement of SQLAlchemy connection ``key``: the savepoints and the write
        lock it needs (see the module docstring). Returns the savepoint its failure goes
        back to."""
        if self.raw.pgconn.transaction_status in _NO_SAVEPOINT:
            return None  # aborted: the statement fails as it would; the rollback recovers
        if _is_write(statement) and self._writer != key:
            if not self._write_lock.acquire_now():
                try:
                    wait = self._wait_async if kind == "async" else self._write_lock.wait_blocking
                    wait()
                except _WriteWait as error:
                    raise exc.OperationalError(statement, params, error) from None
            self._write_lock.taken(kind)
            self._writer = key
            self._push(key, run)  # its ROLLBACK TO undoes its writes and no one else's
        else:
            mine = next((sp for sp in reversed(self._stack) if sp.owner == key), None)
            if mine is None or (self._writer != key and mine.writes < self._writes):
                self._push(key, run)  # newer than every write: its ROLLBACK TO undoes none
        if _is_write(statement):
            self._writes += 1
        if nested := self._nested.get(key):
            return nested[-1]  # SQLAlchemy's own (begin_nested): it goes back there itself
        return next((sp.name for sp in reversed(self._stack) if sp.owner == key), None)

    def _wait_async(self) -> None:
        _await(self._write_lock.wait_async())

    def _finish(self, key: int, run: Callable[[str], None], *, rollback: bool) -> None:
        """A SQLAlchemy connection's ``commit()`` or ``rollback()``: ``RELEASE`` or
        ``ROLLBACK TO`` its savepoint, never touching another open transaction's."""
        self._nested.pop(key, None)
        wrote = self._writer == key
        if wrote:
            self._writer = None
            self._write_lock.release()
        mine = [i for i, sp in enumerate(self._stack) if sp.owner == key]
        if not mine:
            return
        status = self.raw.pgconn.transaction_status
        if status == pq.TransactionStatus.IDLE:
            self._stack.clear()  # the outer transaction is gone; teardown reports it
            return
        # The bookkeeping is changed first, the statement run after, as one command: ``run``
        # may wait for the driver connection's lock, and another task's savepoint taken
        # meanwhile must land above what this one ends, in the list as on the server
        # (changed after, it dropped a savepoint pushed during the wait, and a later
        # ROLLBACK TO an older one undid other sessions' committed rows: 1 run in 6 of
        # five concurrent async sessions under load).
        if rollback and (wrote or status == pq.TransactionStatus.INERROR):
            # Its newest savepoint: taken when it began to write (a writer), or after the
            # last write of anyone (a reader whose statement failed)
            name = self._stack[mine[-1]].name
            del self._stack[mine[-1] :]
            command = f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
        else:
            # RELEASE the lowest of its savepoints that has only its own or forgotten
            # ones above it; any lower ones stay (forgotten) until the outer ROLLBACK
            free = len(self._stack)
            while free > 0 and self._stack[free - 1].owner in (key, None):
                free -= 1
            lowest = next((i for i in mine if i >= free), None)
            command = None
            if lowest is not None:
                command = f"RELEASE SAVEPOINT {self._stack[lowest].name}"
                del self._stack[lowest:]
        for sp in self._stack:
            if sp.owner == key:
                sp.owner = None
        if command is not None:
            run(command)

    def _lock_wait_error(self, context: Any) -> LockWaitTimeout:
        return lock_wait_error(context, self.url, self.raw.info.backend_pid, self.lock_timeout_s)

    def _check_outer(self, statement: str, run: Callable[[str], None]) -> None:
        """After a statement: if the test's SQL ended the outer transaction, record it and
        open it again, so its later writes are contained."""
        if not self._in_test or self.raw.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            return
        if self._escape is None:
            shown = " ".join(statement.split())[:200]
            self._escape = f"the statement {shown!r} ended it"
        self._stack.clear()
        self._nested.clear()
        self._open_outer(run)


def unbind_locks(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Give the adapter and the psycopg connection new ``asyncio.Lock`` s when theirs are
    bound to another (an earlier test's) event loop; only idle ones."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return
    driver = getattr(dbapi_connection, "driver_connection", None)
    for owner, attribute in ((dbapi_connection, "_execute_mutex"), (driver, "lock")):
        lock = getattr(owner, attribute, None)
        bound = getattr(lock, "_loop", None)
        if isinstance(lock, asyncio.Lock) and bound not in (None, running) and not lock.locked():
            setattr(owner, attribute, asyncio.Lock())


class RollbackIsolation:
    """Rollback mode on one clone of a template: a :class:`HeldSession` on a working
    database taken from ``pool``; after a test that escaped, a fresh clone under the same
    engines (what the test committed stays in the old one, which is dropped).

    Once the held session is connected, the working database takes no other connection
    (``ALLOW_CONNECTIONS false``): a commit through an engine a test built from
    ``memdb_url`` or a raw connection would be outside the outer transaction and reach
    every later test, unseen once that connection is closed (found by the hostile pass).
    Such a connection is refused at once, by PostgreSQL, instead: the test fails where it
    connects, and the next one starts from the template. The plugin's own engines, the
    sessionmakers and ``memdb_bind`` go through the held session."""

    def __init__(self, pool: ClonePool, *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.pool = pool
        self.database = pool.take()
        self.session = HeldSession(
            pool.cluster.url_for(self.database), lock_timeout_s=lock_timeout_s
        )
        self._refuse_others()
        self.reclones = 0

    def _refuse_others(self) -> None:
        with self.pool.cluster.admin.connect() as conn:
            conn.exec_driver_sql(
                f"ALTER DATABASE {quote(self.database)} WITH ALLOW_CONNECTIONS false"
            )

    @property
    def sync_engine(self) -> Engine:
        return self.session.sync_engine

    @property
    def async_engine(self) -> AsyncEngine:
        return self.session.async_engine

    def begin_test(self) -> None:
        self.session.begin_test()

    def end_test(self) -> Verdict:
        verdict = self.session.end_test()
        if verdict.escape is not None:
            old, self.database = self.database, self.pool.take()
            self.session.move_to(self.pool.cluster.url_for(self.database))
            self._refuse_others()
            self.pool.give_back(old)
            self.reclones += 1
        return verdict

    def close(self) -> None:
        self.session.close()
        self.pool.give_back(self.database)
