"""Layers: data a module-, class- or session-scoped fixture adds on top of a template.

Imports SQLAlchemy: load lazily. Django's ``setUpTestData`` for pytest and async
SQLAlchemy: a scoped fixture writes rows once (through the layer's sessions, engines or
URL, so through the app too), and every test of that scope that asks for the fixture
starts from the template *plus those rows*, isolated as usual in every mode.

A :class:`MemdbLayer` is a database of its backend, a copy of what it is laid on (the
template, or the wider layer the test asked for), made when a fixture first uses it: a
layer nobody wrote to costs nothing and is what it is laid on. After each fixture of the
layer's own scope that wrote to it is set up, the layer is *checkpointed*: frozen into a
template of its own, from which the tests' databases are made exactly as from any
template, and back to which the layer itself is put when anything else wrote to it.

This module is backend-free: what a layer needs of a backend is :class:`LayerDatabase`
(made by a :data:`Lay`), implemented by :mod:`pytest_memdb.sqlite.layers` (a shared
in-memory database, watched by ``PRAGMA data_version``) and
:mod:`pytest_memdb.postgresql.layers` (a database on the server, checkpointed by
``CREATE DATABASE ... TEMPLATE``, watched by a fingerprint of what commits change).

The rule, verified rather than assumed (:class:`Layers`):

* A layer is written only by fixtures of its own scope, while they are set up. Anything
  else that changes it (a test, a function-scoped fixture, a fixture of another scope, a
  teardown, a thread between tests) is found at the next boundary (each fixture's set-up,
  the start and end of each test phase: :meth:`LayerDatabase.changed`, one ``PRAGMA
  data_version`` per layer on SQLite, about 1 us; on PostgreSQL one query when no
  transaction ended on the server since the last look, else two, see
  :mod:`pytest_memdb.postgresql.layers`), reported on the test or fixture that did it,
  and undone: the layer is put back to its last checkpoint. A layer fixture that raises
  after writing is undone too (a rerun sees its rows once).
* A test's database holds exactly the layer fixtures it asked for, whatever ran before
  it: a layer is laid on the wider layer only when the test that first uses it asked for
  that layer (through its fixtures), and each test that takes ``memdb`` checks that the
  fixtures whose rows its layers hold are the ones it asked for. Rows of a fixture it did
  not ask for (set up by an earlier test), or missing rows of one it did, are an error
  naming those fixtures, never silent data.

A layer lives as long as its fixture: pytest tears a module's fixtures down when it moves
to another module's test (pytest-randomly, xdist's ``--dist load``), and sets them up
again if it comes back, so a layer is rebuilt then and is never stale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Engine, orm
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.config import LAYER_FIXTURES, Isolation
from pytest_memdb.core.janitor import MemdbHandle
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.errors import MemdbError


class LayerTemplate(Protocol):
    """A template as layers see it (SQLite's
    :class:`~pytest_memdb.sqlite.template_database.Template`, PostgreSQL's
    :class:`~pytest_memdb.postgresql.backend.PgTemplate`): what a layer is laid on, and what it
    is checkpointed into."""

    def open(self, isolation: Isolation) -> MemdbHandle:
        """A database for one test, made from the template."""

    async def aclose(self) -> None:
        """Free the template and what was made from it."""


class LayerDatabase(Protocol):
    """One layer's database on its backend: written by its fixtures, watched, frozen, put
    back. Made by a :data:`Lay` on the template (or checkpoint) it is laid on."""

    @property
    def handle(self) -> MemdbHandle:
        """What the layer's fixtures write through (its URL, engines and sessions)."""

    def changed(self) -> bool:
        """Whether anything committed to the layer since it was laid or last checkpointed or
        put back (a write held open on it counts as a change). Runs at every boundary:
        it must be cheap."""

    def checkpoint(self) -> LayerTemplate | None:
        """The layer as it is now, frozen into a template of its own; None when a write is
        held open on it (a session never committed or closed)."""

    def put_back(self, to: LayerTemplate) -> bool:
        """Make the layer equal to ``to`` (its last checkpoint, or what it was laid on);
        False when a connection holding it keeps that from being done."""

    def close(self) -> None:
        """Free the layer's database (its checkpoints are closed by the layer)."""


Lay = Callable[[LayerTemplate, str, str], LayerDatabase]
"""A backend's way to lay a layer: ``lay(base, scope, label)``, a new layer database that is
a copy of ``base`` (:meth:`pytest_memdb.core.backend.Backend.lay`)."""


