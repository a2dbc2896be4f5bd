"""``memdb_takeover``: the suite's own engines, wherever they are made, on each test's database.

Imports SQLAlchemy: load lazily (only runs with ``memdb_takeover`` set import it, at
start-up, so that engines made at import are reached too). Tutorials and frameworks make
their engine inside a fixture or a helper (``engine = create_engine("sqlite:///./test.db")``,
``Base.metadata.create_all(engine)``), or hold it in a session-scoped fixture: nothing a
swap can name in ``memdb_bind``. What every such engine does go through is SQLAlchemy's
``do_connect`` event, the way ``memdb_strict`` sees them: one process-wide listener (first
in line, before ``memdb_strict``'s) answers a connection to a URL the option lists with a
driver connection of its own:

* while a test's ``memdb`` is open (from its set-up to its teardown: the plugin puts
  ``memdb`` first among each test's function-scoped fixtures), one on that test's
  database, made as the plugin's own engines make theirs (:meth:`EnginePair.connect_sync`,
  ``connect_async``, ``memdb_pragmas`` set by :meth:`EnginePair.prepare`); in ``rollback``
  isolation, on the test's one shared connection, and the engine is joined to the test's
  transaction with the plugin's own listeners (:meth:`SharedConnection.join`: savepoints,
  the write lock, the escape checks), taken off again at the test's end; so copy,
  rollback and session isolation hold for it as for ``memdb_session``;
* outside a test (a session-, module- or class-scoped fixture's set-up or teardown, an
  engine used at import), one on a scratch copy of the template, made on first use and
  shared by everything outside tests: ``create_all`` finds the template's tables there, and
  no test ever sees what is written to it (the next test warns when something was:
  :class:`~pytest_memdb.errors.MemdbWarning`).

Every connection it makes is closed when the test (or the stretch outside tests) it was made
for ends: the pool entry is invalidated, so an engine that outlives the test (a
session-scoped one) connects again, to the next test's database, instead of reusing it.
Connections a scoped fixture holds checked out across tests (a session-scoped ``Connection``)
are closed under it too: their next use fails, and SQLAlchemy connects again.

Not reached: engines on memdb's own databases (``memdb_url``; the plugin's engines use
creators and never pass through ``do_connect``), engines with a ``creator`` of their own,
and ``sqlite3.connect`` called directly.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from sqlalchemy import Engine, event, util
from sqlalchemy.pool import ConnectionPoolEntry

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.callers import caller
from pytest_memdb.errors import MemdbError
from pytest_memdb.integrations.takeover_patterns import TakeoverPattern
from pytest_memdb.sqlite.engines import EnginePair
from pytest_memdb.sqlite.savepoints import SharedConnection


class _Source(Protocol):
    """What connections are made from: a test's engines (copy, session: an
    :class:`EnginePair`; rollback: a :class:`SharedConnection`) or the scratch database's."""

    def connect_sync(self) -> Any: ...

    async def connect_async(self) -> Any: ...

    def prepare(self, dbapi_connection: Any) -> None: ...


@dataclass
class _Made:
    record: ConnectionPoolEntry | None
    connection: Any
    is_async: bool


