"""Layers: data a module-, class- or session-scoped fixture adds on top of a template.

Imports SQLAlchemy: load lazily. Django's ``setUpTestData`` for pytest and async
SQLAlchemy: a scoped fixture writes rows once (through the layer's sessions, engines or
URL, so through the app too), and every test of that scope starts from the template *plus
those rows*, isolated as usual in every mode.

A :class:`MemdbLayer` is a shared in-memory database, a copy of what it is laid on (the
template, or the enclosing layer: session, then module, then class), made on first use:
a layer nobody wrote to costs nothing and is its parent. When a test of its scope asks
for ``memdb``, :meth:`MemdbLayer.template` freezes what the layer holds into a private
:class:`~pytest_memdb.registry.Template` (one backup), with working databases of its own;
the tests then run on those exactly as on any template. Frozen again only if a scoped
fixture set up later (a module fixture first asked for by the module's third test) wrote
more. A test that writes to a layer itself is an error at its teardown: that write would
reach the tests after it.

A layer lives as long as its fixture: pytest tears a module's fixtures down when it moves
to another module's test (pytest-randomly, xdist's ``--dist load``), and sets them up
again if it comes back, so a layer is rebuilt then and is never stale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Engine, orm
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pytest_memdb._loop import run_sync
from pytest_memdb.config import LAYER_FIXTURES
from pytest_memdb.engines import EnginePair
from pytest_memdb.errors import MemdbError
from pytest_memdb.janitor import MemdbHandle
from pytest_memdb.memory import MemoryDatabase, unique_name

if TYPE_CHECKING:
    from pytest_memdb.registry import Template


class Base(Protocol):
    """What a layer is laid on: a template, or another layer."""

    def template(self) -> Template: ...

    def root(self) -> Template: ...


class Deferred:
    """A template found on first use (see :meth:`MemdbRegistry.layer`)."""

    def __init__(self, find: Callable[[], Template]) -> None:
        self._find = find
        self._found: Template | None = None

    def template(self) -> Template:
        return self.root()

    def root(self) -> Template:
        if self._found is None:
            self._found = self._find()
        return self._found


class MemdbLayer:
    """One scope's data on top of ``parent`` (see the module doc)."""

    def __init__(self, parent: Base, scope: str, label: str) -> None:
        self.parent = parent
        self.scope = scope
        self.label = label
        self._database: MemoryDatabase | None = None
        self._engines: EnginePair | None = None
        self._handle: MemdbHandle | None = None
        self._laid_on: Template | None = None
        self._frozen: Template | None = None
        self._frozen_at: int | None = None
        self._closed = False

    # -- what a layer fixture uses to write ---------------------------------------------
    @property
    def handle(self) -> MemdbHandle:
        """The layer's database, made on first use (a copy of what it is laid on)."""
        if self._handle is None:
            if self._closed:
                raise MemdbError(f"pytest-memdb: the {self.scope} layer was already torn down.")
            base = self.parent.template()
            name = unique_name(base.worker, self.label, f"{self.scope}-layer")
            database = base.database.copy(name)
            self._database, self._laid_on = database, base
            self._engines = EnginePair(database, echo=base.echo, pragmas=base.pragmas)
            self._handle = MemdbHandle(
                database=database,
                source=base.source,
                isolation="session",
                engines=self._engines,
                release=lambda: None,
                classes=base.classes,
            )
        return self._handle

    @property
    def name(self) -> str:
        return self.handle.name

    @property
    def url(self) -> str:
        """The ``sqlite+aiosqlite://`` URL of the layer's database (for the app's engines)."""
        return self.handle.url

    @property
    def sync_url(self) -> str:
        return self.handle.sync_url

    @property
    def engine(self) -> AsyncEngine:
        return self.handle.engine

    @property
    def sync_engine(self) -> Engine:
        return self.handle.sync_engine

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        """Sessions with ``expire_on_commit=False``: the objects a layer fixture returns keep
        their ids and loaded attributes in the tests (detached)."""
        return self.handle.sessionmaker

    @property
    def sync_sessionmaker(self) -> orm.sessionmaker[orm.Session]:
        return self.handle.sync_sessionmaker

    def session(self) -> AsyncSession:
        """``async with memdb_module.session() as session:`` in an async scoped fixture."""
        return self.handle.session()

    def sync_session(self) -> orm.Session:
        """``with memdb_module.sync_session() as session:`` in a sync scoped fixture."""
        return self.handle.sync_session()

    # -- what the tests of its scope get ------------------------------------------------
    def root(self) -> Template:
        """The template under every layer of this stack (what ``memdb`` is built from)."""
        return self.parent.root()

    def template(self) -> Template:
        """What the tests of this scope start from: the layer, frozen as it is now."""
        if self._database is None or self._laid_on is None:
            return self.parent.template()
        if self.parent.template() is not self._laid_on:
            raise MemdbError(
                f"pytest-memdb: the layer under this {self.scope} layer got more data after "
                f"the {self.scope} layer was built on it (a wider-scoped fixture was set up "
                "late, by a later test). Ask for that fixture from the narrower layer's "
                "fixture, or make it autouse, so it is set up first."
            )
        version = self._database.data_version()
        if self._frozen is None or version is None or version != self._frozen_at:
            self._freeze(self._laid_on, version)
        assert self._frozen is not None
        return self._frozen

    def _freeze(self, base: Template, version: int | None) -> None:
        assert self._database is not None
        name = unique_name(base.worker, self.label, f"{self.scope}-frozen")
        private = MemoryDatabase(name, shared=False)
        try:
            if not private.fill_from(self._database, give_up_after=1.0):
                raise MemdbError(
                    f"pytest-memdb: the {self.scope} layer {self._database.name} holds an "
                    "uncommitted write (a session of a layer fixture that was never committed "
                    "or closed): commit it in the fixture, before its tests run."
                )
        except BaseException:
            private.close()
            raise
        if self._frozen is not None:
            run_sync(self._frozen.aclose())
        self._frozen = base.derived(private, f"{self.label}-{self.scope}")
        self._frozen_at = version

    def written(self) -> int | None:
        """A value that moves when anything commits to the layer (None: nothing made yet)."""
        return self._database.data_version() if self._database is not None else None

    def check_unwritten_since(self, before: int | None, test: str) -> None:
        """Fail a test that wrote to the layer itself: later tests of the scope would see it."""
        if self._database is not None and before is not None and self.written() != before:
            raise MemdbError(
                f"pytest-memdb: {test} wrote to the {self.scope} layer "
                f"({LAYER_FIXTURES[self.scope]}) itself. A layer is written by {self.scope}-"
                "scoped fixtures, before the tests of its scope run; each test gets a copy "
                "(memdb, memdb_session, ...) and writes there."
            )

    def close(self) -> None:
        """Free the layer (at the end of its scope)."""
        self._closed = True
        frozen, self._frozen = self._frozen, None
        engines, self._engines = self._engines, None
        database, self._database = self._database, None
        self._handle = None
        try:
            if frozen is not None:
                run_sync(frozen.aclose())
            if engines is not None:
                run_sync(engines.aclose())
        finally:
            if database is not None:
                database.close()
