"""SQLite's template: a private in-memory database built once and never written again, and
the working databases made from it.

Imports SQLAlchemy: load it lazily. What the template holds is built elsewhere
(:mod:`pytest_memdb.sqlite.build`); how tests take turns on copies of it (one way in, one
way out, every isolation mode) is the backend-free driver
(:class:`~pytest_memdb.core.template.TemplateBase`); here is what is SQLite's: the working
databases in memory, restored in place, and the check that nothing wrote the template.
Layers (:mod:`pytest_memdb.core.layers`) freeze their data into a template too
(:meth:`Template.derived`).
"""

from __future__ import annotations

from pathlib import Path

from pytest_memdb.core.config import Restore
from pytest_memdb.core.isolation import WorkingDatabase as Working
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.core.template import Role, TemplateBase
from pytest_memdb.errors import MemdbError
from pytest_memdb.integrations.sessions import DEFAULT_CLASSES, SessionClasses
from pytest_memdb.sqlite.memory import MemoryDatabase, SourceLocked, unique_name
from pytest_memdb.sqlite.pragmas import Pragmas
from pytest_memdb.sqlite.working import WorkingDatabase


class Template(TemplateBase):
    """A template in memory, and the working databases made from it.

    The template is a private in-memory database (see :class:`MemoryDatabase`): no test,
    app or engine can reach it, and after every test :meth:`check_unchanged` proves that
    nothing wrote it.
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
        super().__init__(source=source, label=label, classes=classes, stats=stats)
        self.restore = restore
        self.database = database
        self.echo = echo
        self.worker = worker
        self.pragmas = pragmas
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
        return self

    def root(self) -> Template:
        return self

    def new_working(self, role: Role) -> WorkingDatabase:
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

    def carry_over(self, leaked: Working) -> WorkingDatabase:
        """The session database again, under a new name: a connection an earlier test
        leaked holds a lock on it, which would make this test wait and fail. (Its pages are
        not recorded: it does not start as a copy of the template, so a reset backs up.)"""
        assert isinstance(leaked, WorkingDatabase)
        name = unique_name(self.worker, self.label, "session")
        try:
            return WorkingDatabase(
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

    async def close_template(self) -> None:
        self.database.close()
