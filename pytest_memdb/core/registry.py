"""One pytest session's databases (per xdist worker): templates by file, copies per test.

Kept in ``config.stash`` by the plugin, like pytest's own ``TempPathFactory``.
Imports SQLAlchemy: load it lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.config import LAYER_FIXTURES, MemdbConfig, Target
from pytest_memdb.core.importing import import_metadata
from pytest_memdb.core.janitor import MemdbHandle
from pytest_memdb.core.layers import Base, Deferred, Layers, MemdbLayer, Writer
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.core.templates import TemplateHook, build_template
from pytest_memdb.errors import MemdbError
from pytest_memdb.integrations.binding import Binder
from pytest_memdb.integrations.sessions import SessionClasses, session_classes
from pytest_memdb.sqlite.cache import TemplateCache
from pytest_memdb.sqlite.engines import EnginePair
from pytest_memdb.sqlite.loading import CheckedFiles
from pytest_memdb.sqlite.memory import MemoryDatabase, unique_name
from pytest_memdb.sqlite.template_database import Template

if TYPE_CHECKING:
    from pytest_memdb.postgresql.backend import PgBackend, PgTemplate


class MemdbRegistry:
    """Builds each template once and hands out per-test handles."""

    def __init__(
        self,
        settings: MemdbConfig,
        worker: str,
        hook: TemplateHook | None = None,
        *,
        cache: TemplateCache | None = None,
        checked: CheckedFiles | None = None,
        stats: MemdbStats | None = None,
        postgresql: Callable[[], PgBackend] | None = None,
    ) -> None:
        """``postgresql``: makes the run's PostgreSQL backend (``memdb_postgresql``), at the
        first template; None: SQLite."""
        self.settings = settings
        self.stats = stats if stats is not None else MemdbStats()
        """The run's counters, handed to every template and layer
        (:mod:`pytest_memdb.core.stats`)."""
        self.worker = worker
        self._hook = hook
        self.cache = cache
        self.checked = checked
        """Fixture files known to pass ``quick_check`` (pytest's cache), or None."""
        self._templates: dict[tuple[object, ...], Template] = {}
        self._pg_templates: dict[tuple[object, ...], PgTemplate] = {}
        self._make_postgresql = postgresql
        self._postgresql: PgBackend | None = None
        self._failures: dict[tuple[tuple[object, ...], str], MemdbError] = {}
        self._binders: dict[tuple[tuple[str, ...], str], Binder] = {}
        self.layers = Layers()
        """The live layers, checked at every test boundary."""
        self._outside: EnginePair | None = None

    def open(
        self,
        target: Target,
        layer: MemdbLayer | None = None,
        *,
        asked: Collection[Writer] = (),
        test: str = "this test",
    ) -> MemdbHandle:
        """This test's database, isolated as ``target.isolation`` says: a copy of the
        template, or of the innermost ``layer`` of the test's scopes, which must hold the
        rows of exactly the layer fixtures the test ``asked`` for."""
        if self._make_postgresql is not None:
            if layer is not None:
                raise MemdbError(
                    f"pytest-memdb: layers ({LAYER_FIXTURES[layer.scope]}) are not on "
                    f"PostgreSQL yet ({self.settings.postgresql_origin}): write the data "
                    "in the test, or run this test on SQLite."
                )
            return self.pg_template(target).open(target.isolation)
        template = self.template(target)
        if layer is not None:
            if layer.root() is not template:
                raise MemdbError(
                    f"pytest-memdb: this test's memdb is built from {target.describe()}, but "
                    f"its {layer.scope} layer ({LAYER_FIXTURES[layer.scope]}) from another "
                    "template (a memdb marker on the test that its module or class does not "
                    "have). Put the marker where the layer fixture's scope is (pytestmark, "
                    "the class), or leave the layer fixture out of this test."
                )
            template, _ = layer.template_for(asked, self.layers.writers(), test)
        return template.open(target.isolation)

    def layer(
        self,
        target: Callable[[], Target],
        scope: str,
        label: str,
        parent: MemdbLayer | None,
        asked: Callable[[], tuple[Collection[Writer], str]] = lambda: ((), ""),
    ) -> MemdbLayer:
        """A new layer for one scope, on ``parent`` when that is laid on the same template.

        The outermost (session) layer finds its template on first use: a run whose sources
        are all in markers has none for the session, and only a layer used there needs one.
        """
        base = Deferred(lambda: self.template(target()))

        def laying() -> tuple[Collection[Writer], Collection[Writer], str]:
            names, test = asked()
            return names, self.layers.writers(), test

        laid_on: Base = base
        if parent is not None:
            try:
                if parent.root() is base.root():
                    laid_on = parent
            except MemdbError:  # the wider layer has no template of its own: not this one's
                pass
        made = MemdbLayer(laid_on, scope, label, laying, self.stats)
        self.layers.add(made)
        return made

    def close_layer(self, layer: MemdbLayer) -> None:
        """Free a layer at the end of its scope."""
        self.layers.remove(layer)
        layer.close()

    def template(self, target: Target) -> Template:
        """The template ``target`` describes; one that failed to build fails fast after."""
        key = target.template_key()
        failure_key = (key, target.file_origin)
        failure = self._failures.get(failure_key)
        if failure is not None:
            raise failure
        if key not in self._templates:
            label = target.file.stem if target.file is not None else target.fixture
            name = unique_name(self.worker, label, "template")

            def build() -> MemoryDatabase:
                return build_template(
                    target,
                    name,
                    base_dir=self.settings.base_dir,
                    pragmas=self.settings.pragmas,
                    hook=self._hook,
                    checked=self.checked,
                )

            try:
                classes = self._session_classes(target)  # a bad class fails before the build
                database = self._build(target, name, build)
            except MemdbError as exc:
                self._failures[failure_key] = exc
                raise
            self._templates[key] = Template(
                target.file.resolve() if target.file is not None else None,
                database,
                echo=self.settings.echo,
                worker=self.worker,
                label=label,
                pragmas=self.settings.pragmas,
                classes=classes,
                restore=self.settings.restore,
                stats=self.stats,
            )
        return self._templates[key]

    def pg_template(self, target: Target) -> PgTemplate:
        """``target``'s template on PostgreSQL (``memdb_postgresql``); one that failed to
        build fails fast after."""
        key = target.template_key()
        failure = self._failures.get((key, target.file_origin))
        if failure is not None:
            raise failure
        if key not in self._pg_templates:
            assert self._make_postgresql is not None
            try:
                if self._postgresql is None:
                    self._postgresql = self._make_postgresql()
                classes = self._session_classes(target)
                template = self._postgresql.template(
                    target,
                    self.settings,
                    label=target.fixture,
                    classes=classes,
                    hook=self._hook,
                    stats=self.stats,
                )
            except MemdbError as exc:
                self._failures[(key, target.file_origin)] = exc
                raise
            self.stats.templates_built += 1
            self._pg_templates[key] = template
        return self._pg_templates[key]

    def _build(
        self, target: Target, name: str, build: Callable[[], MemoryDatabase]
    ) -> MemoryDatabase:
        """The template's database, built or taken from the cache (and counted as such)."""
        if self.cache is None:
            database = build()
            self.stats.templates_built += 1
            return database
        loaded = self.cache.loaded
        database = self.cache.template(target, name, build)
        if self.cache.loaded > loaded:
            self.stats.templates_cached += 1
        else:
            self.stats.templates_built += 1
        return database

    def _session_classes(self, target: Target) -> SessionClasses:
        settings = self.settings
        metadata = (
            import_metadata(target.metadata, target.metadata_origin, settings.base_dir)
            if target.metadata
            else None
        )
        return session_classes(
            settings.session_class,
            settings.sync_session_class,
            metadata,
            ini_name=settings.ini_name,
            base_dir=settings.base_dir,
        )

    def outside(self) -> EnginePair:
        """A scratch copy of the run's template (a test's without a marker), for what
        ``memdb_takeover`` connects outside tests (made once; no test sees it)."""
        if self._outside is None:
            template = self.template(self.settings.default_target())
            name = unique_name(self.worker, template.label, "outside")
            self._outside = EnginePair(
                template.database.copy(name),
                echo=self.settings.echo,
                pragmas=self.settings.pragmas,
            )
        return self._outside

    def binder(self, paths: tuple[str, ...], origin: str) -> Binder:
        """The :class:`Binder` for these paths (made once: it remembers where engines are)."""
        key = (paths, origin)
        if key not in self._binders:
            self._binders[key] = Binder(paths, origin, self.settings.base_dir)
        return self._binders[key]

    def close(self) -> None:
        """Free every template (called once, at the end of the session)."""
        templates, self._templates = list(self._templates.values()), {}
        outside, self._outside = self._outside, None
        try:
            if outside is not None:
                try:
                    run_sync(outside.aclose())
                finally:
                    outside.database.close()
        finally:
            for template in templates:
                run_sync(template.aclose())
            pg_templates, self._pg_templates = list(self._pg_templates.values()), {}
            try:
                for pg_template in pg_templates:
                    run_sync(pg_template.aclose())
            finally:
                if self._postgresql is not None:
                    self._postgresql.close()