class Takeover:
    """The ``do_connect`` listener, and which database it connects to right now."""

    def __init__(
        self,
        patterns: tuple[TakeoverPattern, ...],
        origin: str,
        outside: Callable[[], EnginePair],
    ) -> None:
        """``outside``: the scratch database's engines (made on first use)."""
        self.patterns = patterns
        self.origin = origin
        self._make_outside = outside
        self._outside: EnginePair | None = None
        self._outside_seen: int | None = None
        """The scratch database's ``data_version`` when it was last looked at."""
        self._outside_users: dict[str, str] = {}
        """Pattern -> where a connection outside tests was first made for it."""
        self._source: _Source | None = None
        self._made: list[_Made] = []
        self._joined: dict[int, tuple[Engine, Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self._paused = 0
        event.listen(Engine, "do_connect", self._do_connect, insert=True)

    def describe(self) -> str:
        """The report header's line."""
        urls = ", ".join(pattern.text for pattern in self.patterns)
        them = "it" if len(self.patterns) == 1 else "them"
        return (
            f"memdb: takeover of {urls} ({self.origin}): each test's connections to {them} "
            "open the test's memdb database; outside a test, a scratch copy of the template"
        )

    def begin(self, source: object) -> list[str]:
        """A test's ``memdb`` is open: from now on its connections go to ``source`` (its
        engines). Closes what was connected outside tests; returns the warnings to give."""
        if not isinstance(source, (EnginePair, SharedConnection)):
            raise MemdbError(f"pytest-memdb: memdb_takeover cannot connect to {source!r}.")
        self._close_made()
        warnings = self._outside_written()
        self._source = source
        return warnings

    def end(self) -> None:
        """The test's ``memdb`` is handed back: take the listeners off the engines joined to
        its transaction, and close every connection made for it (before the database is
        restored, which a connection holding a write would stop)."""
        self._source = None
        with self._lock:
            joined, self._joined = list(self._joined.values()), {}
        try:
            for _engine, remove in joined:
                remove()
        finally:
            self._close_made()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing taken over while the plugin builds a template (a migration's engine)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def close(self) -> None:
        """At the end of the run: stop listening; close what is still connected."""
        with contextlib.suppress(Exception):
            event.remove(Engine, "do_connect", self._do_connect)
        self.end()

    # --- the listener ---------------------------------------------------------------------

    def _do_connect(
        self, dialect: Any, record: ConnectionPoolEntry | None, cargs: list[Any], cparams: Any
    ) -> Any:
        if self._paused or dialect.name != "sqlite":
            return None
        database = str(cargs[0] if cargs else cparams.get("database") or "")
        if "vfs=memdb" in database:  # memdb's own databases (memdb_url), never another's
            return None
        driver = str(getattr(dialect, "driver", ""))
        pattern = next((p for p in self.patterns if p.matches(driver, database)), None)
        if pattern is None:
            return None
        is_async = bool(getattr(dialect, "is_async", False))
        source = self._source
        if source is None:
            source = self._outside_source(pattern)
        elif isinstance(source, SharedConnection):
            self._join(source, is_async, pattern)
        if is_async:  # in SQLAlchemy's greenlet: the dialect awaits the creator, as for ours
            connection = dialect.loaded_dbapi.connect(async_creator_fn=source.connect_async)
        else:
            connection = source.connect_sync()
        source.prepare(connection)
        self._made.append(_Made(record, connection, is_async))  # atomic, from any thread
        return connection

    def _join(self, shared: SharedConnection, is_async: bool, pattern: TakeoverPattern) -> None:
        engine = _connecting_engine()
        if engine is None:
            raise MemdbError(
                f"pytest-memdb (memdb_takeover): a connection to {pattern.text} was made at "
                f"{caller()} without an engine (a pool used on its own), so it cannot join "
                "this test's transaction in rollback isolation. Run this test in copy "
                "isolation: @pytest.mark.memdb(isolation='copy')."
            )
        with self._lock:
            if id(engine) not in self._joined:
                self._joined[id(engine)] = (engine, shared.join(engine, is_async=is_async))

    def _outside_source(self, pattern: TakeoverPattern) -> EnginePair:
        if self._outside is None:
            with self.paused():  # the template's build may connect (migrations)
                self._outside = self._make_outside()
            self._outside_seen = self._outside.database.data_version()
        self._outside_users.setdefault(pattern.text, caller())
        return self._outside

    # --- connections ----------------------------------------------------------------------

    def _close_made(self) -> None:
        """Invalidate the pool entry of every connection made since the last call (the pool
        connects again on its next checkout), or close the connection when its entry holds
        another by now; async ones in a greenlet, as SQLAlchemy closes them."""
        made, self._made = self._made, []
        if not made:
            return
        failure: BaseException | None = None
        for item in (m for m in made if not m.is_async):
            failure = _close(item) or failure
        on_loop = [m for m in made if m.is_async]
        if on_loop:
            failures = run_sync(util.greenlet_spawn(lambda: [_close(m) for m in on_loop]))
            failure = failure or next((f for f in failures if f is not None), None)
        if failure is not None:
            raise failure

    def _outside_written(self) -> list[str]:
        """A warning when something wrote to the scratch database since the last look."""
        if self._outside is None:
            return []
        version = self._outside.database.data_version()
        if version is None or version == self._outside_seen:
            return []
        self._outside_seen = version
        urls = ", ".join(self._outside_users)
        where = "; ".join(f"{url} at {at}" for url, at in self._outside_users.items())
        return [
            f"pytest-memdb (memdb_takeover): {urls} was written outside any test (a session-, "
            f"module- or class-scoped fixture, or code run at import; first connected there: "
            f"{where}). Outside a test, taken-over engines reach a scratch copy of the "
            "template that no test sees: each test starts from the template. Put rows every "
            "test needs in the template (memdb_load, the pytest_memdb_template hook), or "
            "write them in that fixture through a layer it asks for (memdb_suite, "
            "memdb_module, memdb_class: their sessions and URLs)."
        ]


def _close(made: _Made) -> BaseException | None:
    try:
        record = made.record
        if record is not None and record.dbapi_connection is made.connection:
            record.invalidate()
        elif made.connection is not None:
            with contextlib.suppress(Exception):  # closed already, with its pool
                made.connection.close()
    except Exception as exc:  # the others are closed first
        return exc
    return None


def _connecting_engine() -> Engine | None:
    """The engine whose pool is connecting: ``Engine.raw_connection`` is on the way to every
    ``do_connect`` an engine makes (a ``Connection``'s, a reconnect's, a raw one's); the
    event itself only tells the pool entry, which does not know its engine."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "raw_connection":
            engine = frame.f_locals.get("self")
            if isinstance(engine, Engine):
                return engine
        frame = frame.f_back
    return None
