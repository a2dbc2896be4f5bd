"""A template, built once and never written again, and the working databases made from it.

Imports SQLAlchemy: load it lazily. What the template holds is built elsewhere
(:mod:`pytest_memdb.core.templates`); here is how tests take turns on copies of it: one way in
(:meth:`Template.open`), one way out (the handle's release), shared by every isolation
mode (:mod:`pytest_memdb.core.isolation`) and by layers (:mod:`pytest_memdb.core.layers`), whose
frozen data is a template too.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.config import Isolation, Restore
from pytest_memdb.core.isolation import STRATEGIES, EngineSource, Save, Strategy
from pytest_memdb.core.janitor import MemdbHandle
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.errors import IsolationError, MemdbError
from pytest_memdb.integrations.sessions import DEFAULT_CLASSES, SessionClasses, SyncMakers
from pytest_memdb.messages import RESET_BLOCKED, ROLLBACK_ESCAPE
from pytest_memdb.sqlite.memory import MemoryDatabase, SourceLocked, unique_name
from pytest_memdb.sqlite.pragmas import Pragmas
from pytest_memdb.sqlite.working import WorkingDatabase


class Template:
    """A template built once, never written again, and the working databases made from it.

    The template is a private in-memory database (see :class:`MemoryDatabase`): no test,
    app or engine can reach it, and after every test :meth:`check_unchanged` proves that
    nothing wrote it. ``copy`` and ``rollback`` tests share one :class:`WorkingDatabase`,
    ``session`` tests have their own (:mod:`pytest_memdb.core.isolation`).
    """

    def __init__(
        self,
        source: Path | None,
        database: MemoryDatabase,
        *,
        echo: bool,
        worker: str,
        label: str,
        pragmas: Pragmas = (),
        classes: SessionClasses = DEFAULT_CLASSES,
        restore: Restore = "auto",
        stats: MemdbStats | None = None,
    ) -> None:
        self.source = source
        self.stats = stats if stats is not None else MemdbStats()
        """The run's counters (:mod:`pytest_memdb.core.stats`), shared with what is made
        from it."""
        self.restore = restore
        self.database = database
        self.echo = echo
        self.worker = worker
        self.label = label
        """Readable part of the names of this template's databases (file stem or fixture)."""
        self.pragmas = pragmas
        self.classes = classes
        self._sync_makers = SyncMakers(classes)
        self._working: WorkingDatabase | None = None
        self._session: WorkingDatabase | None = None
        self._as_built = database.writes()

    def derived(self, database: MemoryDatabase, label: str) -> Template:
        """A template of the same settings on another database (a layer, frozen)."""
        return Template(
            self.source,
            database,
            echo=self.echo,
            worker=self.worker,
            label=label,
            pragmas=self.pragmas,
            classes=self.classes,
            restore=self.restore,
            stats=self.stats,
        )

    def template(self) -> Template:
        """What tests start from (a template is the bottom of a stack of layers)."""
        return self

    def root(self) -> Template:
        return self

    def open(self, isolation: Isolation) -> MemdbHandle:
        """A database for one test, equal to the template as built (except in ``session``)."""
        strategy = STRATEGIES[isolation]
        working = self._take(strategy)
        source = strategy.source(working)
        if source is not None and source is not working.last_handed:
            working.settle_if_needed(source)  # a test of another mode may have reached it
        engines, save = strategy.begin(working)
        handle = MemdbHandle(
            database=working.database,
            source=self.source,
            isolation=isolation,
            engines=engines,
            release=lambda: self._end(strategy, working, handle.engines_handed),
            save=save,
            classes=self.classes,
            sync_makers=self._sync_makers,
            restart=lambda: self._restart(strategy, working, handle.engines_handed),
        )
        self.stats.databases += 1
        return handle

    def _take(self, strategy: Strategy) -> WorkingDatabase:
        if not strategy.restores:
            if self._session is None:
                self._session = self._new_working("session")
            elif not self._session.database.is_free():
                self._session = self._carry_over(self._session)
            return self._session
        working = self._working
        if working is not None:
            if working.make_equal():
                return working
            self._abandon(working)
        self._working = self._new_working("copy")
        return self._working

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
    ) -> tuple[EngineSource, Save | None]:
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
            raise MemdbError(RESET_BLOCKED(name=working.database.name))
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
        database is equal to the template (True when no restore was asked for)."""
        try:
            working.engines.close_leftovers()
            escape = strategy.end(working)
            doubt = working.needs_settling(engines)  # state left: it may have written, too
            working.settle_if_needed(engines, keep_engines=keep_engines, needed=doubt)
            equal = not restore or working.make_equal(
                after_test=True, force=not strategy.restores, doubt=doubt
            )
        finally:
            self.check_unchanged()
        return escape, equal

    def _new_working(self, role: str) -> WorkingDatabase:
        name = unique_name(self.worker, self.label, role)
        return WorkingDatabase(
            self.database,
            name,
            echo=self.echo,
            pragmas=self.pragmas,
            watch_state=role != "session",
            record_pages=self.restore != "backup",  # session mode's too: memdb.reset()
            stats=self.stats,
        )

    def _carry_over(self, leaked: WorkingDatabase) -> WorkingDatabase:
        """The session database again, under a new name: a connection an earlier test
        leaked holds a lock on it, which would make this test wait and fail. (Its pages are
        not recorded: it does not start as a copy of the template, so a reset backs up.)"""
        name = unique_name(self.worker, self.label, "session")
        try:
            fresh = WorkingDatabase(
                self.database,
                name,
                echo=self.echo,
                pragmas=self.pragmas,
                content=leaked.database,
                watch_state=False,
                stats=self.stats,
            )
        except SourceLocked:
            raise MemdbError(
                f"pytest-memdb: a connection an earlier session-mode test left open holds an "
                f"uncommitted write on the session database {leaked.database.name}; SQLite "
                "lets no other connection read past it, so this test cannot have the "
                "session's data. Commit or close that connection (an engine built from "
                "memdb_url, a raw sqlite3 connection) in the test that opened it."
            ) from None
        run_sync(leaked.aclose())
        return fresh

    def _abandon(self, working: WorkingDatabase) -> None:
        """Leave a working database to the leaked connection that holds it; free ours."""
        if working is self._working:
            self._working = None
        run_sync(working.aclose())

    def check_unchanged(self) -> None:
        """Fail loudly if anything wrote the template since it was built.

        Only the plugin holds a connection to it (its anchor), so this guards the
        plugin's own code: the anchor's ``total_changes`` and the schema cookie.
        """
        if self.database.writes() != self._as_built:
            raise MemdbError(
                f"pytest-memdb: the template {self.database.name} was written after it was "
                "built (during this test), so later tests would not start from it. This is "
                "a bug in pytest-memdb: please report it with this test."
            )

    async def aclose(self) -> None:
        try:
            for working in (self._working, self._session):
                if working is not None:
                    await working.aclose()
        finally:
            self._working = self._session = None
            self.database.close()
