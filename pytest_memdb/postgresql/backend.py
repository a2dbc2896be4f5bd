"""The PostgreSQL backend behind the seam SQLite's uses: a template built from the target's
sources, and tests on clones of it in the same three isolation modes.

Imports SQLAlchemy and psycopg: load it lazily (the registry does, when
``memdb_postgresql`` is set). What a test sees is what it sees on SQLite: a
:class:`~pytest_memdb.core.janitor.MemdbHandle` with an ``AsyncEngine``, a sync ``Engine``,
sessionmakers and sessions, through the same driver and strategies
(:class:`~pytest_memdb.core.template.TemplateBase`, :mod:`pytest_memdb.core.isolation`) over
a working database of PostgreSQL's (:mod:`pytest_memdb.postgresql.working`); the modes, by
PostgreSQL's own means:

* ``copy``: the test's own clone of the template (``CREATE DATABASE ... TEMPLATE``,
  made ahead in the background by :class:`~pytest_memdb.postgresql.clones.ClonePool`),
  dropped after it. The engines stay the same objects for the whole run: their
  connections are made by a creator that reads which clone is current; ``memdb.reset()``
  makes the test's database again under the same name, so everything handed out,
  ``memdb.url`` included, keeps working;
* ``rollback``: one clone held by one server session for the run, each test in an outer
  transaction (:mod:`pytest_memdb.postgresql.rollback`), verified at teardown: an escape
  (a ``COMMIT`` as text) is an :class:`~pytest_memdb.errors.IsolationError` and the next
  test gets a fresh clone; session state the test left (``SET``, ``LISTEN``, temp tables,
  prepared statements, advisory locks) is cleared and reported as a
  :class:`~pytest_memdb.errors.MemdbWarning`;
* ``session``: one clone for every ``session`` test of the run, never restored.

The template comes from the sources SQLite's does (:mod:`pytest_memdb.postgresql.sources`):
``memdb_file`` as a ``.sql`` dump (run through psycopg, or psql for its meta-commands) or
as a SQLite file whose rows are copied into PostgreSQL's tables, Alembic migrations on the
template database itself, then the models' tables, the load steps and the hook. A SQLite
file together with migrations is refused (:func:`unsupported`).

Layers: :mod:`pytest_memdb.postgresql.layers`. ``--memdb-keep-failed`` writes a ``.sql``
file (:mod:`pytest_memdb.postgresql.dumps`). Not on PostgreSQL yet (a clear error when asked
for): ``memdb_takeover`` stops the run at start-up (:mod:`pytest_memdb.core.config`)."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from pytest_memdb.core.config import MemdbConfig, Target
from pytest_memdb.core.importing import import_metadata
from pytest_memdb.core.isolation import WorkingDatabase
from pytest_memdb.core.layers import LayerDatabase
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.core.template import Role, TemplateBase
from pytest_memdb.core.templates import TemplateHook
from pytest_memdb.errors import MemdbError
from pytest_memdb.integrations.sessions import DEFAULT_CLASSES, SessionClasses
from pytest_memdb.postgresql.clones import ClonePool, Cluster
from pytest_memdb.postgresql.clones import Template as PgTemplateDatabase
from pytest_memdb.postgresql.working import PgWorkingDatabase


def unsupported(target: Target, settings: MemdbConfig) -> str | None:
    """Why ``target`` cannot be built on PostgreSQL, or None (the sources themselves are
    :mod:`pytest_memdb.postgresql.sources`')."""
    from pytest_memdb.postgresql.sources import unsupported as sources_unsupported

    return sources_unsupported(target)


class PgTemplate(TemplateBase):
    """A template database on the server, sealed, and the working databases on clones of
    it (:class:`~pytest_memdb.postgresql.working.PgWorkingDatabase`); the way tests take
    turns on them is the backend-free driver's."""

    def __init__(
        self,
        cluster: Cluster,
        database: PgTemplateDatabase,
        *,
        echo: bool,
        label: str,
        classes: SessionClasses = DEFAULT_CLASSES,
        stats: MemdbStats | None = None,
        source: Path | None = None,
    ) -> None:
        """``source``: the file the template was built from (``memdb_file``), if any."""
        super().__init__(source=source, label=label, classes=classes, stats=stats)
        self.cluster = cluster
        self.template_database = database
        self.echo = echo
        self.pool = ClonePool(cluster, database)

    def template(self) -> PgTemplate:
        return self

    def root(self) -> PgTemplate:
        return self

    def new_working(self, role: Role) -> PgWorkingDatabase:
        return PgWorkingDatabase(self.pool, echo=self.echo, stats=self.stats)

    def carry_over(self, leaked: WorkingDatabase) -> WorkingDatabase:
        """Never called: a PostgreSQL working database is always free
        (:meth:`PgWorkingDatabase.is_free`: a leaked connection holds no lock that makes the
        next test wait)."""
        raise AssertionError("pytest-memdb: a PostgreSQL session database is never held")

    def check_unchanged(self) -> None:
        """Nothing can write the template: it is sealed (``ALLOW_CONNECTIONS false``)."""

    async def close_template(self) -> None:
        """Drop the clones made ahead and those given back (the template goes with the
        run's other databases, :meth:`PgBackend.close`)."""
        self.pool.close()


class PgBackend:
    """One run's (one xdist worker's) databases on one PostgreSQL server."""

    def __init__(self, url: str, settings: MemdbConfig, *, run_id: str, worker: str) -> None:
        safe_worker = "".join(ch if ch.isalnum() else "_" for ch in worker).lower()
        self.settings = settings
        self.cluster = Cluster(make_url(url), f"memdb_{run_id}_{safe_worker}", run_id)

    def template(
        self,
        target: Target,
        *,
        classes: SessionClasses,
        hook: TemplateHook | None,
        stats: MemdbStats,
    ) -> PgTemplate:
        """Build ``target``'s template on the server from its sources
        (:func:`pytest_memdb.postgresql.sources.build`: a ``.sql`` dump or a SQLite file's
        rows, the migrations, then the metadata's tables, the load steps and the hook in
        one transaction), then sealed."""
        from pytest_memdb.postgresql import sources

        settings = self.settings
        problem = unsupported(target, settings)
        if problem is not None:
            raise MemdbError(problem)
        metadata = (
            import_metadata(target.metadata, target.metadata_origin, settings.base_dir)
            if target.metadata
            else None
        )

        def build(engine: Engine) -> None:
            sources.build(engine, target, metadata, base_dir=settings.base_dir, hook=hook)

        database = self.cluster.create_template(build)
        stats.templates_built += 1
        return PgTemplate(
            self.cluster,
            database,
            echo=settings.echo,
            label=target.fixture,
            classes=classes,
            stats=stats,
            source=target.file.resolve() if target.file is not None else None,
        )

    def lay(self, base: TemplateBase, scope: str, label: str) -> LayerDatabase:
        """A layer on ``base``: a database cloned from it, checkpointed into templates of
        its own (:mod:`pytest_memdb.postgresql.layers`)."""
        from pytest_memdb.postgresql.layers import PgLayerDatabase

        return PgLayerDatabase(base, scope, label)

    def close(self) -> None:
        """Drop every database this run made."""
        with contextlib.suppress(Exception):
            self.cluster.close()


def new_run_id() -> str:
    """A short id for this run's database names (the controller's; workers get it)."""
    return f"{uuid.uuid4().hex[:8]}{os.getpid() % 1000:03d}"
