"""The SQLite backend (the default): templates built in memory, or loaded from the
template cache (``memdb_cache``), and the working databases made from them in memory.

Imports SQLAlchemy: load it lazily (the plugin does, at the first template).
"""

from __future__ import annotations

from collections.abc import Callable

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.config import MemdbConfig, Target
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.core.template import TemplateBase
from pytest_memdb.core.templates import TemplateHook
from pytest_memdb.integrations.sessions import SessionClasses
from pytest_memdb.sqlite.build import build_template
from pytest_memdb.sqlite.cache import TemplateCache
from pytest_memdb.sqlite.engines import EnginePair
from pytest_memdb.sqlite.layers import SqliteLayerDatabase
from pytest_memdb.sqlite.loading import CheckedFiles
from pytest_memdb.sqlite.memory import MemoryDatabase, unique_name
from pytest_memdb.sqlite.template_database import Template


class SqliteBackend:
    """One run's (one xdist worker's) in-memory databases."""

    def __init__(
        self,
        settings: MemdbConfig,
        worker: str,
        *,
        cache: TemplateCache | None = None,
        checked: CheckedFiles | None = None,
    ) -> None:
        """``cache``: built templates kept across runs (``memdb_cache``), or None;
        ``checked``: fixture files known to pass ``quick_check`` (pytest's cache), or None."""
        self.settings = settings
        self.worker = worker
        self.cache = cache
        self.checked = checked
        self._outside: EnginePair | None = None

    def template(
        self,
        target: Target,
        *,
        classes: SessionClasses,
        hook: TemplateHook | None,
        stats: MemdbStats,
    ) -> Template:
        """``target``'s template in memory: built, or loaded from the cache."""
        settings = self.settings
        label = target.file.stem if target.file is not None else target.fixture
        name = unique_name(self.worker, label, "template")

        def build() -> MemoryDatabase:
            return build_template(
                target,
                name,
                base_dir=settings.base_dir,
                pragmas=settings.pragmas,
                hook=hook,
                checked=self.checked,
            )

        database = self._build(target, name, build, stats)
        return Template(
            target.file.resolve() if target.file is not None else None,
            database,
            echo=settings.echo,
            worker=self.worker,
            label=label,
            pragmas=settings.pragmas,
            classes=classes,
            restore=settings.restore,
            stats=stats,
        )

    def _build(
        self, target: Target, name: str, build: Callable[[], MemoryDatabase], stats: MemdbStats
    ) -> MemoryDatabase:
        """The template's database, built or taken from the cache (and counted as such)."""
        if self.cache is None:
            database = build()
            stats.templates_built += 1
            return database
        loaded = self.cache.loaded
        database = self.cache.template(target, name, build)
        if self.cache.loaded > loaded:
            stats.templates_cached += 1
        else:
            stats.templates_built += 1
        return database

    def lay(self, base: TemplateBase, scope: str, label: str) -> SqliteLayerDatabase:
        """A layer on ``base``: a shared in-memory copy (:mod:`pytest_memdb.sqlite.layers`)."""
        return SqliteLayerDatabase(base, scope, label)

    def outside(self, template: TemplateBase) -> EnginePair:
        """A scratch copy of the run's template (a test's without a marker), for what
        ``memdb_takeover`` connects outside tests (made once; no test sees it)."""
        if self._outside is None:
            assert isinstance(template, Template)
            name = unique_name(self.worker, template.label, "outside")
            self._outside = EnginePair(
                template.database.copy(name),
                echo=self.settings.echo,
                pragmas=self.settings.pragmas,
            )
        return self._outside

    def close(self) -> None:
        """Close the scratch copy, if one was made."""
        outside, self._outside = self._outside, None
        if outside is not None:
            try:
                run_sync(outside.aclose())
            finally:
                outside.database.close()
