"""A layer's database on SQLite: what :mod:`pytest_memdb.core.layers` needs of a backend.

Imports SQLAlchemy: load lazily. The layer is a shared in-memory database, a copy of the
template (or checkpoint) it is laid on. Whether anything wrote to it since its last
checkpoint is one ``PRAGMA data_version`` on its anchor (about 1 us): SQLite bumps it for
every commit made by another connection, and a write held open makes it unreadable
(counted as a change). A checkpoint is one backup into a private in-memory database,
made a :class:`~pytest_memdb.sqlite.template_database.Template` of the same settings; a
put-back is a backup the other way.
"""

from __future__ import annotations

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.janitor import MemdbHandle
from pytest_memdb.core.layers import LayerTemplate
from pytest_memdb.sqlite.engines import EnginePair
from pytest_memdb.sqlite.memory import MemoryDatabase, unique_name
from pytest_memdb.sqlite.template_database import Template

RESTORE_WAIT_S = 1.0
"""How long putting a layer back (or checkpointing it) waits for a lock another connection
holds on it."""


def _template(of: LayerTemplate) -> Template:
    if not isinstance(of, Template):  # a layer is laid on its own backend's templates only
        raise TypeError(f"a SQLite layer is laid on a SQLite template, not {of!r}")
    return of


class SqliteLayerDatabase:
    """One layer's shared in-memory database (:class:`~pytest_memdb.core.layers.LayerDatabase`)."""

    def __init__(self, base: LayerTemplate, scope: str, label: str) -> None:
        """A copy of ``base`` (a template or a checkpoint), put back by backups from now on."""
        self._base = _template(base)
        self._scope = scope
        self._label = label
        name = unique_name(self._base.worker, label, f"{scope}-layer")
        self._database = self._base.database.copy(name)
        self._database.prepare_for_restores()  # put back by backups, never waiting
        self._expected = self._database.data_version()
        self._engines = EnginePair(self._database, echo=self._base.echo, pragmas=self._base.pragmas)
        self.handle = MemdbHandle(
            database=self._database,
            source=self._base.source,
            isolation="session",
            engines=self._engines,
            release=lambda: None,
            classes=self._base.classes,
        )

    def changed(self) -> bool:
        version = self._database.data_version()
        return version is None or version != self._expected

    def checkpoint(self) -> Template | None:
        name = unique_name(self._base.worker, self._label, f"{self._scope}-frozen")
        private = MemoryDatabase(name, shared=False)
        try:
            pending = self._database.data_version() is None  # a write held open: no reading
            if pending or not private.fill_from(self._database, give_up_after=RESTORE_WAIT_S):
                private.close()
                return None
        except BaseException:
            private.close()
            raise
        self._expected = self._database.data_version()
        return self._base.derived(private, f"{self._label}-{self._scope}")

    def put_back(self, to: LayerTemplate) -> bool:
        source = _template(to).database
        if not self._database.restore_from(source, give_up_after=RESTORE_WAIT_S, full=True):
            return False
        self._expected = self._database.data_version()
        return True

    def close(self) -> None:
        try:
            run_sync(self._engines.aclose())
        finally:
            self._database.close()
