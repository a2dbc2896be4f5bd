"""Rollback isolation on PostgreSQL: one server session per working database, held across
tests; each test inside an outer transaction, its sessions' commits savepoints.

SQLAlchemy documents the recipe for one ``Session`` (``join_transaction_mode=
"create_savepoint"`` on a ``Connection``), but the plugin hands tests *engines* and
sessionmakers, as the SQLite side does (:mod:`pytest_memdb.savepoints`). The same design,
on PostgreSQL:

* one libpq connection (psycopg) to the working database (a clone of the template), opened
  once. The plugin drives it in autocommit mode, so it alone says ``BEGIN``: at test start
  ``BEGIN`` + ``SAVEPOINT memdb_outer``; at teardown ``ROLLBACK``;
* a sync engine and an async engine (``StaticPool``) whose one driver connection is that
  same libpq connection: a ``psycopg.Connection`` and a ``psycopg.AsyncConnection`` made on
  its ``PGconn``, their ``commit``/``rollback``/``close`` no-ops, so no pool reset and no
  ``dispose()`` ends the outer transaction. Sync and async engines of a test see each
  other's writes, as on SQLite;
* a SQLAlchemy transaction's first statement (read or write: PostgreSQL aborts the whole
  transaction on any error, so a failed read needs a savepoint to roll back to) emits
  ``SAVEPOINT``; its ``commit()`` becomes ``RELEASE``, its ``rollback()`` ``ROLLBACK TO`` +
  ``RELEASE``. The savepoints are kept as a stack, so the plugin never emits one that
  PostgreSQL no longer has (an error there would abort the outer transaction). Sessions of
  one test that interleave on the one server session nest: a ``RELEASE`` or ``ROLLBACK TO``
  of one takes those begun after it along.

Why not asyncpg for the async engine: an asyncpg connection belongs to the event loop it was
opened in ("got Future attached to a different loop" from the next test's loop, checked
here), and pytest-asyncio gives each test its own loop; the held session must outlive them.
psycopg's ``AsyncConnection`` waits on the running loop at each call. With asyncpg, the
plugin can offer the copy and session modes (a connection per test).

Escapes. After every statement the session's transaction status is read (libpq keeps it,
no round trip): ``IDLE`` means the test's SQL ended the outer transaction (``COMMIT`` or
``ROLLBACK`` as text); the statement is recorded and the outer transaction opened again.
Teardown checks once more (``memdb_outer`` must still be there). Then, after ``ROLLBACK``,
the session *state* is compared with what it was when opened, not the statements parsed:
``pg_settings`` whose source is ``session`` (``SET``, ``SET SESSION CHARACTERISTICS``,
``SET ROLE``), ``pg_listening_channels()``, the temp schema's relations,
``pg_prepared_statements``, ``pg_cursors`` (``WITH HOLD``) and advisory locks in
``pg_locks`` for ``pg_backend_pid()``. A ``SET`` or a temp table made inside the outer
transaction goes with its rollback; ``PREPARE``, a session advisory lock and anything after
an escaped ``COMMIT`` stay: those are reported, and ``DISCARD ALL`` clears them. Other
sessions still connected to the working database when a test ends (a connection the test
opened and leaked) are named and ended.

Bounded waits. The held session runs with ``lock_timeout`` (default 10 s) and the plugin's
own statements with ``statement_timeout``: a statement waiting for a lock another session
holds fails with :class:`LockWaitTimeout`, which names the sessions holding locks on the
working database (from ``pg_locks`` and ``pg_stat_activity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from pytest_memdb._loop import run_sync
from pytest_memdb.postgresql.clones import APPLICATION, ClonePool

OUTER = "memdb_outer"
LOCK_TIMEOUT_S = 10.0
"""The held session's ``lock_timeout``: how long a test's statement waits for a lock."""
OWN_STATEMENT_TIMEOUT_S = 10.0
"""The bound on the plugin's own statements on the held session (checks, ``DISCARD ALL``)."""

_STATE_QUERIES: dict[str, str] = {
    "settings": "SELECT name || ' = ' || setting FROM pg_settings WHERE source = 'session'"
    " AND name NOT IN ('statement_timeout', 'lock_timeout') ORDER BY 1",
    "listening": "SELECT 'LISTEN ' || c FROM pg_listening_channels() c ORDER BY 1",
    "temp tables": "SELECT relname::text FROM pg_class"
    " WHERE relnamespace = pg_my_temp_schema() ORDER BY 1",
    "prepared statements": "SELECT name || ': ' || left(statement, 200)"
    " FROM pg_prepared_statements ORDER BY 1",
    "cursors": "SELECT name || ': ' || left(statement, 200) FROM pg_cursors ORDER BY 1",
    "advisory locks": "SELECT 'advisory lock ' || classid || ' ' || objid || ' ' || mode"
    " FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() ORDER BY 1",
}
"""What a session keeps beyond a transaction, each as rows of readable text."""

