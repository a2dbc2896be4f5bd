"""The working database: the one copy of a template that tests run on, kept equal to it.

Imports SQLAlchemy: load it lazily.

The template itself is never handed out (it is a private in-memory database, reachable
only through its anchor connection: see :class:`~pytest_memdb.sqlite.memory.MemoryDatabase`).
``copy`` and ``rollback`` tests take turns on one :class:`WorkingDatabase` per template,
under one name, with long-lived connections on it (an :class:`EnginePair` for copy
tests, a :class:`SharedConnection` for rollback tests) whose pools and compiled-statement
caches serve every test. Between tests it is brought back to the template's content:

* nothing to do when no connection committed anything since the last check (the
  anchor's ``PRAGMA data_version`` is unchanged: it moves on every commit of every
  other connection, whatever the driver or statement);
* otherwise the pages tests wrote are copied back from the template
  (:mod:`pytest_memdb.sqlite.pages`: 0.04-0.07 ms after a one-row write, at 10 or 100 MB), or,
  where that is not available or something wrote around it, the template is backed up
  *into* the open copy (1.5 ms at 10 MB, 20-30 ms at 100 MB); connections open on it
  stay open, and SQLite makes them reread the pages (and the schema, after DDL);
* connections that carry per-connection state, listeners a test added, or a statement
  that was cancelled are closed (or their engines replaced) instead of reused.

Before a test gets it, the working database must also be free: a connection an earlier
test leaked (an engine the app made from ``memdb_url``, a raw ``sqlite3`` connection)
may still hold a read or a write open on it, which would make the restore wait and the
test's own commits fail after the busy timeout. The anchor asks for an exclusive lock
with no waiting (a few microseconds); when it cannot get one, the working database is
abandoned to whoever holds it and a new one is made under a new name.

``session`` tests get a working database of their own that is never restored.
"""

from __future__ import annotations

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.sqlite.engines import EnginePair
from pytest_memdb.sqlite.memory import MemoryDatabase
from pytest_memdb.sqlite.pragmas import Pragmas
from pytest_memdb.sqlite.savepoints import SharedConnection


