"""A template and the tests that take turns on copies of it: one way in, one way out,
the same for every backend and every isolation mode.

Imports SQLAlchemy: load it lazily. A backend says how its template is kept and how a
working database is made from it (:class:`TemplateBase`'s four abstract methods: SQLite's
:class:`~pytest_memdb.sqlite.template_database.Template`, PostgreSQL's
:class:`~pytest_memdb.postgresql.backend.PgTemplate`); everything else is here, once:

* :meth:`TemplateBase.open`: take the working database, made equal to the template; the
  isolation strategy's step in (:mod:`pytest_memdb.core.isolation`); a handle;
* the handle's release: close what the test left checked out; the strategy's step out
  (rollback's verdict); the connections put in order; the database made equal to the
  template again; the template checked unchanged. A working database that cannot be made
  equal (a leaked connection holds it) is abandoned and the next test gets a new one;
* ``memdb.reset()``: the way out, then the way in again, on the same database name.

What the strategies and this driver need of a working database is the
:class:`~pytest_memdb.core.isolation.WorkingDatabase` protocol; they never see which backend
it is.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.config import Isolation
from pytest_memdb.core.isolation import STRATEGIES, EngineSource, Strategy, WorkingDatabase
from pytest_memdb.core.janitor import MemdbHandle
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.errors import IsolationError, MemdbError
from pytest_memdb.integrations.sessions import DEFAULT_CLASSES, SessionClasses, SyncMakers
from pytest_memdb.messages import RESET_BLOCKED, ROLLBACK_ESCAPE

Role = Literal["copy", "session"]
"""Which working database: the one ``copy`` and ``rollback`` tests take turns on, or the
one ``session`` tests share and never restore."""


class TemplateBase(ABC):
    """A template built once, never written again, and the working databases made from it.

    ``copy`` and ``rollback`` tests share one working database, ``session`` tests have
    their own (:mod:`pytest_memdb.core.isolation`).
    """

    def __init__(
        self,
        *,
        source: Path | None,
        label: str,
        classes: SessionClasses = DEFAULT_CLASSES,
        stats: MemdbStats | None = None,
    ) -> None:
        self.source = source
        """The fixture file the template was built from, if any (the handle shows it)."""
        self.label = label
        """Readable part of the names of this template's databases (file stem or fixture)."""
        self.classes = classes
        self.stats = stats if stats is not None else MemdbStats()
        """The run's counters (:mod:`pytest_memdb.core.stats`), shared with what is made
        from it."""
        self._sync_makers = SyncMakers(classes)
        self._working: WorkingDatabase | None = None
        self._session: WorkingDatabase | None = None
        self._unreported: dict[int, str] = {}
        """Escapes found by a reset whose restore then failed (a timeout, an interrupt),
        by working database: the test's end reports them."""

    # -- what a backend says -------------------------------------------------------------
    @abstractmethod
    def new_working(self, role: Role) -> WorkingDatabase:
        """A new working database, equal to the template, under a new name."""

    @abstractmethod
    def carry_over(self, leaked: WorkingDatabase) -> WorkingDatabase:
        """The session database again under a new name, with the data earlier ``session``
        tests left (a connection an earlier test leaked holds ``leaked``)."""

    @abstractmethod
    def check_unchanged(self) -> None:
        """Fail loudly if anything wrote the template since it was built."""

    @abstractmethod
    async def close_template(self) -> None:
        """Free the template itself (its working databases are closed already)."""

    # -- one way in -----------------------------------------------------------------------
    def template(self) -> TemplateBase:
        """What tests start from (a template is the bottom of a stack of layers)."""
        return self

    def root(self) -> TemplateBase:
        return self

    def open(self, isolation: Isolation) -> MemdbHandle:
        """A database for one test, equal to the template as built (except in ``session``)."""
        strategy = STRATEGIES[isolation]
        working = self._take(strategy)
        source = strategy.source(working)
        if source is not None and source is not working.last_handed:
            working.settle_if_needed(source)  # a test of another mode may have reached it
        engines = strategy.begin(working)
        handle = MemdbHandle(
            database=working.database_of(engines),
            source=self.source,
            isolation=isolation,
            engines=engines,
            release=lambda: self._end(strategy, working, handle.engines_handed),
            classes=self.classes,
            sync_makers=self._sync_makers,
            restart=lambda: self._restart(strategy, working, handle.engines_handed),
        )
        self.stats.databases += 1
        return handle

    def _take(self, strategy: Strategy) -> WorkingDatabase:
        if not strategy.restores:
            if self._session is None:
                self._session = self.new_working("session")
            elif not self._session.is_free():
                self._session = self._replace_session(self._session)
            return self._session
        working = self._working
        if working is not None:
            if working.make_equal():
                return working
            self._abandon(working)
        self._working = self.new_working("copy")
        return self._working

    def _replace_session(self, leaked: WorkingDatabase) -> WorkingDatabase:
        fresh = self.carry_over(leaked)
        run_sync(leaked.aclose())
        return fresh

    # -- one way out ----------------------------------------------------------------------
    def _end(self, strategy: Strategy, working: WorkingDatabase, engines: EngineSource) -> None:
        """The one way out of every test: the strategy's step, then put everything back."""
        escape, equal = self._wind_down(
            strategy, working, engines, restore=strategy.restores and working is self._working
        )
        if not equal:  # a connection the test leaked holds a lock: the next test gets a new one
            self._abandon(working)
        if escape is not None:
            self.stats.escapes += 1
            raise IsolationError(ROLLBACK_ESCAPE(how=escape))

    def _restart(
        self, strategy: Strategy, working: WorkingDatabase, engines: EngineSource
    ) -> EngineSource:
        """``memdb.reset()``: the way out of a test, then the way in again, on the same
        working database made equal to the template (in ``session`` mode too: a reset asks
        for it). One Hypothesis example after another, each from the template."""
        try:
            escape, restored = self._wind_down(
                strategy, working, engines, restore=True, keep_engines=True
            )
        except BaseException:  # a restore stopped half-way (a timeout): teardown redoes it,
            with contextlib.suppress(Exception):  # and ends the test's transaction, which
                strategy.begin(working)  # must then be there (rollback mode)
            raise
        restarted = strategy.begin(working)  # begun again in any case: teardown ends it
        if not restored:
            raise MemdbError(RESET_BLOCKED(name=working.database_of(engines).name))
        if escape is not None:
            self.stats.escapes += 1
            raise IsolationError(ROLLBACK_ESCAPE(how=escape))
        return restarted

    def _wind_down(
        self,
        strategy: Strategy,
        working: WorkingDatabase,
        engines: EngineSource,
        *,
        restore: bool,
        keep_engines: bool = False,
    ) -> tuple[str | None, bool]:
        """What a test's end and a reset share: close what the test left checked out, the
        strategy's step, the connections put in order, then (``restore``) the database made
        equal to the template again (a ``session`` database too); the template checked in
        any case. Returns how the test escaped its isolation, if it did, and whether the
        database is equal to the template (True when no restore was asked for).
        ``keep_engines`` (a reset): the test goes on with the engines and the database
        name it holds."""
        escape: str | None = None
        try:
            working.close_leftovers()
            escape = strategy.end(working) or self._unreported.pop(id(working), None)
            doubt = working.needs_settling(engines)  # state left: it may have written, too
            working.settle_if_needed(engines, keep_engines=keep_engines, needed=doubt)
            equal = not restore or working.make_equal(
                after_test=True,
                force=not strategy.restores,
                doubt=doubt,
                keep_name=keep_engines,
            )
        except BaseException:
            if escape is not None:  # found, then the restore failed: the test's end reports it
                self._unreported[id(working)] = escape
            raise
        finally:
            self.check_unchanged()
        return escape, equal

    def _abandon(self, working: WorkingDatabase) -> None:
        """Leave a working database to the leaked connection that holds it; free ours."""
        if working is self._working:
            self._working = None
        run_sync(working.aclose())

    async def aclose(self) -> None:
        try:
            for working in (self._working, self._session):
                if working is not None:
                    await working.aclose()
        finally:
            self._working = self._session = None
            await self.close_template()