@dataclass(frozen=True)
class Writer:
    """One fixture that writes a layer: its name, where it is defined (a fixture overridden
    under the same name, in a conftest or a module, is another one) and its parameter."""

    name: str
    where: str = ""
    param: int | None = None

    def __str__(self) -> str:
        return self.name if self.param is None else f"{self.name}[{self.param}]"


Asked = Callable[[], tuple[Collection[Writer], Collection[Writer], str]]
"""What a layer asks when it is laid: the fixtures the test being set up asked for, every
fixture a live layer holds rows of, and the test's id."""


class Base(Protocol):
    """What a layer is laid on: a template, or another layer."""

    def template_for(
        self, asked: Collection[Writer], known: Collection[Writer], test: str
    ) -> tuple[LayerTemplate, frozenset[Writer]]:
        """What a test that asked for the fixtures ``asked`` starts from, and whose rows
        that holds (``known``: every fixture whose rows a live layer holds)."""

    def root(self) -> LayerTemplate: ...

    def writers(self) -> frozenset[Writer]: ...


class Deferred:
    """A template found on first use (see :meth:`MemdbRegistry.layer`)."""

    def __init__(self, find: Callable[[], LayerTemplate]) -> None:
        self._find = find
        self._found: LayerTemplate | None = None

    def template_for(
        self, asked: Collection[Writer], known: Collection[Writer], test: str
    ) -> tuple[LayerTemplate, frozenset[Writer]]:
        return self.root(), frozenset()

    def root(self) -> LayerTemplate:
        if self._found is None:
            self._found = self._find()
        return self._found

    def writers(self) -> frozenset[Writer]:
        return frozenset()


