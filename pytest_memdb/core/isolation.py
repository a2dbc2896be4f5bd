"""The three isolation modes: three small strategies over one working database.

Imports SQLAlchemy: load lazily. A test's path through the plugin is the same in every
mode (:meth:`pytest_memdb.core.template.TemplateBase.open` and ``_end``): take the working
database, made equal to the template; run the test; close what it left checked out;
then the one step that differs; then put its connections back in order and make the
database equal again. The step that differs:

* ``copy``: nothing. The test works on the working database itself; whatever it
  committed is undone by the restore that follows (only when something was committed).
* ``rollback``: the test works inside an outer transaction on one shared connection
  (:mod:`pytest_memdb.sqlite.savepoints`), rolled back at the end and *verified*: if the test's
  SQL ended that transaction, the restore still undoes what it committed, and the test
  is reported (:class:`~pytest_memdb.errors.IsolationError`).
* ``session``: the test works on a working database of its own that is never restored,
  so its writes are there for the next ``session`` test.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_memdb.core.config import Isolation


class Database(Protocol):
    """What a handle shows of its database, on any backend (SQLite:
    :class:`~pytest_memdb.sqlite.memory.MemoryDatabase`, PostgreSQL:
    :class:`~pytest_memdb.postgresql.working.PgDatabase`)."""

    @property
    def name(self) -> str: ...

    @property
    def async_url(self) -> str: ...

    @property
    def sync_url(self) -> str: ...


class EngineSource(Protocol):
    """Where a test's engines come from (an EnginePair, or rollback's shared connection)."""

    @property
    def async_engine(self) -> AsyncEngine: ...

    @property
    def sync_engine(self) -> Engine: ...


class SharedTransaction(EngineSource, Protocol):
    """Rollback mode's one connection and the engines on it (SQLite:
    :class:`~pytest_memdb.sqlite.savepoints.SharedConnection`)."""

    def begin_test(self) -> None:
        """Open the outer transaction the test's work goes into."""

    def end_test(self) -> str | None:
        """Roll the test's work back; how it escaped, if it did."""


class WorkingDatabase(Protocol):
    """What the strategies and the template's driver (:mod:`pytest_memdb.core.template`)
    need of a backend's working database (SQLite:
    :class:`~pytest_memdb.sqlite.working.WorkingDatabase`, PostgreSQL:
    :class:`~pytest_memdb.postgresql.working.PgWorkingDatabase`): they never see which
    backend it is."""

    last_handed: object
    """The engines the last test was handed (settled again only when that changes)."""

    @property
    def engines(self) -> EngineSource: ...

    @property
    def shared(self) -> SharedTransaction: ...

    @property
    def shared_if_made(self) -> SharedTransaction | None: ...

    def database_of(self, engines: EngineSource) -> Database:
        """The database ``engines`` reach (what the test's handle shows)."""

    def is_free(self) -> bool:
        """Whether no connection a test leaked holds the database (it would make the next
        test wait)."""

    def make_equal(
        self,
        *,
        after_test: bool = False,
        force: bool = False,
        doubt: bool = False,
        keep_name: bool = False,
    ) -> bool:
        """Bring the database back to the template's content; False if a leaked lock stops
        it. ``force``: even if nothing was seen written; ``doubt``: the test left state that
        may have written; ``keep_name``: a reset, the test goes on under the same name."""

    def close_leftovers(self) -> None:
        """Close what the test left checked out of the engines' pools."""

    def needs_settling(self, source: object) -> bool:
        """Whether the connections of ``source`` carry anything a test left."""

    def settle_if_needed(
        self, source: object, *, keep_engines: bool = False, needed: bool | None = None
    ) -> None:
        """Close or replace the connections of ``source`` that carry what a test left."""

    async def aclose(self) -> None: ...


class Strategy(Protocol):
    name: Isolation
    restores: bool
    """Whether the working database is made equal to the template around each test."""

    def source(self, working: WorkingDatabase) -> EngineSource | None:
        """The engines this mode hands out, if they exist yet (nothing is made or begun)."""

    def begin(self, working: WorkingDatabase) -> EngineSource:
        """The engines the test gets (which also write its view out for
        ``--memdb-keep-failed``: :class:`~pytest_memdb.core.janitor.Dumps`)."""

    def end(self, working: WorkingDatabase) -> str | None:
        """Finish the test's work; how it escaped its isolation, if it did."""


class Copy:
    name: Isolation = "copy"
    restores = True

    def source(self, working: WorkingDatabase) -> EngineSource | None:
        return working.engines

    def begin(self, working: WorkingDatabase) -> EngineSource:
        return working.engines

    def end(self, working: WorkingDatabase) -> str | None:
        return None


class Rollback:
    name: Isolation = "rollback"
    restores = True

    def source(self, working: WorkingDatabase) -> EngineSource | None:
        return working.shared_if_made

    def begin(self, working: WorkingDatabase) -> EngineSource:
        shared = working.shared
        shared.begin_test()
        return shared

    def end(self, working: WorkingDatabase) -> str | None:
        return working.shared.end_test()


class Session(Copy):
    """Copy's steps on a working database of its own that is never restored."""

    name: Isolation = "session"
    restores = False


STRATEGIES: dict[Isolation, Strategy] = {
    "copy": Copy(),
    "rollback": Rollback(),
    "session": Session(),
}
