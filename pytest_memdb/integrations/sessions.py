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

from sqlalchemy import Engine, MetaData
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, sessionmaker

from pytest_memdb.core.importing import describe, import_object
from pytest_memdb.errors import MemdbError


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


class SyncMakers:
    """Sync sessionmakers made once per engine and reused by later tests, made anew when a
    test changed one (``configure(...)``, a listener on it).

    A ``sessionmaker`` makes a ``Session`` subclass of its own (128 us per test measured);
    an ``async_sessionmaker`` does not, so those are made per test. Listeners a test adds to
    a sessionmaker land on that subclass, which is what is compared.
    """

    def __init__(self, classes: SessionClasses) -> None:
        self._classes = classes
        self._made: dict[int, tuple[sessionmaker[Session], dict[str, Any], object]] = {}

    def for_engine(self, engine: Engine) -> sessionmaker[Session]:
        made = self._made.get(id(engine))
        if made is not None:
            maker, kw, listening = made
            if maker.kw.get("bind") is engine and maker.kw == kw and _listeners(maker) == listening:
                return maker
        maker = sessionmaker(engine, class_=self._classes.sync_class, expire_on_commit=False)
        self._made = {id(engine): (maker, dict(maker.kw), _listeners(maker))}
        return maker


def _listeners(maker: sessionmaker[Session]) -> object:
    """The listeners on the maker's own ``Session`` subclass (class-level: SQLAlchemy keeps
    them per class in each event's ``_clslevel``; no public way to list them)."""
    dispatch: Any = maker.class_.dispatch
    found = []
    for name in getattr(dispatch, "_event_names", ()):
        per_class = getattr(getattr(dispatch, name), "_clslevel", {})
        found.append(tuple(per_class.get(maker.class_, ())))
    return tuple(found)
