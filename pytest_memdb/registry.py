"""One pytest session's databases (per xdist worker): templates by file, copies per test.

Kept in ``config.stash`` by the plugin, like pytest's own ``TempPathFactory``.
Imports SQLAlchemy: load it lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pytest_memdb._loop import run_sync
from pytest_memdb.config import MemdbConfig, Target
from pytest_memdb.copies import CopySlot
from pytest_memdb.engines import EnginePair
from pytest_memdb.errors import MemdbError
from pytest_memdb.janitor import MemdbHandle
from pytest_memdb.memory import MemoryDatabase, unique_name
from pytest_memdb.pragmas import Pragmas
from pytest_memdb.savepoints import SharedConnection
from pytest_memdb.templates import TemplateHook, build_template


@dataclass
class Template:
    """A template built once, and what rollback and session modes keep of it.

    The template itself stays as it was built: ``copy`` tests copy it, ``rollback``
    tests work on it inside a transaction that is always rolled back, and
    ``session`` tests share a separate copy whose writes persist.
    """

    source: Path | None
    database: MemoryDatabase
    echo: bool
    worker: str
    label: str
    """Readable part of the names of this template's databases (file stem or fixture)."""
    pragmas: Pragmas = ()
    _shared: SharedConnection | None = field(default=None, init=False)
    _session_db: MemoryDatabase | None = field(default=None, init=False)
    _session_engines: EnginePair | None = field(default=None, init=False)
    _copy_slot: CopySlot | None = field(default=None, init=False)

    def open_copy(self) -> MemdbHandle:
        """A copy of the template as it was built, for one test.

        The copies take turns in one :class:`~pytest_memdb.copies.CopySlot`, under one
        name, restored in place only when the previous test changed something; the
        engines, their pooled connections and SQLAlchemy's compiled-statement cache serve
        every test instead of starting over (see :mod:`pytest_memdb.copies`).
        """
        if self._copy_slot is None:
            self._copy_slot = CopySlot(
                self.database, self._new_copy_name(), echo=self.echo, pragmas=self.pragmas
            )
            self._copy_slot.in_use = True
            slot: CopySlot | None = self._copy_slot
        else:
            slot = self._copy_slot if self._copy_slot.take() else None
        if slot is not None:
            return self._copy_handle(slot.database, slot.engines, slot.release)
        # A connection an earlier test leaked still holds the slot's copy: go around it.
        database = self.database.copy(self._new_copy_name())
        engines = self._engines(database)

        def release() -> None:
            try:
                run_sync(engines.aclose())
            finally:
                database.close()

        return self._copy_handle(database, engines, release)

    def _new_copy_name(self) -> str:
        return unique_name(self.worker, self.label, "copy")

    def _engines(self, database: MemoryDatabase) -> EnginePair:
        return EnginePair(database, echo=self.echo, pragmas=self.pragmas)

    def _copy_handle(
        self, database: MemoryDatabase, engines: EnginePair, release: Callable[[], None]
    ) -> MemdbHandle:
        return MemdbHandle(
            database=database,
            source=self.source,
            isolation="copy",
            engines=engines,
            release=release,
        )

    def open_rollback(self) -> MemdbHandle:
        if self._shared is None:
            self._shared = SharedConnection(self.database, echo=self.echo, pragmas=self.pragmas)
        self._shared.begin_test()
        return MemdbHandle(
            database=self.database,
            source=self.source,
            isolation="rollback",
            engines=self._shared,
            release=self._shared.end_test,
            save=self._shared.save,
        )

    def open_session(self) -> MemdbHandle:
        if self._session_db is None or self._session_engines is None:
            self._session_db = self.database.copy(unique_name(self.worker, self.label, "session"))
            self._session_engines = self._engines(self._session_db)
        return MemdbHandle(
            database=self._session_db,
            source=self.source,
            isolation="session",
            engines=self._session_engines,
            release=lambda: None,
        )

    async def aclose(self) -> None:
        try:
            if self._shared is not None:
                await self._shared.aclose()
            if self._session_engines is not None:
                await self._session_engines.aclose()
            if self._copy_slot is not None:
                await self._copy_slot.aclose()
        finally:
            if self._session_db is not None:
                self._session_db.close()
            self.database.close()


class MemdbRegistry:
    """Builds each template once and hands out per-test handles."""

    def __init__(
        self, settings: MemdbConfig, worker: str, hook: TemplateHook | None = None
    ) -> None:
        self.settings = settings
        self.worker = worker
        self._hook = hook
        self._templates: dict[tuple[object, ...], Template] = {}
        self._failures: dict[tuple[tuple[object, ...], str], MemdbError] = {}

    def open(self, target: Target) -> MemdbHandle:
        """This test's database, isolated as ``target.isolation`` says."""
        template = self.template(target)
        if target.isolation == "rollback":
            return template.open_rollback()
        if target.isolation == "session":
            return template.open_session()
        return template.open_copy()

    def template(self, target: Target) -> Template:
        """The template ``target`` describes; one that failed to build fails fast after."""
        key = target.template_key()
        failure_key = (key, target.file_origin)
        failure = self._failures.get(failure_key)
        if failure is not None:
            raise failure
        if key not in self._templates:
            label = target.file.stem if target.file is not None else target.fixture
            try:
                database = build_template(
                    target,
                    unique_name(self.worker, label, "template"),
                    base_dir=self.settings.base_dir,
                    pragmas=self.settings.pragmas,
                    hook=self._hook,
                )
            except MemdbError as exc:
                self._failures[failure_key] = exc
                raise
            self._templates[key] = Template(
                target.file.resolve() if target.file is not None else None,
                database,
                self.settings.echo,
                self.worker,
                label,
                self.settings.pragmas,
            )
        return self._templates[key]

    def close(self) -> None:
        """Free every template (called once, at the end of the session)."""
        templates, self._templates = list(self._templates.values()), {}
        for template in templates:
            run_sync(template.aclose())
