"""Which session classes the plugin's sessionmakers make: yours, SQLModel's, or SQLAlchemy's.

Imports SQLAlchemy: load lazily. An app on SQLModel calls ``await session.exec(select(Hero))``,
which SQLAlchemy's ``AsyncSession`` does not have; an app with its own ``Session``
subclass relies on what it adds. So every session and sessionmaker the plugin hands out
(``memdb_session``, ``memdb_sessionmaker``, ``memdb_sync_session``, factories' too) is of
the class ``memdb_session_class`` / ``memdb_sync_session_class`` name, or, when the
template's metadata is SQLModel's, of SQLModel's own session classes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from pytest_memdb.errors import MemdbError
from pytest_memdb.importing import describe, import_object


@dataclass(frozen=True)
class SessionClasses:
    async_class: type[AsyncSession] = AsyncSession
    sync_class: type[Session] = Session


def session_classes(
    async_path: str | None,
    sync_path: str | None,
    metadata: MetaData | None,
    *,
    ini_name: str,
    base_dir: Path,
) -> SessionClasses:
    """The classes for one template: the options win, then SQLModel's, then SQLAlchemy's."""
    default = _sqlmodel_classes(metadata) or SessionClasses()
    async_class = default.async_class
    sync_class = default.sync_class
    if async_path:
        async_class = _subclass(
            async_path, AsyncSession, f"memdb_session_class in {ini_name}", base_dir
        )
    if sync_path:
        sync_class = _subclass(
            sync_path, Session, f"memdb_sync_session_class in {ini_name}", base_dir
        )
    return SessionClasses(async_class, sync_class)


def _subclass(path: str, base: type[Any], origin: str, base_dir: Path) -> Any:
    found = import_object(path, origin, base_dir)
    if not (isinstance(found, type) and issubclass(found, base)):
        raise MemdbError(
            f"pytest-memdb: {origin} {path!r} is {describe(found)}; expected a subclass of "
            f"{base.__module__}.{base.__qualname__}."
        )
    return found


def _sqlmodel_classes(metadata: MetaData | None) -> SessionClasses | None:
    """SQLModel's sessions when ``metadata`` is SQLModel's (only if SQLModel is loaded)."""
    sqlmodel = sys.modules.get("sqlmodel")
    if metadata is None or sqlmodel is None or metadata is not sqlmodel.SQLModel.metadata:
        return None
    from sqlmodel import Session as SQLModelSession
    from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

    return SessionClasses(SQLModelAsyncSession, SQLModelSession)


DEFAULT_CLASSES = SessionClasses()
"""SQLAlchemy's own ``AsyncSession`` and ``Session``."""
