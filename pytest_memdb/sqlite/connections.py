"""The ``sqlite3`` connections under every memdb engine, which notice state a test leaves.

Standard library only. A PRAGMA or ``ATTACH`` is SQL, and the engines see it go by
(:func:`leaves_connection_state`); a SQL function, collation, authorizer, progress
handler, limit, ``deserialize()``, a ``row_factory``, ``text_factory`` or
``isolation_level`` set on the driver connection is not: done through SQLAlchemy's dbapi
connection or aiosqlite's on a pooled connection, it would stay on it for every later test
that gets that connection (bytes for text, rollbacks that do not roll back, another
database's image). So the connections are of a ``sqlite3.Connection`` subclass that tells
its owner, once it has *armed* them (at their first checkout: SQLAlchemy's dialect
registers its own ``regexp`` function when a connection is made, before that), of **every**
attribute assigned and every method called that is not known to leave nothing behind
(:data:`STATEFUL_METHODS` is computed from this Python's ``sqlite3``, so a method a later
Python adds counts by default). Its owner then closes it instead of pooling it for another
test. Measured: assigning an attribute takes 2.1 us instead of 0.4; nothing on the statement path
changes.

Out of reach: state set by C code on the raw ``sqlite3*`` handle, behind Python.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, Literal, Self

from pytest_memdb.core.statements import leading_verb

BUSY_TIMEOUT_S = 5.0
"""How long a connection waits for another one's write lock, as ``sqlite3``'s default."""

_STATEFUL_VERBS = frozenset(
    {"PRAGMA", "ATTACH", "DETACH", "CREATE", "DROP", "ALTER", "VACUUM", "REINDEX", "ANALYZE"}
)


_seen: dict[str, bool] = {}
"""Answers of :func:`leaves_connection_state` by statement: SQLAlchemy runs the same cached
statement strings again and again, and a string keeps its hash."""


def leaves_connection_state(statement: str) -> bool:
    """Whether ``statement`` may leave state on the connection that ran it, or change the schema.

    ``PRAGMA`` (``foreign_keys``, ``query_only``, ``reverse_unordered_selects``, ...),
    ``ATTACH``/``DETACH`` and ``CREATE TEMP ...`` outlive the transaction on that one
    connection; every other DDL is counted too (it is rare in tests, and a
    ``CREATE TABLE temp.x`` is DDL as well).
    """
    answer = _seen.get(statement)
    if answer is None:
        if len(_seen) > 4096:
            _seen.clear()
        answer = _seen[statement] = leading_verb(statement) in _STATEFUL_VERBS
    return answer


class _WatchingCursor(sqlite3.Cursor):
    """A cursor that tells its connection which statements it runs (see ``watch``)."""

    connection: TrackedConnection

    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        self.connection._ran(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Self:
        self.connection._ran(sql)
        return super().executemany(sql, seq_of_parameters)

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        self.connection._touched()  # several statements: any of them may
        return super().executescript(sql_script)


class TrackedConnection(sqlite3.Connection):
    """A ``sqlite3`` connection that reports per-connection state set on it through Python."""

    memdb_on_state: Callable[[], None] | None = None
    """Called when, after :meth:`arm`, something registers state on this connection."""
    memdb_watch: bool = False
    """Whether statements run on this connection are looked at too (copy mode)."""

    def arm(self, on_state: Callable[[], None], *, statements: bool = False) -> None:
        """From now on, registering anything on this connection calls ``on_state``; with
        ``statements``, so does running a statement that may leave state
        (:func:`leaves_connection_state`).

        Statements are watched here, on the driver's connection and cursors, rather than by a
        ``before_cursor_execute`` listener on the engine: any engine listener sends every
        statement through SQLAlchemy's slower event path (measured: 25 us per test of three
        statements; here 1-2 us), and statements a test runs on the raw connection are seen.
        """
        self.memdb_on_state = on_state
        self.memdb_watch = statements

    def _touched(self) -> None:
        if self.memdb_on_state is not None:
            self.memdb_on_state()

    def _ran(self, statement: object) -> None:
        if self.memdb_watch and (
            not isinstance(statement, str) or leaves_connection_state(statement)
        ):
            self._touched()

    def cursor(self, factory: Any = None) -> Any:
        if not self.memdb_watch:
            return super().cursor() if factory is None else super().cursor(factory)
        if factory is None:
            return super().cursor(_WatchingCursor)
        self._touched()  # a cursor class of the test's own: its statements go unseen
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self._ran(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        self._ran(sql)
        return super().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        if self.memdb_watch:
            self._touched()
        return super().executescript(sql_script)

    def __setattr__(self, name: str, value: Any) -> None:
        """Any attribute set on the driver connection after :meth:`arm` (``row_factory``,
        ``text_factory``, ``isolation_level``, ``autocommit``, or one a later Python adds)
        is state the next test would inherit: every assignment counts, not a list of names.
        """
        if not name.startswith("memdb_"):
            self._touched()
        super().__setattr__(name, value)

    def close(self) -> None:
        """A test that closes the driver connection leaves a pooled connection that cannot
        be used: its pool is emptied before the next test."""
        self._touched()
        super().close()


# Every other public method of ``sqlite3.Connection`` that may change the connection (a
# function, collation, authorizer, handler, limit, extension, ``deserialize()``'s other
# image, a method a later Python adds) tells the owner before it runs. What is *known* to
# leave nothing behind is listed; everything else counts, so nothing is missed by default.
_STATELESS_METHODS = frozenset(
    {
        "cursor",  # overridden above (statements are looked at where they run)
        "execute",
        "executemany",
        "executescript",
        "commit",
        "rollback",
        "close",  # overridden above
        "interrupt",
        "getlimit",
        "getconfig",
        "serialize",
        "iterdump",
        "backup",  # reads this database into another one
        "blobopen",  # a blob left open holds a read: the lock probe sees it
    }
)


def _telling(name: str) -> Callable[..., Any]:
    original = getattr(sqlite3.Connection, name)

    def method(self: TrackedConnection, *args: Any, **kwargs: Any) -> Any:
        self._touched()
        return original(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = original.__doc__
    return method


STATEFUL_METHODS: tuple[str, ...] = tuple(
    sorted(
        name
        for name in dir(sqlite3.Connection)
        if not name.startswith("_")
        and name not in _STATELESS_METHODS
        and callable(getattr(sqlite3.Connection, name))
        and not isinstance(getattr(sqlite3.Connection, name), type)  # the exception classes
    )
)
"""The driver methods counted as leaving state (``create_function``, ``deserialize``,
``setlimit``, ``set_authorizer``, ... as this Python's ``sqlite3`` has them)."""

for _name in STATEFUL_METHODS:
    setattr(TrackedConnection, _name, _telling(_name))


def connect(
    uri: str, *, isolation_level: Literal["DEFERRED", "EXCLUSIVE", "IMMEDIATE"] | None = "DEFERRED"
) -> TrackedConnection:
    """A tracked connection to a memdb database, usable from any thread (aiosqlite's too)."""
    connection = sqlite3.connect(
        uri,
        uri=True,
        timeout=BUSY_TIMEOUT_S,
        check_same_thread=False,
        isolation_level=isolation_level,
        factory=TrackedConnection,
    )
    assert isinstance(connection, TrackedConnection)
    return connection
