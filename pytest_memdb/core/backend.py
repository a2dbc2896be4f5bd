"""What the registry sees of a backend: where a run's templates are built.

SQLite's (:class:`~pytest_memdb.sqlite.backend.SqliteBackend`, the default) builds them in
memory, from the cache when ``memdb_cache`` is on; PostgreSQL's
(:class:`~pytest_memdb.postgresql.backend.PgBackend`, ``memdb_postgresql``) on the server.
Either hands back a :class:`~pytest_memdb.core.template.TemplateBase`: the registry, the
layers and the isolation strategies take it from there without knowing which it is.
"""

from __future__ import annotations

from typing import Protocol

from pytest_memdb.core.config import Target
from pytest_memdb.core.layers import LayerDatabase
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.core.template import TemplateBase
from pytest_memdb.core.templates import TemplateHook
from pytest_memdb.integrations.sessions import SessionClasses


class Backend(Protocol):
    def template(
        self,
        target: Target,
        *,
        classes: SessionClasses,
        hook: TemplateHook | None,
        stats: MemdbStats,
    ) -> TemplateBase:
        """``target``'s template, built (or loaded) now; counted in ``stats``
        (``templates_built`` or ``templates_cached``). A failure is a
        :class:`~pytest_memdb.errors.MemdbError` naming the step."""

    def lay(self, base: TemplateBase, scope: str, label: str) -> LayerDatabase:
        """A new layer's database, a copy of ``base`` (one of this backend's templates, or a
        layer's checkpoint): :data:`pytest_memdb.core.layers.Lay`."""

    def close(self) -> None:
        """Free what the backend holds beyond its templates (called after them, once)."""
