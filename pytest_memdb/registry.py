"""One pytest session's databases (per xdist worker): templates by file, copies per test.

Kept in ``config.stash`` by the plugin, like pytest's own ``TempPathFactory``.
Imports SQLAlchemy: load it lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pytest_memdb._loop import run_sync
from pytest_memdb.binding import Binder
from pytest_memdb.cache import TemplateCache
from pytest_memdb.config import LAYER_FIXTURES, Isolation, MemdbConfig, Restore, Target
from pytest_memdb.errors import IsolationError, MemdbError
from pytest_memdb.importing import import_metadata
from pytest_memdb.isolation import ESCAPED, STRATEGIES, EngineSource, Save, Strategy
from pytest_memdb.janitor import MemdbHandle
from pytest_memdb.layers import Deferred, MemdbLayer
from pytest_memdb.loading import CheckedFiles
from pytest_memdb.memory import MemoryDatabase, SourceLocked, unique_name
from pytest_memdb.pragmas import Pragmas
from pytest_memdb.sessions import DEFAULT_CLASSES, SessionClasses, SyncMakers, session_classes
from pytest_memdb.templates import TemplateHook, build_template
from pytest_memdb.working import WorkingDatabase


class Template:
    """A template built once, never written again, and the working databases made from it.

    The template is a private in-memory database (see :class:`MemoryDatabase`): no test,
    app or engine can reach it, and after every test :meth:`check_unchanged` proves that
    nothing wrote it. ``copy`` and ``rollback`` tests share one :class:`WorkingDatabase`,
    ``session`` tests have their own (:mod:`pytest_memdb.isolation`).
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
    ) -> None:
        self.source = source
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
            raise IsolationError(ESCAPED.format(how=escape))

    def _restart(
        self, strategy: Strategy, working: WorkingDatabase, engines: EngineSource
    ) -> tuple[EngineSource, Save | None]:
        """``memdb.reset()``: the way out of a test, then the way in again, on the same
        working database made equal to the template (in ``session`` mode too: a reset asks
        for it). One Hypothesis example after another, each from the template."""
        escape, restored = self._wind_down(strategy, working, engines, restore=True)
        restarted = strategy.begin(working)  # begun again in any case: teardown ends it
        if not restored:
            raise MemdbError(
                f"pytest-memdb: memdb.reset() could not restore {working.database.name}: "
                "a connection the test opened itself (an engine built from memdb_url, a "
                "raw sqlite3 connection) holds a read or a write open on it. Commit or "
                "close it before the reset."
            )
        if escape is not None:
            raise IsolationError(ESCAPED.format(how=escape))
        return restarted

    def _wind_down(
        self, strategy: Strategy, working: WorkingDatabase, engines: EngineSource, *, restore: bool
    ) -> tuple[str | None, bool]:
        """What a test's end and a reset share: close what the test left checked out, the
        strategy's step, the connections put in order, then (``restore``) the database made
        equal to the template again (a ``session`` database too); the template checked in
        any case. Returns how the test escaped its isolation, if it did, and whether the
        database is equal to the template (True when no restore was asked for)."""
        try:
            working.engines.close_leftovers()
            escape = strategy.end(working)
            working.settle_if_needed(engines)
            equal = not restore or working.make_equal(after_test=True, force=not strategy.restores)
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
    ) -> None:
        self.settings = settings
        self.worker = worker
        self._hook = hook
        self.cache = cache
        self.checked = checked
        """Fixture files known to pass ``quick_check`` (pytest's cache), or None."""
        self._templates: dict[tuple[object, ...], Template] = {}
        self._failures: dict[tuple[tuple[object, ...], str], MemdbError] = {}
        self._binders: dict[tuple[tuple[str, ...], str], Binder] = {}

    def open(self, target: Target, layer: MemdbLayer | None = None) -> MemdbHandle:
        """This test's database, isolated as ``target.isolation`` says: a copy of the
        template, or of the innermost ``layer`` of the test's scopes."""
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
            template = layer.template()
        return template.open(target.isolation)

    def layer(
        self, target: Callable[[], Target], scope: str, label: str, parent: MemdbLayer | None
    ) -> MemdbLayer:
        """A new layer for one scope, on ``parent`` when that is laid on the same template.

        The outermost (session) layer finds its template on first use: a run whose sources
        are all in markers has none for the session, and only a layer used there needs one.
        """
        base = Deferred(lambda: self.template(target()))
        if parent is None:
            return MemdbLayer(base, scope, label)
        try:
            same = parent.root() is base.root()
        except MemdbError:  # the wider layer has no template of its own: not this one's
            same = False
        return MemdbLayer(parent if same else base, scope, label)

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
                database = (
                    build() if self.cache is None else self.cache.template(target, name, build)
                )
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
            )
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
        """Free every template (called once, at the end of the session)."""
        templates, self._templates = list(self._templates.values()), {}
        for template in templates:
            run_sync(template.aclose())
