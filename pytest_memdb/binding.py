"""``memdb_bind``: the app's own engines and sessionmakers, pointed at each test's database.

Imports SQLAlchemy: load lazily. Apps make their engine and sessionmaker once, at import
(``engine = create_async_engine(settings.url)``; ``SessionLocal = async_sessionmaker(engine)``),
and every module that needs them imports them. A test suite then re-points them by hand,
module by module. Here each named object is pointed at the test's database for the
duration of the test and put back exactly as it was afterwards (the fixture's teardown
runs after a failure, a skip, a timeout and Ctrl-C too):

* ``sessionmaker``, ``async_sessionmaker``: re-bound in place (``configure(bind=...)``,
  and every engine in ``binds``), so every module that imported the object sees it; their
  previous configuration is put back afterwards;
* ``scoped_session``, ``async_scoped_session``: their session factory, the same way; the
  session the registry may hold (made on the app's engine) is removed before and after;
* ``Engine``, ``AsyncEngine``: an engine object cannot be re-pointed (its pool, dialect and
  listeners belong to the app's database), so every *module global* that refers to it, in
  every module loaded (``from app.db import engine`` copies included), is replaced by the
  test's engine of the same kind, and so is the bind of every sessionmaker found in a
  module global that was bound to it. Not reached: references held elsewhere (an
  attribute of an object, a closure, a default argument, a dict): name those objects
  instead, or bind the sessionmaker the code uses.

The places that hold an engine are found by scanning ``sys.modules`` once per engine, and
again only in modules imported since, so a test pays for the scan once (about 1 ms per
thousand modules, measured here with pytest and SQLAlchemy loaded).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_scoped_session, async_sessionmaker
from sqlalchemy.orm import scoped_session, sessionmaker

from pytest_memdb._loop import run_sync
from pytest_memdb.errors import MemdbError
from pytest_memdb.importing import describe, import_object
from pytest_memdb.janitor import MemdbHandle

KINDS = (
    "Engine, AsyncEngine, sessionmaker, async_sessionmaker, scoped_session or async_scoped_session"
)
Makers = sessionmaker[Any] | async_sessionmaker[Any]


class _Places:
    """Where module globals hold an engine, and the sessionmakers in module globals bound to
    it: found once, then looked for again only in modules loaded since."""

    def __init__(self, target: Engine | AsyncEngine) -> None:
        self.target = target
        self._seen: set[str] = set()
        self._places: list[tuple[dict[str, Any], str]] = []
        self._makers: dict[int, Makers] = {}

    def find(self) -> tuple[list[tuple[dict[str, Any], str]], list[Makers]]:
        if len(self._seen) != len(sys.modules):
            for name, module in list(sys.modules.items()):
                if name not in self._seen:
                    self._seen.add(name)
                    self._scan(getattr(module, "__dict__", None))
        places = [(ns, key) for ns, key in self._places if ns.get(key) is self.target]
        return places, list(self._makers.values())

    def _scan(self, namespace: object) -> None:
        if not isinstance(namespace, dict):
            return
        for key, value in list(namespace.items()):
            if value is self.target:
                self._places.append((namespace, key))
            elif isinstance(value, (scoped_session, async_scoped_session)):
                value = value.session_factory
            if (
                isinstance(value, (sessionmaker, async_sessionmaker))
                and value.kw.get("bind") is self.target
            ):
                self._makers[id(value)] = value


class Binder:
    """The objects one option names, imported once, bound for one test at a time."""

    def __init__(self, paths: tuple[str, ...], origin: str, base_dir: Path) -> None:
        self.paths = paths
        self.origin = origin
        self._base_dir = base_dir
        self._objects: list[object] | None = None
        self._places: dict[int, _Places] = {}

    def objects(self) -> list[object]:
        """The named objects, each checked to be one that can be bound."""
        if self._objects is None:
            found: list[object] = []
            for path in self.paths:
                obj = import_object(path, self.origin, self._base_dir)
                if not isinstance(
                    obj,
                    (
                        Engine,
                        AsyncEngine,
                        sessionmaker,
                        async_sessionmaker,
                        scoped_session,
                        async_scoped_session,
                    ),
                ):
                    raise MemdbError(
                        f"pytest-memdb: {self.origin} {path!r} is {describe(obj)}; expected "
                        f"an {KINDS} of your app."
                    )
                found.append(obj)
            self._objects = found
        return self._objects

    @contextmanager
    def bound(self, handle: MemdbHandle) -> Iterator[None]:
        """Point every named object at ``handle``'s database until the block ends."""
        undo: list[tuple[str, Any, Any]] = []
        try:
            for obj in self.objects():
                self._bind(obj, handle, undo)
            yield
        finally:
            for kind, where, old in reversed(undo):
                if kind == "global":
                    namespace, key = where
                    namespace[key] = old
                elif kind == "maker":
                    where.kw.clear()
                    where.kw.update(old)
                else:  # "remove": a scoped session's registry
                    _remove(where)

    def _bind(self, obj: object, handle: MemdbHandle, undo: list[tuple[str, Any, Any]]) -> None:
        if isinstance(obj, (Engine, AsyncEngine)):
            ours: object = handle.engine if isinstance(obj, AsyncEngine) else handle.sync_engine
            places, makers = self._places.setdefault(id(obj), _Places(obj)).find()
            for namespace, key in places:
                undo.append(("global", (namespace, key), obj))
                namespace[key] = ours
            for maker in makers:
                _rebind(maker, handle, undo)
        elif isinstance(obj, (scoped_session, async_scoped_session)):
            _remove(obj)
            undo.append(("remove", obj, None))
            _rebind(obj.session_factory, handle, undo)
        else:
            assert isinstance(obj, (sessionmaker, async_sessionmaker))
            _rebind(obj, handle, undo)


def _rebind(maker: Makers, handle: MemdbHandle, undo: list[tuple[str, Any, Any]]) -> None:
    """``configure`` the maker onto the test's engines, remembering its configuration."""
    undo.append(("maker", maker, dict(maker.kw)))
    engine: object = handle.engine if isinstance(maker, async_sessionmaker) else handle.sync_engine
    new: dict[str, Any] = {"bind": engine}
    binds = maker.kw.get("binds")
    if binds:
        new["binds"] = {key: _ours(value, handle) for key, value in binds.items()}
    maker.configure(**new)


def _ours(engine: object, handle: MemdbHandle) -> object:
    if isinstance(engine, AsyncEngine):
        return handle.engine
    if isinstance(engine, Engine):
        return handle.sync_engine
    return engine


def _remove(scoped: scoped_session[Any] | async_scoped_session[Any]) -> None:
    if isinstance(scoped, async_scoped_session):
        run_sync(scoped.remove())
    else:
        scoped.remove()