class MemdbLayer:
    """One scope's data on top of ``parent`` (see the module doc)."""

    def __init__(
        self,
        parent: Base,
        scope: str,
        label: str,
        asked: Asked = lambda: ((), (), ""),
        stats: MemdbStats | None = None,
        *,
        lay: Lay,
    ) -> None:
        """``asked``: see :data:`Asked` (the layer is laid on what that test asked for);
        ``stats``: the run's counters; ``lay``: the backend's (:data:`Lay`)."""
        self.parent = parent
        self._lay = lay
        self.stats = stats if stats is not None else MemdbStats()
        self.scope = scope
        self.label = label
        self._asked = asked
        self._database: LayerDatabase | None = None
        self._laid_on: LayerTemplate | None = None
        self._base_writers: frozenset[Writer] = frozenset()
        self._own: list[Writer] = []
        """The fixtures of this scope whose rows the layer holds, in the order they wrote."""
        self._checkpoints: list[tuple[frozenset[Writer], LayerTemplate]] = []
        """The layer frozen after each of its fixtures wrote: (whose rows, the template). A
        test starts from the one that holds exactly the fixtures it asked for."""
        self.broken: str | None = None
        """Why the layer cannot be used any more (it could not be put back), if so."""
        self._closed = False

    @property
    def fixture(self) -> str:
        """The layer's fixture name (``memdb_module``...)."""
        return LAYER_FIXTURES[self.scope]

    # -- what a layer fixture uses to write ---------------------------------------------
    @property
    def handle(self) -> MemdbHandle:
        """The layer's database, made on first use (a copy of what it is laid on)."""
        if self._database is None:
            if self._closed:
                raise MemdbError(f"pytest-memdb: the {self.scope} layer was already torn down.")
            self._raise_if_broken()
            asked, known, test = self._asked()
            # Only fixtures of the layers this one is laid on can be missing from its base: a
            # wider scope's layer is laid now after a narrower one was (on what this one is
            # laid on), whose fixtures' rows are in that one, not below this one.
            below = self.parent.writers()
            known = [writer for writer in known if writer in below]
            base, self._base_writers = self.parent.template_for(asked, known, test)
            self._database, self._laid_on = self._lay(base, self.scope, self.label), base
            self.stats.layers_laid += 1
        return self._database.handle

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
    def root(self) -> LayerTemplate:
        """The template under every layer of this stack (what ``memdb`` is built from)."""
        return self.parent.root()

    def writers(self) -> frozenset[Writer]:
        """The fixtures whose rows the layer holds (its own and those of what it was laid
        on)."""
        if self._laid_on is None:
            return self.parent.writers()
        return self._base_writers.union(self._own)

    def template_for(
        self, asked: Collection[Writer], known: Collection[Writer], test: str
    ) -> tuple[LayerTemplate, frozenset[Writer]]:
        """What a test that asked for the fixtures ``asked`` starts from: the checkpoint
        that holds the rows of exactly the layer fixtures it asked for (``known``: every
        fixture a live layer holds rows of). A fixture set up for an earlier test is in the
        layer, but not in the database of a test that did not ask for it, as long as the
        fixtures were set up in an order that allows it (each checkpoint holds the rows of
        the fixtures set up before it); else this is an error naming them."""
        self._raise_if_broken()
        if self._laid_on is None:
            return self.parent.template_for(asked, known, test)
        wanted = frozenset(writer for writer in self._own if writer in asked)
        found = self._laid_on
        extra: list[Writer] = []
        for writers, frozen in self._checkpoints:
            if writers == wanted:
                found = frozen
                break
        else:
            if wanted:  # no checkpoint is exactly them: the first that holds them all
                holding = next(w for w, _ in self._checkpoints if wanted <= w)
                extra = list(holding - wanted)
        extra += self._base_writers.difference(asked)
        held = self._base_writers.union(self._own)
        missing = [writer for writer in known if writer in asked and writer not in held]
        self._refuse(test, extra, missing)
        return found, self._base_writers.union(wanted)

    def _refuse(self, test: str, extra: list[Writer], missing: list[Writer]) -> None:
        if extra:
            raise MemdbError(
                f"pytest-memdb: {test} asks for the {self.scope} layer ({self.fixture}), but "
                f"every copy of it that holds the fixtures this test asks for also holds the "
                f"rows of {_names(extra)}, which it does not ask for: they were set up before "
                "them, for earlier tests (a layer keeps its fixtures' rows in the order they "
                "were set up). Run alone, this test would not see them: a test starts from "
                "exactly the layer fixtures it asks for. Ask for them in this test "
                "(@pytest.mark.usefixtures), have the fixtures it asks for ask for them, or "
                "make them autouse in that scope.",
            )
        if missing:
            raise MemdbError(
                f"pytest-memdb: {test} asks for {_names(missing)}, but its {self.scope} layer "
                f"({self.fixture}) was laid before their rows were written, or on another "
                "layer (by the first test that used it, which did not ask for them), so they "
                f"are not in this test's database. Ask for them from the {self.scope}-scoped "
                "fixtures that write the layer (or make them autouse), so they are set up "
                "first."
            )

    # -- the boundaries (see Layers) ----------------------------------------------------
    @property
    def laid(self) -> bool:
        return self._database is not None

    def unexpected(self) -> bool:
        """Whether the layer changed since its checkpoint and can still be put back (a
        broken one was reported already; one not laid yet holds nothing)."""
        return self.laid and self.broken is None and self.changed()

    def changed(self) -> bool:
        """Whether anything committed to the layer since its last checkpoint (or holds a
        write open on it: that counts as a change)."""
        return self._database is not None and self._database.changed()

    def checkpoint(self, writer: Writer) -> None:
        """``writer`` (a fixture of this scope) wrote to the layer: freeze what it holds.

        Each checkpoint is a template of its own (on SQLite one backup, and memory for one
        more copy of the layer per fixture that wrote to it; on PostgreSQL one database,
        ``CREATE DATABASE ... TEMPLATE``), kept until the scope ends."""
        assert self._database is not None
        assert self._laid_on is not None
        frozen = self._database.checkpoint()
        if frozen is None:
            raise MemdbError(
                f"pytest-memdb: the fixture {writer} left an uncommitted write on the "
                f"{self.scope} layer ({self.fixture}; a session never committed or "
                "closed): commit it in the fixture. The tests that ask for it cannot "
                "start from it. (On PostgreSQL that session's connection is ended to put "
                "the layer back: closing it in the fixture's teardown fails too.)"
            )
        if writer not in self._own:
            self._own.append(writer)
        self._checkpoints.append((frozenset(self._own), frozen))
        self.stats.layers_frozen += 1

    def finished(self, writer: Writer) -> None:
        """``writer`` was torn down while the layer lives (a parametrized fixture moving to
        its next parameter, a fixture overridden deeper in the tree): its rows leave the
        layer, and so do those of the fixtures that wrote after it (they are reported as
        missing to the tests that ask for them)."""
        if writer not in self._own or self._database is None or self._laid_on is None:
            return
        at = self._own.index(writer)
        gone = self._checkpoints[at:]
        del self._checkpoints[at:]
        del self._own[at:]
        for _, frozen in gone:
            run_sync(frozen.aclose())
        self.put_back()

    def put_back(self) -> bool:
        """Undo every change since the last checkpoint; False (and the layer is broken from
        now on) when a connection that holds a lock on it keeps it from being put back."""
        if self._database is None or self._laid_on is None:
            return True
        latest = self._checkpoints[-1][1] if self._checkpoints else self._laid_on
        if not self._database.put_back(latest):
            self.broken = (
                f"pytest-memdb: the {self.scope} layer ({self.fixture}) was written outside "
                "its fixtures' set-up and could not be put back: a connection (an engine "
                "built from its URL, a raw sqlite3 connection) holds a read or a write open "
                "on it. Close it; the tests of this layer cannot run until the layer is "
                "set up again."
            )
            return False
        return True

    def _raise_if_broken(self) -> None:
        if self.broken is not None:
            raise MemdbError(self.broken)

    def close(self) -> None:
        """Free the layer (at the end of its scope)."""
        self._closed = True
        checkpoints, self._checkpoints = self._checkpoints, []
        database, self._database = self._database, None
        try:
            if database is not None:
                database.close()
        finally:
            for _, frozen in checkpoints:
                run_sync(frozen.aclose())


