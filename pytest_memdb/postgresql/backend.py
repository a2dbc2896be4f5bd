"""The PostgreSQL backend behind the seam SQLite's uses: a template built from the target's
sources, and tests on clones of it in the same three isolation modes.

Imports SQLAlchemy and psycopg: load it lazily (the registry does, when
``memdb_postgresql`` is set). What a test sees is what it sees on SQLite: a
:class:`~pytest_memdb.core.janitor.MemdbHandle` with an ``AsyncEngine``, a sync ``Engine``,
sessionmakers and sessions; the modes, by PostgreSQL's own means:

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

Not on PostgreSQL yet (each a clear error when asked for): layers; ``--memdb-keep-failed``
and ``memdb_takeover`` stop the run at start-up (:mod:`pytest_memdb.core.config`)."""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.config import Isolation, MemdbConfig, Target
from pytest_memdb.core.importing import import_metadata
from pytest_memdb.core.isolation import EngineSource, Save
from pytest_memdb.core.janitor import MemdbHandle
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.core.templates import TemplateHook
from pytest_memdb.errors import IsolationError, MemdbError, MemdbWarning
from pytest_memdb.integrations.sessions import DEFAULT_CLASSES, SessionClasses, SyncMakers
from pytest_memdb.messages import ROLLBACK_ESCAPE
from pytest_memdb.postgresql.clones import ClonePool, Cluster
from pytest_memdb.postgresql.clones import Template as PgTemplateDatabase
from pytest_memdb.postgresql.rollback import LOCK_TIMEOUT_S, RollbackIsolation, conninfo

DRIVER_SYNC = "postgresql+psycopg"
"""The driver of the plugin's engines, sync and async: psycopg's connections do not belong
to one event loop, and pytest-asyncio gives each test its own (asyncpg's would not outlive
it; see :mod:`pytest_memdb.postgresql.rollback`)."""


def unsupported(target: Target, settings: MemdbConfig) -> str | None:
    """Why ``target`` cannot be built on PostgreSQL, or None (the sources themselves are
    :mod:`pytest_memdb.postgresql.sources`')."""
    from pytest_memdb.postgresql.sources import unsupported as sources_unsupported

    return sources_unsupported(target)


@dataclass(frozen=True)
class PgDatabase:
    """What a handle shows of a PostgreSQL database: its name and URLs."""

    name: str
    url: URL

    @property
    def async_url(self) -> str:
        """The database's URL for ``create_async_engine`` (psycopg's async driver)."""
        return self.url.set(drivername=DRIVER_SYNC).render_as_string(hide_password=False)

    @property
    def sync_url(self) -> str:
        """The database's URL for ``create_engine``."""
        return self.url.set(drivername=DRIVER_SYNC).render_as_string(hide_password=False)


_LOCK = f"-c lock_timeout={int(LOCK_TIMEOUT_S * 1000)}"
"""Copy and session engines wait for a row lock as long as rollback's held session does:
a lock nobody will release (the test's own uncommitted write, a leaked connection's
``FOR UPDATE``) is then an error, not a hang (PostgreSQL's deadlock detector cannot see a
holder that is not waiting)."""


class MovableEngines:
    """A sync and an async engine whose connections go to the *current* database: moving
    them to another clone (:meth:`move_to`) keeps the same engine objects, so every engine,
    sessionmaker and session handed out stays usable after ``memdb.reset()``."""

    def __init__(self, database: PgDatabase, *, echo: bool) -> None:
        self.database = database
        url = database.url.set(drivername=DRIVER_SYNC)
        self.async_engine: AsyncEngine = create_async_engine(
            url, async_creator=self._connect_async, poolclass=NullPool, echo=echo
        )
        self.sync_engine: Engine = create_engine(
            url, creator=self._connect_sync, poolclass=NullPool, echo=echo
        )

    def _connect_sync(self) -> psycopg.Connection[Any]:
        return psycopg.connect(**conninfo(self.database.url), options=_LOCK, connect_timeout=10)

    async def _connect_async(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            **conninfo(self.database.url), options=_LOCK, connect_timeout=10
        )

    def move_to(self, database: PgDatabase) -> None:
        """Point the engines at ``database`` (NullPool: nothing pooled to close). Their
        ``url`` says which (the creators connect; ``memdb_queries`` and reprs read it)."""
        self.database = database
        url = database.url.set(drivername=DRIVER_SYNC)
        self.sync_engine.url = url
        self.async_engine.sync_engine.url = url

    def close_leftovers(self) -> None:
        """Nothing pooled (NullPool); a connection a test leaked is ended by the server
        when its clone is dropped (``DROP DATABASE ... WITH (FORCE)``)."""

    async def aclose(self) -> None:
        await self.async_engine.dispose()
        self.sync_engine.dispose()


