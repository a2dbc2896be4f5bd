"""One pytest session's databases (per xdist worker): templates by file, copies per test.

Kept in ``config.stash`` by the plugin, like pytest's own ``TempPathFactory``.
Imports SQLAlchemy: load it lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.backend import Backend
from pytest_memdb.core.config import LAYER_FIXTURES, MemdbConfig, Target
from pytest_memdb.core.importing import import_metadata
from pytest_memdb.core.janitor import MemdbHandle
from pytest_memdb.core.layers import Base, Deferred, Layers, LayerTemplate, MemdbLayer, Writer
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.core.template import TemplateBase
from pytest_memdb.core.templates import TemplateHook
from pytest_memdb.errors import MemdbError
from pytest_memdb.integrations.binding import Binder
from pytest_memdb.integrations.sessions import SessionClasses, session_classes


class MemdbRegistry:
    """Builds each template once and hands out per-test handles."""

    def __init__(
        self,
        settings: MemdbConfig,
        backend: Callable[[], Backend],
        hook: TemplateHook | None = None,
        *,
        stats: MemdbStats | None = None,
    ) -> None:
        """``backend``: makes the run's backend (SQLite's, or PostgreSQL's with
        ``memdb_postgresql``), at the first template."""
        self.settings = settings
        self.stats = stats if stats is not None else MemdbStats()
        """The run's counters, handed to every template and layer
        (:mod:`pytest_memdb.core.stats`)."""
        self._hook = hook
        self._make_backend = backend
        self._backend: Backend | None = None
        self._templates: dict[tuple[object, ...], TemplateBase] = {}
        self._failures: dict[tuple[tuple[object, ...], str], MemdbError] = {}
        self._binders: dict[tuple[tuple[str, ...], str], Binder] = {}
        self.layers = Layers()
        """The live layers, checked at every test boundary."""

    @property
    def backend(self) -> Backend:
        """The run's backend, made on first use."""
        if self._backend is None:
            self._backend = self._make_backend()
        return self._backend

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
        template: LayerTemplate = self.template(target)
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
        made = MemdbLayer(
            laid_on, scope, label, laying, self.stats, lay=lambda *on: self.backend.lay(*on)
        )
        self.layers.add(made)
        return made

    def close_layer(self, layer: MemdbLayer) -> None:
        """Free a layer at the end of its scope."""
        self.layers.remove(layer)
        layer.close()

    def template(self, target: Target) -> TemplateBase:
        """The template ``target`` describes; one that failed to build fails fast after."""
        key = target.template_key()
        failure_key = (key, target.file_origin)
        failure = self._failures.get(failure_key)
        if failure is not None:
            raise failure
        if key not in self._templates:
            try:
                classes = self._session_classes(target)  # a bad class fails before the build
                template = self.backend.template(
                    target, classes=classes, hook=self._hook, stats=self.stats
                )
            except MemdbError as exc:
                self._failures[failure_key] = exc
                raise
            self._templates[key] = template
        return self._templates[key]

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

    def binder(self, paths: tuple[str, ...], origin: str) -> Binder:
        """The :class:`Binder` for these paths (made once: it remembers where engines are)."""
        key = (paths, origin)
        if key not in self._binders:
            self._binders[key] = Binder(paths, origin, self.settings.base_dir)
        return self._binders[key]

    def close(self) -> None:
        """Free every template, then the backend (called once, at the end of the session)."""
        templates, self._templates = list(self._templates.values()), {}
        try:
            for template in templates:
                run_sync(template.aclose())
        finally:
            if self._backend is not None:
                self._backend.close()
