"""SQLite's template build: the fixture file copied into memory, the migrations run on it,
then :func:`~pytest_memdb.core.templates.seed`'s steps in one transaction.

Imports SQLAlchemy: load lazily.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.pool import StaticPool

from pytest_memdb.core.config import Target
from pytest_memdb.core.importing import import_metadata
from pytest_memdb.core.templates import TemplateHook, seed
from pytest_memdb.sqlite.loading import CheckedFiles, load_file
from pytest_memdb.sqlite.memory import Borrowed, MemoryDatabase
from pytest_memdb.sqlite.pragmas import Pragmas, apply_pragmas


def build_template(
    target: Target,
    name: str,
    *,
    base_dir: Path,
    pragmas: Pragmas = (),
    hook: TemplateHook | None = None,
    checked: CheckedFiles | None = None,
) -> MemoryDatabase:
    """A new in-memory database called ``name`` with everything ``target`` asks for.

    The fixture file (if any) is copied first; then the Alembic migrations (if any) run
    on it; then, in ONE transaction, the metadata's missing tables are created, the load
    steps run in order, and the hook runs. Any failure rolls the transaction back, frees
    the database and raises a :class:`MemdbError` that names the step and carries the
    original exception.

    With migrations, the metadata's tables are not created: the migrations own the
    schema, and the models are checked against it instead (the drift check,
    :func:`pytest_memdb.core.migrations.check_drift`), so a missing migration fails the
    template rather than being papered over by ``create_all``.
    """
    if target.file is not None:
        database = load_file(
            target.file, name, origin=target.file_origin, shared=False, checked=checked
        )
    else:
        database = MemoryDatabase(name, shared=False)
    if target.metadata is None and not target.load and hook is None and target.alembic is None:
        return database
    try:
        metadata = (
            import_metadata(target.metadata, target.metadata_origin, base_dir)
            if target.metadata
            else None
        )
        if target.alembic is not None:
            _migrate(target, database, metadata)
        with _seeding_connection(database, pragmas) as conn, conn.begin():
            seed(conn, target, metadata, base_dir=base_dir, hook=hook)
    except BaseException:
        database.close()
        raise
    return database


def _migrate(target: Target, database: MemoryDatabase, metadata: MetaData | None) -> None:
    """Run ``target``'s Alembic migrations on the template (Alembic is imported only here)."""
    from pytest_memdb.sqlite.migrating import run_migrations

    run_migrations(target, database, metadata=metadata)


@contextmanager
def _seeding_connection(database: MemoryDatabase, pragmas: Pragmas) -> Iterator[Connection]:
    """A sync connection on the template's anchor whose ``BEGIN``/``COMMIT`` SQLAlchemy
    emits itself (the template is private: no other connection can reach it).

    With the driver in charge, DDL would run outside the transaction and a failing
    step would leave the steps before it applied (SQLAlchemy's SQLite docs,
    "Serializable isolation / Savepoints / Transactional DDL").
    """
    raw = database.anchor
    previous = raw.isolation_level
    raw.isolation_level = None
    apply_pragmas(raw, pragmas)
    engine: Engine = create_engine("sqlite://", creator=lambda: Borrowed(raw), poolclass=StaticPool)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raw.isolation_level = previous