class _Shared:
    """Rollback mode's held session, as the handle and the strategies see it."""

    def __init__(self, isolation: RollbackIsolation, cluster: Cluster) -> None:
        self.isolation = isolation
        self._cluster = cluster

    @property
    def async_engine(self) -> AsyncEngine:
        return self.isolation.async_engine

    @property
    def sync_engine(self) -> Engine:
        return self.isolation.sync_engine

    @property
    def database(self) -> PgDatabase:
        name = self.isolation.database
        return PgDatabase(name, self._cluster.url_for(name))

    def begin_test(self) -> None:
        self.isolation.begin_test()

    def end_test(self) -> str | None:
        verdict = self.isolation.end_test()
        left = [*verdict.state]
        if verdict.others:
            left.append(f"other sessions on the working database (ended): {verdict.others}")
        if left and verdict.escape is None:
            warnings.warn(
                MemdbWarning(
                    "pytest-memdb: the test left session state on rollback mode's held "
                    "PostgreSQL session, cleared before the next test (DISCARD ALL): "
                    + "; ".join(left)
                ),
                stacklevel=2,
            )
        return verdict.escape

    def save(self, path: Path) -> Path:
        raise MemdbError("pytest-memdb: --memdb-keep-failed writes SQLite files only.")


class PgTemplate:
    """A template database on the server, and the clones tests run on."""

    def __init__(
        self,
        cluster: Cluster,
        database: PgTemplateDatabase,
        *,
        echo: bool,
        label: str,
        classes: SessionClasses = DEFAULT_CLASSES,
        stats: MemdbStats | None = None,
    ) -> None:
        self.cluster = cluster
        self.template_database = database
        self.echo = echo
        self.label = label
        self.classes = classes
        self.stats = stats if stats is not None else MemdbStats()
        self.source: Path | None = None
        self._sync_makers = SyncMakers(classes)
        self.pool = ClonePool(cluster, database)
        self._copy: MovableEngines | None = None
        self._session: MovableEngines | None = None
        self._rollback: _Shared | None = None

    def root(self) -> PgTemplate:
        return self

    def template(self) -> PgTemplate:
        return self

    def _database(self, name: str) -> PgDatabase:
        return PgDatabase(name, self.cluster.url_for(name))

    def open(self, isolation: Isolation) -> MemdbHandle:
        """A database for one test: its own clone (copy), the held session's clone in an
        outer transaction (rollback), or the run's session clone (session)."""
        engines: EngineSource
        save: Save | None = None
        if isolation == "rollback":
            shared = self._shared()
            shared.begin_test()
            engines, save, database = shared, None, shared.database
            release: Callable[[], None] = lambda: self._end_rollback(shared)  # noqa: E731
            restart = lambda: self._restart_rollback(shared)  # noqa: E731
        elif isolation == "session":
            movable = self._session_engines()
            engines, database = movable, movable.database
            release = lambda: None  # noqa: E731
            restart = lambda: self._fresh(movable)  # noqa: E731
        else:
            movable = self._copy_engines()
            engines, database = movable, movable.database
            release = lambda: self._end_copy(movable)  # noqa: E731
            restart = lambda: self._fresh(movable)  # noqa: E731
        handle = MemdbHandle(
            database=database,
            source=None,
            isolation=isolation,
            engines=engines,
            release=release,
            save=save,
            classes=self.classes,
            sync_makers=self._sync_makers,
            restart=restart,
        )
        self.stats.databases += 1
        return handle

    # --- copy and session: a clone under movable engines -------------------------

    def _copy_engines(self) -> MovableEngines:
        database = self._database(self.pool.take())
        if self._copy is None:
            self._copy = MovableEngines(database, echo=self.echo)
        else:
            self._copy.move_to(database)
        return self._copy

    def _end_copy(self, movable: MovableEngines) -> None:
        """The test's clone is dropped in the background (its leaked connections with it)."""
        run_sync(movable.aclose())  # NullPool: nothing pooled; disposes the async adapter's
        self.pool.give_back(movable.database.name)

    def _session_engines(self) -> MovableEngines:
        if self._session is None:
            self._session = MovableEngines(self._database(self.pool.take()), echo=self.echo)
        return self._session

    def _fresh(self, movable: MovableEngines) -> tuple[EngineSource, Save | None]:
        """``memdb.reset()``: the same database *name* made again from the template (its
        connections ended, dropped, cloned), so ``memdb.url`` and every engine built from
        it keep reaching the test's database (moving to another clone left them on the old
        one: found by the hostile pass). Synchronous: a clone's time, 20-50 ms quiet."""
        run_sync(movable.aclose())
        name = movable.database.name
        with self.cluster.admin.connect() as conn:
            self.cluster.drop(name, conn=conn)
            self.cluster.create(name, template=self.template_database.name, conn=conn)
        self.stats.restored("backup")
        return movable, None

    # --- rollback: the held session ------------------------------------------------

    def _shared(self) -> _Shared:
        if self._rollback is None:
            self._rollback = _Shared(RollbackIsolation(self.pool), self.cluster)
        return self._rollback

    def _end_rollback(self, shared: _Shared) -> None:
        escape = shared.end_test()
        if escape is not None:
            self.stats.escapes += 1
            raise IsolationError(ROLLBACK_ESCAPE(how=escape))

    def _restart_rollback(self, shared: _Shared) -> tuple[EngineSource, Save | None]:
        escape = shared.end_test()
        shared.begin_test()
        if escape is not None:
            self.stats.escapes += 1
            raise IsolationError(ROLLBACK_ESCAPE(how=escape))
        return shared, None

    def check_unchanged(self) -> None:
        """Nothing can write the template: it is sealed (``ALLOW_CONNECTIONS false``)."""

    async def aclose(self) -> None:
        try:
            for movable in (self._copy, self._session):
                if movable is not None:
                    await movable.aclose()
            if self._rollback is not None:
                self._rollback.isolation.close()
        finally:
            self._copy = self._session = None
            self._rollback = None
            self.pool.close()