_OTHERS = (
    "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.state, ''),"
    " left(coalesce(a.query, ''), 200),"
    " string_agg(DISTINCT l.locktype || ' ' || l.mode"
    " || coalesce(' on ' || l.relation::regclass::text, ''), ', ')"
    " FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid AND l.granted"
    " AND l.locktype NOT IN ('virtualxid')"
    " WHERE a.datname = current_database() AND a.pid <> %s AND a.backend_type = 'client backend'"
    " GROUP BY a.pid, a.application_name, a.state, a.query ORDER BY a.pid"
)


def _describe(rows: list[tuple[Any, ...]]) -> str:
    return "; ".join(
        f"pid {pid} (application {app!r}, {state}, last query {query!r}"
        + (f", holding {locks}" if locks else "")
        + ")"
        for pid, app, state, query, locks in rows
    )


class LockWaitTimeout(exc.OperationalError):
    """A test's statement waited longer than ``lock_timeout`` for a lock another session
    holds (an ``OperationalError``, as PostgreSQL's own lock timeout is)."""

    holders: str = ""

    def __str__(self) -> str:
        return (
            f"pytest-memdb: a statement waited {self.waited:g} s (lock_timeout) for a lock"
            f" on the working database and gave up. Sessions holding locks there:"
            f" {self.holders or 'none now (released meanwhile)'}. A connection the test"
            " (or an earlier one) opened outside the plugin's engines and left in a"
            " transaction holds it: close it, or end it with SELECT pg_terminate_backend(pid)."
            f"\n{super().__str__()}"
        )

    waited: float = 0.0


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


class _HeldSync(psycopg.Connection[Any]):
    """The held session as the sync engine's driver connection."""

    _pool = None  # psycopg's __del__ then does not warn: the held session outlives it

    def commit(self) -> None:
        """Ending a transaction is a ``RELEASE``, emitted by :class:`HeldSession`."""

    def rollback(self) -> None:
        """Undoing a transaction is a ``ROLLBACK TO``, emitted by :class:`HeldSession`."""

    def close(self) -> None:
        """The held session outlives every engine; :class:`HeldSession` closes it."""


class _HeldAsync(psycopg.AsyncConnection[Any]):
    """The held session as the async engine's driver connection."""

    _pool = None

    async def commit(self) -> None:
        """See :meth:`_HeldSync.commit`."""

    async def rollback(self) -> None:
        """See :meth:`_HeldSync.rollback`."""

    async def close(self) -> None:
        """See :meth:`_HeldSync.close`."""