class WorkingDatabase:
    """A copy of a template and the connections on it, restored in place between tests."""

    def __init__(
        self,
        template: MemoryDatabase,
        name: str,
        *,
        echo: bool,
        pragmas: Pragmas = (),
        content: MemoryDatabase | None = None,
        watch_state: bool = True,
        record_pages: bool = False,
        stats: MemdbStats | None = None,
    ) -> None:
        """``content``: what the new database holds at first, if not the template's;
        ``watch_state``: look at every statement for per-connection state (not in session
        mode, where nothing is undone); ``record_pages``: restore only the pages tests
        wrote, where the page-recording VFS is available (:mod:`pytest_memdb.sqlite.pages`);
        ``stats``: the run's counters (restores by kind)."""
        self.template = template
        self._stats = stats if stats is not None else MemdbStats()
        self.database = (content or template).copy(name)
        self.database.prepare_for_restores(pages_from=template if record_pages else None)
        self._echo = echo
        self._pragmas = pragmas
        self.engines = EnginePair(
            self.database, echo=echo, pragmas=pragmas, watch_state=watch_state
        )
        self._shared: SharedConnection | None = None
        self.restores = 0
        """How many times the copy was restored (the first copy not counted)."""
        self.reuses = 0
        """How many tests left the database as they got it (nothing committed: no restore)."""
        self._version = self.database.data_version()
        self._unfinished = False
        """A restore was begun and did not return: the next one backs up the whole template."""
        self.last_handed: object = None
        """The engines the last test was handed (checked again only when that changes)."""

    @property
    def shared(self) -> SharedConnection:
        """Rollback mode's one connection on this database (made on first use)."""
        if self._shared is None:
            self._shared = SharedConnection(self.database, echo=self._echo, pragmas=self._pragmas)
        return self._shared

    @property
    def shared_if_made(self) -> SharedConnection | None:
        return self._shared

    def database_of(self, engines: object) -> MemoryDatabase:
        """Every engine of a working database reaches the one database."""
        return self.database

    def is_free(self) -> bool:
        """Whether no connection holds a read or a write open on it (an exclusive lock
        asked for with no waiting: a few microseconds)."""
        return self.database.is_free()

    def close_leftovers(self) -> None:
        self.engines.close_leftovers()

    def changed(self) -> bool:
        """Whether any connection committed to this database since it was last made equal."""
        return self.database.data_version() != self._version

    def make_equal(
        self,
        *,
        after_test: bool = False,
        force: bool = False,
        doubt: bool = False,
        keep_name: bool = False,
    ) -> bool:
        """Bring the database back to the template's content; False if a leaked lock stops it.

        Called before each test (a leaked connection may commit at any time) and after one
        (``after_test``: so the database is the template's again as soon as it can be; a
        test that committed nothing counts as a reuse). A restore checks the locks itself.
        ``force``: restore even if nothing was committed since the last check (a ``session``
        database, whose earlier tests' writes are not counted as changes); ``doubt``: the
        test left its connections in a state that may have written without a commit (counted
        only where pages are not recorded: the shim sees every write). The database is
        restored in place: it always keeps its name (``keep_name``, a reset, changes nothing).

        Any sign of a write means a restore: a commit (``data_version`` moved), or a page
        the page-recording VFS saw written, committed or not (``journal_mode=OFF`` and a
        rolled-back update leave changed pages and no commit), or a doubt. A restore that
        did not finish (an exception in it: a pytest-timeout firing, a KeyboardInterrupt)
        is done again in full, as a backup, before anything else.
        """
        if self.database.closed:
            return False  # a test called memdb.database.close() (the anchor)
        full = self._unfinished
        recorded = self.database.restores_pages  # then every write is seen: no doubt needed
        doubt = doubt and not recorded
        if not (force or doubt or full or self.database.touched or self.changed()):
            self.reuses += after_test
            self._stats.restores_none += after_test
            return self.database.is_free()
        self._unfinished = True
        if not self.database.restore_from(self.template, full=full):
            self._unfinished = full  # nothing was changed: only a held lock stopped it
            return False
        self._unfinished = False
        self.restores += 1
        self._stats.restored(self.database.last_restore)
        self._version = self.database.data_version()
        return True

    def needs_settling(self, source: object) -> bool:
        """Whether the connections of ``source`` (the engines a test was handed) carry
        anything a test left; checked without an event loop, and only for the engines a
        test could reach (about 3 us an engine)."""
        if source is self.engines:
            return self.engines.stateful or self.engines.listeners_changed()
        return source is self._shared and self._shared is not None and self._shared.needs_renewal()

    async def settle(self, source: object, *, keep_engines: bool = False) -> None:
        """Close or replace whatever connections a test left state on (see the module doc).

        ``keep_engines`` (``memdb.reset()``, within a test): the engines the test holds stay
        the same objects, with the listeners the test added, and only their connections are
        renewed, so everything handed out keeps working; they are replaced at its end.
        """
        if source is self.engines:
            await self.engines.settle(replace=not keep_engines)
        elif source is self._shared and self._shared is not None:
            if keep_engines or not self._shared.engines_changed():
                await self._shared.renew()
            else:
                shared, self._shared = self._shared, None
                await shared.aclose()

    def settle_if_needed(
        self, source: object, *, keep_engines: bool = False, needed: bool | None = None
    ) -> None:
        """``needed``: what :meth:`needs_settling` answered, when the caller asked already
        (comparing the listeners costs 20 us an engine pair)."""
        if self.needs_settling(source) if needed is None else needed:
            run_sync(self.settle(source, keep_engines=keep_engines))
        self.last_handed = source

    async def aclose(self) -> None:
        """Close every connection and free the memory (also when a leaked lock holds it)."""
        try:
            await self.engines.aclose()
            if self._shared is not None:
                shared, self._shared = self._shared, None
                await shared.aclose()
        finally:
            self.database.close()