class PgBackend:
    """One run's (one xdist worker's) databases on one PostgreSQL server."""

    def __init__(self, url: str, *, run_id: str, worker: str) -> None:
        safe_worker = "".join(ch if ch.isalnum() else "_" for ch in worker).lower()
        self.cluster = Cluster(make_url(url), f"memdb_{run_id}_{safe_worker}", run_id)

    def template(
        self,
        target: Target,
        settings: MemdbConfig,
        *,
        label: str,
        classes: SessionClasses,
        hook: TemplateHook | None,
        stats: MemdbStats,
    ) -> PgTemplate:
        """Build ``target``'s template on the server from its sources
        (:func:`pytest_memdb.postgresql.sources.build`: a ``.sql`` dump or a SQLite file's
        rows, the migrations, then the metadata's tables, the load steps and the hook in
        one transaction), then sealed."""
        from pytest_memdb.postgresql import sources

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
        return PgTemplate(
            self.cluster,
            database,
            echo=settings.echo,
            label=label,
            classes=classes,
            stats=stats,
        )

    def close(self) -> None:
        """Drop every database this run made."""
        with contextlib.suppress(Exception):
            self.cluster.close()


def new_run_id() -> str:
    """A short id for this run's database names (the controller's; workers get it)."""
    return f"{uuid.uuid4().hex[:8]}{os.getpid() % 1000:03d}"