def _names(fixtures: list[Writer]) -> str:
    return ", ".join(sorted({str(writer) for writer in fixtures}))


class Layers:
    """The live layers of a run, checked at every boundary (see the module doc).

    Without pytest: the plugin calls :meth:`check` at the start and end of each test phase
    and wraps each fixture's set-up in :meth:`fixture`; the isolation machine does the same.
    """

    def __init__(self) -> None:
        self._live: list[MemdbLayer] = []

    def add(self, layer: MemdbLayer) -> None:
        self._live.append(layer)

    def remove(self, layer: MemdbLayer) -> None:
        with contextlib.suppress(ValueError):
            self._live.remove(layer)

    def __bool__(self) -> bool:
        return bool(self._live)

    def writers(self) -> frozenset[Writer]:
        """Every fixture whose rows a live layer holds."""
        found: set[Writer] = set()
        for layer in self._live:
            found.update(layer.writers())
        return frozenset(found)

    def check(self, who: str) -> list[str]:
        """Put back every layer something wrote to since its checkpoint; say what was found
        (``who``: what ran since the last check, as the message will name it)."""
        problems = []
        for layer in self._live:
            if layer.unexpected():
                problems.append(_unexpected(layer, who, layer.put_back()))
        return problems

    @contextlib.contextmanager
    def fixture(self, writer: Writer, scope: str) -> Iterator[FixtureWatch]:
        """Around one fixture's set-up: a layer it wrote to is checkpointed when the fixture
        is of the layer's scope and succeeded, else put back. Problems found are added to
        what is yielded (the caller raises them once the fixture's own outcome is known)."""
        watch = FixtureWatch(self.check("something before this fixture"))
        problems = watch.problems
        try:
            yield watch
        except BaseException:
            for layer in self._live:
                if layer.unexpected():
                    layer.put_back()  # a fixture that raised: none of its rows stay
            raise
        for layer in self._live:
            if not layer.unexpected():
                continue
            if scope == layer.scope:
                try:
                    layer.checkpoint(writer)
                except MemdbError:
                    layer.put_back()
                    raise
                watch.checkpointed = True
            else:
                problems.append(
                    _unexpected(layer, f"the {scope}-scoped fixture {writer}", layer.put_back())
                )

    def finished(self, writer: Writer) -> None:
        """A fixture was torn down: its rows leave the layers that live on."""
        for layer in self._live:
            layer.finished(writer)


@dataclass
class FixtureWatch:
    """What :meth:`Layers.fixture` found around one fixture's set-up."""

    problems: list[str] = field(default_factory=list)
    checkpointed: bool = False
    """Whether the fixture wrote to a layer of its scope (its rows are in a checkpoint)."""


def _unexpected(layer: MemdbLayer, who: str, put_back: bool) -> str:
    layer.stats.layers_put_back += 1
    undone = (
        "It was put back as its fixtures left it, so later tests do not see it."
        if put_back
        else "It could not be put back (a connection holds it open): its tests will error."
    )
    return (
        f"pytest-memdb: {who} wrote to the {layer.scope} layer ({layer.fixture}). A layer is "
        f"written only by {layer.scope}-scoped fixtures, while they are set up: their rows "
        "are then in every test that asks for them. A test (or a function-scoped fixture) "
        "writes to its own copy: memdb, memdb_session, memdb_sessionmaker. "
        f"{undone}"
    )
