"""The three isolation modes: three small strategies over one working database.

Imports SQLAlchemy: load lazily. A test's path through the plugin is the same in every
mode (:meth:`pytest_memdb.core.registry.Template.open` and ``_end``): take the working
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

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_memdb.core.config import Isolation


class EngineSource(Protocol):
    """Where a test's engines come from (an EnginePair, or rollback's shared connection)."""

    @property
    def async_engine(self) -> AsyncEngine: ...

    @property
    def sync_engine(self) -> Engine: ...


Save = Callable[[Path], Path]


class SharedTransaction(EngineSource, Protocol):
    """Rollback mode's one connection and the engines on it (SQLite:
    :class:`~pytest_memdb.sqlite.savepoints.SharedConnection`)."""

    def begin_test(self) -> None:
        """Open the outer transaction the test's work goes into."""

    def end_test(self) -> str | None:
        """Roll the test's work back; how it escaped, if it did."""

    def save(self, path: Path) -> Path:
        """Write the test's view out (``--memdb-keep-failed``)."""


class WorkingDatabase(Protocol):
    """What the strategies need of a backend's working database (SQLite:
    :class:`~pytest_memdb.sqlite.working.WorkingDatabase`): they never see which backend
    it is."""

    @property
    def engines(self) -> EngineSource: ...

    @property
    def shared(self) -> SharedTransaction: ...

    @property
    def shared_if_made(self) -> SharedTransaction | None: ...


class Strategy(Protocol):
    name: Isolation
    restores: bool
    """Whether the working database is made equal to the template around each test."""

    def source(self, working: WorkingDatabase) -> EngineSource | None:
        """The engines this mode hands out, if they exist yet (nothing is made or begun)."""

    def begin(self, working: WorkingDatabase) -> tuple[EngineSource, Save | None]:
        """The engines the test gets, and how to write its view out (None: what was committed)."""

    def end(self, working: WorkingDatabase) -> str | None:
        """Finish the test's work; how it escaped its isolation, if it did."""


class Copy:
    name: Isolation = "copy"
    restores = True

    def source(self, working: WorkingDatabase) -> EngineSource | None:
        return working.engines

    def begin(self, working: WorkingDatabase) -> tuple[EngineSource, Save | None]:
        return working.engines, None

    def end(self, working: WorkingDatabase) -> str | None:
        return None


class Rollback:
    name: Isolation = "rollback"
    restores = True

    def source(self, working: WorkingDatabase) -> EngineSource | None:
        return working.shared_if_made

    def begin(self, working: WorkingDatabase) -> tuple[EngineSource, Save | None]:
        shared = working.shared
        shared.begin_test()
        return shared, shared.save

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
