"""Copy isolation, made cheap: one copy per template, restored in place only when needed.

Imports SQLAlchemy: load it lazily.

A :class:`CopySlot` is one in-memory copy of a template under a fixed name, with one
:class:`EnginePair` on it that lives as long as the slot. Before each ``copy`` test
it is brought back to the template's content:

* nothing to do when no connection committed anything since the last test (the
  anchor's ``PRAGMA data_version`` is unchanged: it moves on every commit of every
  other connection, whatever the driver or statement) and no statement that leaves
  per-connection state (``PRAGMA``, ``ATTACH``, DDL such as ``CREATE TEMP TABLE``) ran
  through the slot's engines;
* otherwise the template is backed up *into* the open copy (the pages are overwritten
  in memory that is already mapped, without a journal), and the connections in the
  engines' pools stay open: they were rolled back when they went back to the pool,
  and SQLite makes them reread pages and schema;
* when such a per-connection statement ran, the pools are emptied as well, so no
  connection carries a ``PRAGMA``, attached database or temp table into the next test.

A connection an earlier test leaked that still holds a read or write open would make
the backup wait forever: then that test's slot is left alone and the test gets a
fresh copy under a new name, freed at its teardown.
"""

from __future__ import annotations

from pytest_memdb._loop import run_sync
from pytest_memdb.engines import EnginePair
from pytest_memdb.memory import MemoryDatabase
from pytest_memdb.pragmas import Pragmas


class CopySlot:
    """One reusable copy of a template, restored in place between tests."""

    def __init__(
        self, template: MemoryDatabase, name: str, *, echo: bool, pragmas: Pragmas = ()
    ) -> None:
        self.template = template
        self.database = template.copy(name)
        self.database.prepare_for_restores()
        self.engines = EnginePair(self.database, echo=echo, pragmas=pragmas, watch_state=True)
        self.in_use = False
        self.restores = 0
        """How many times the copy was restored (the first copy not counted)."""
        self.reuses = 0
        """How many tests got the copy as the previous test left it: nothing was committed."""
        self._version = self.database.data_version()

    def take(self) -> bool:
        """Make the copy equal to the template for a new test; False if a leaked lock stops it."""
        if self.in_use:
            return False
        stateful = self.engines.stateful
        if stateful:
            run_sync(self.engines.aclose())  # no connection keeps a PRAGMA or temp table
        version = self.database.data_version()
        if version is None:  # a connection holds a write open
            return False
        if version == self._version and not stateful:
            self.reuses += 1
        else:
            if not self.database.restore_from(self.template):
                return False
            self.restores += 1
            self._version = self.database.data_version()
        self.in_use = True
        return True

    def release(self) -> None:
        """The test is over; the copy is checked (and restored if need be) at the next take."""
        self.in_use = False

    async def aclose(self) -> None:
        try:
            await self.engines.aclose()
        finally:
            self.database.close()
