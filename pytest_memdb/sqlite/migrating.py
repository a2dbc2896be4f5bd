"""SQLite's side of Alembic migrations (:mod:`pytest_memdb.core.migrations`): where they run.

The template is a *private* in-memory database that only its anchor connection reaches,
while an unchanged ``env.py`` from ``alembic init`` (generic and ``-t async``) opens its
own engine from ``sqlalchemy.url``. So each attempt migrates a *build* database (shared,
uniquely named, a copy of the template, e.g. the fixture file's content), whose
connections alone the guard lets through; the result is then backed up into the template.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine
from sqlalchemy.pool import NullPool

from pytest_memdb.core.config import Target
from pytest_memdb.core.migrations import run_migrations as _run_migrations
from pytest_memdb.errors import MemdbError
from pytest_memdb.sqlite.memory import MemoryDatabase, unique_name

_BACKUP_GIVE_UP_AFTER = 5.0


def run_migrations(
    target: Target, template: MemoryDatabase, *, metadata: MetaData | None = None
) -> None:
    """Migrate the private ``template`` to ``target``'s revision (and check the drift)."""
    _run_migrations(target, SqliteSite(template), metadata=metadata)


class SqliteSite:
    """Builds on copies of one private template."""

    def __init__(self, template: MemoryDatabase) -> None:
        self.template = template

    def build(self) -> SqliteBuild:
        return SqliteBuild(self.template.copy(unique_name("alembic", "build")), self.template)


class SqliteBuild:
    """A shared copy of the template that ``env.py`` migrates."""

    def __init__(self, database: MemoryDatabase, template: MemoryDatabase) -> None:
        self.database = database
        self.template = template

    @property
    def sync_url(self) -> str:
        return self.database.sync_url

    @property
    def async_url(self) -> str:
        return self.database.async_url

    def engine(self) -> Engine:
        return create_engine(self.database.sync_url, poolclass=NullPool)

    def allows(self, dialect: Any, cargs: Any, cparams: dict[str, Any]) -> bool:
        """Only connections to the build database, by its URI."""
        return (
            dialect.name == "sqlite"
            and list(cargs) == [self.database.sqlite_uri]
            and bool(cparams.get("uri"))
        )

    def finish(self, where: str) -> None:
        """Copy the migrated build database over the private template (page-level backup).

        ``sqlite3``'s ``backup()`` retries a busy step forever: a connection ``env.py`` left
        holding a write on the build database would hang the run, so the backup gives up
        after a few seconds (:meth:`MemoryDatabase.fill_from`).
        """
        try:
            filled = self.template.fill_from(self.database, give_up_after=_BACKUP_GIVE_UP_AFTER)
        except sqlite3.Error as exc:
            raise MemdbError(
                f"pytest-memdb: {where}: the migrated database could not be copied into the "
                f"template: {type(exc).__name__}: {exc}"
            ) from None
        if not filled:
            raise MemdbError(
                f"pytest-memdb: {where}: the migrated database could not be copied into the "
                f"template: a connection env.py left open still holds a write on it after "
                f"{_BACKUP_GIVE_UP_AFTER:g} s; close env.py's connections or dispose its "
                "engines."
            )

    def close(self) -> None:
        self.database.close()