def _conninfo(url: URL) -> dict[str, Any]:
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
        self._stack: list[tuple[int, str]] = []
        self._in_test = False
        self._escape: str | None = None
        self.raw = self._open()
        sync_url = self.url.set(drivername="postgresql+psycopg")
        self.sync_engine: Engine = create_engine(
            sync_url, creator=lambda: _HeldSync(self.raw.pgconn), poolclass=StaticPool
        )
        self.async_engine: AsyncEngine = create_async_engine(
            sync_url, async_creator=self._connect_async, poolclass=StaticPool
        )
        for engine in (self.sync_engine, self.async_engine.sync_engine):
            self._listen(engine)
        event.listen(self.async_engine.sync_engine, "checkout", _unbind_locks)
        self._prime()

    def _open(self) -> psycopg.Connection[Any]:
        ms = int(self.lock_timeout_s * 1000)
        raw = psycopg.connect(
            **_conninfo(self.url),
            autocommit=True,
            prepare_threshold=None,  # no driver-made prepared statements to tell from a test's
            application_name=APPLICATION,
            options=f"-c lock_timeout={ms}",
            connect_timeout=10,
        )
        self._baseline = self._state(raw)
        return raw

    async def _connect_async(self) -> _HeldAsync:
        return _HeldAsync(self.raw.pgconn)

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
        self._open_outer()
        self._in_test = True

    def _open_outer(self) -> None:
        self.raw.execute("BEGIN")
        self.raw.execute(f"SAVEPOINT {OUTER}")

    def end_test(self) -> Verdict:
        """Roll back what the test did; say how it escaped and what session state it left
        (cleared), and end other sessions left on the working database."""
        self._in_test = False
        self._stack.clear()
        verdict = Verdict(escape=self._escape)
        self._escape = None
        status = self.raw.pgconn.transaction_status
        if verdict.escape is None and status == pq.TransactionStatus.IDLE:
            verdict.escape = "the outer transaction was ended behind SQLAlchemy's back"
        if status != pq.TransactionStatus.IDLE:
            if verdict.escape is None:
                try:
                    self.raw.execute(f"ROLLBACK TO SAVEPOINT {OUTER}")
                except psycopg.errors.InvalidSavepointSpecification:
                    verdict.escape = "the outer transaction was ended and begun again"
            self.raw.execute("ROLLBACK")
        with self._own_statements():
            state = self._state(self.raw)
            verdict.state = [line for line in state if line not in self._baseline]
            if verdict.state:
                self.raw.execute("DISCARD ALL")
            others = self.raw.execute(_OTHERS, (self.raw.info.backend_pid,)).fetchall()
            if others:
                verdict.others = _describe(others)
                for row in others:
                    self.raw.execute("SELECT pg_terminate_backend(%s, 1000)", (row[0],))
        return verdict

    @contextlib.contextmanager
    def _own_statements(self) -> Any:
        ms = int(OWN_STATEMENT_TIMEOUT_S * 1000)
        self.raw.execute(f"SET statement_timeout = {ms}")
        try:
            yield
        finally:
            self.raw.execute("RESET statement_timeout")

    @staticmethod
    def _state(raw: psycopg.Connection[Any]) -> list[str]:
        lines = []
        for kind, query in _STATE_QUERIES.items():
            lines += [f"{kind}: {row[0]}" for row in raw.execute(query)]
        return lines

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

    def _listen(self, engine: Engine) -> None:
        def before_cursor_execute(conn: Connection, *args: Any) -> None:
            if not self._in_test or any(key == id(conn) for key, _ in self._stack):
                return
            if self.raw.pgconn.transaction_status != pq.TransactionStatus.INTRANS:
                return  # aborted: the statement fails as it would; the rollback recovers
            name = f"memdb_sp_{next(self._names)}"
            self.raw.execute(f"SAVEPOINT {name}")
            self._stack.append((id(conn), name))

        def after_cursor_execute(conn: Connection, cursor: Any, statement: str, *a: Any) -> None:
            self._check_outer(statement)

        def handle_error(context: Any) -> Any:
            self._check_outer(context.statement or "")
            original = context.original_exception
            if isinstance(original, psycopg.errors.LockNotAvailable):
                return self._lock_wait_error(context)
            return None

        def commit(conn: Connection) -> None:
            self._finish(conn, "RELEASE SAVEPOINT {0}")

        def rollback(conn: Connection) -> None:
            self._finish(conn, "ROLLBACK TO SAVEPOINT {0}", "RELEASE SAVEPOINT {0}")

        event.listen(engine, "before_cursor_execute", before_cursor_execute)
        event.listen(engine, "after_cursor_execute", after_cursor_execute)
        event.listen(engine, "handle_error", handle_error)
        event.listen(engine, "commit", commit)
        event.listen(engine, "rollback", rollback)

    def _lock_wait_error(self, context: Any) -> LockWaitTimeout:
        """Name the sessions holding locks, asked on a connection of its own (the held one
        is in an aborted transaction)."""
        holders = ""
        with contextlib.suppress(psycopg.Error):
            info = {**_conninfo(self.url), "connect_timeout": 5}
            with psycopg.connect(**info, options="-c statement_timeout=5000") as probe:
                rows = probe.execute(_OTHERS, (self.raw.info.backend_pid,)).fetchall()
                holders = _describe(rows)
        error = LockWaitTimeout(context.statement, context.parameters, context.original_exception)
        error.holders = holders
        error.waited = self.lock_timeout_s
        return error

    def _check_outer(self, statement: str) -> None:
        """After a statement: if the test's SQL ended the outer transaction, record it and
        open it again, so its later writes are contained."""
        if not self._in_test or self.raw.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            return
        if self._escape is None:
            shown = " ".join(statement.split())[:200]
            self._escape = f"the statement {shown!r} ended it"
        self._stack.clear()
        self._open_outer()

    def _finish(self, conn: Connection, *templates: str) -> None:
        index = next((i for i, (key, _) in enumerate(self._stack) if key == id(conn)), None)
        if index is None:
            return
        name = self._stack[index][1]
        del self._stack[index:]  # a RELEASE takes the savepoints begun after it along
        if self.raw.pgconn.transaction_status == pq.TransactionStatus.IDLE:
            return  # the outer transaction is gone; teardown reports it
        for template in templates:
            self.raw.execute(template.format(name))


def _unbind_locks(dbapi_connection: Any, record: Any, proxy: Any) -> None:
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
    engines (what the test committed stays in the old one, which is dropped)."""

    def __init__(self, pool: ClonePool, *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.pool = pool
        self.database = pool.take()
        self.session = HeldSession(
            pool.cluster.url_for(self.database), lock_timeout_s=lock_timeout_s
        )
        self.reclones = 0

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
            self.pool.give_back(old)
            self.reclones += 1
        return verdict

    def close(self) -> None:
        self.session.close()
        self.pool.give_back(self.database)
