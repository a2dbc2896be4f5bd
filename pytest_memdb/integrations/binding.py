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
  registry is replaced by an empty one of the same kind (same scope function) before and
  after, so no thread, task or scope keeps a session from before (an app's long-lived
  worker thread included), and the sessions made during the test, in any thread, are closed
  at its end;
* ``Engine``, ``AsyncEngine``: an engine object cannot be re-pointed (its pool, dialect and
  listeners belong to the app's database), so every *module global* that refers to it, in
  every module loaded (``from app.db import engine`` copies included), is replaced by the
  test's engine of the same kind, and so is the attribute the option names when that is
  not a module's (``app.config:settings.engine``). Sessionmakers and scoped sessions bound
  to it (``bind=`` or one of ``binds=``) are re-bound where they are found: in module
  globals, and among the attributes of the object the option names the engine on
  (``app.db:database.engine`` re-binds ``database.Session`` and ``database.scoped``: the
  object's own attributes, ``vars(database)``, one level deep: what a framework's
  ``Database`` holder keeps beside its engine). Not reached: references held elsewhere
  (another object's attribute, a closure, a default argument, a dict, an ``lru_cache``):
  name those objects instead, or bind the sessionmaker the code uses.

What each option names is looked up again for every test (the modules are imported once;
the attribute path is walked each time: about 1 us a line, measured here): a library that
makes a new engine for each app or URL it is configured with (a module-scoped fixture's
app) is bound in every test, not only while its first engine lives.

A module imported *during* a test that copies the test's engine (``from app.db import
engine`` in a module loaded lazily) is found at the end of the test and given the app's
engine back, so nothing of a test outlives it. The places that hold an engine are found
by scanning ``sys.modules`` once per engine, and again only in modules loaded since (each
module looked at once: about 1 ms per thousand modules, measured here with pytest and
SQLAlchemy loaded).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
)
from sqlalchemy.orm import scoped_session, sessionmaker
from sqlalchemy.util import ScopedRegistry, ThreadLocalRegistry

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.importing import attribute_of, describe, import_module
from pytest_memdb.core.janitor import MemdbHandle
from pytest_memdb.errors import MemdbError

BINDABLE = (
    Engine,
    AsyncEngine,
    sessionmaker,
    async_sessionmaker,
    scoped_session,
    async_scoped_session,
)
KINDS = (
    "Engine, AsyncEngine, sessionmaker, async_sessionmaker, scoped_session or async_scoped_session"
)
Makers = sessionmaker[Any] | async_sessionmaker[Any]
Scoped = scoped_session[Any] | async_scoped_session[Any]


class _Places:
    """Where module globals hold an engine; the sessionmakers and scoped sessions in module
    globals bound to it: found once, then looked for again only in modules loaded since."""

    def __init__(self, target: Engine | AsyncEngine) -> None:
        self.target = target
        self._seen: set[int] = set()
        self._places: list[tuple[dict[str, Any], str]] = []
        self._makers: dict[int, Makers] = {}
        self._scoped: dict[int, Scoped] = {}

    def find(self) -> tuple[list[tuple[dict[str, Any], str]], list[Makers], list[Scoped]]:
        for namespace in _namespaces():
            if id(namespace) not in self._seen:
                self._seen.add(id(namespace))
                self._scan(namespace)
        places = [(ns, key) for ns, key in self._places if ns.get(key) is self.target]
        return places, list(self._makers.values()), list(self._scoped.values())

    def _scan(self, namespace: dict[str, Any]) -> None:
        for key, value in list(namespace.items()):
            if value is self.target:
                self._places.append((namespace, key))
            elif isinstance(value, (scoped_session, async_scoped_session)):
                if _bound_to(value.session_factory, self.target):
                    self._scoped[id(value)] = value
                    self._makers[id(value.session_factory)] = value.session_factory
            elif isinstance(value, (sessionmaker, async_sessionmaker)) and _bound_to(
                value, self.target
            ):
                self._makers[id(value)] = value


def _namespaces() -> list[dict[str, Any]]:
    found = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict):
            found.append(namespace)
    return found


def _bound_to(maker: Makers, engine: object) -> bool:
    binds = maker.kw.get("binds") or {}
    return maker.kw.get("bind") is engine or any(value is engine for value in binds.values())


Named = list[tuple[object, object, str]]
"""Each named object, with what holds it (its module, or what the path's last dot is an
attribute of) and the attribute's name."""


class Binder:
    """The objects one option names, looked up for each test, bound for one test at a time."""

    def __init__(self, paths: tuple[str, ...], origin: str, base_dir: Path) -> None:
        self.paths = paths
        self.origin = origin
        self._base_dir = base_dir
        self._modules: dict[str, ModuleType] = {}
        self._places: dict[int, _Places] = {}

    def objects(self) -> Named:
        """The named objects as they are now, each checked to be one that can be bound."""
        found: Named = []
        for path in self.paths:
            module_name, _, attribute = path.partition(":")
            module = self._modules.get(module_name)
            if module is None:
                module = import_module(module_name, self.origin, self._base_dir, dotted=path)
                self._modules[module_name] = module
            obj = attribute_of(module, path, self.origin)
            if not isinstance(obj, BINDABLE):
                raise MemdbError(
                    f"pytest-memdb: {self.origin} {path!r} is {describe(obj)}; expected "
                    f"an {KINDS} of your app."
                )
            parent_path, _, name = attribute.rpartition(".")
            parent = (
                attribute_of(module, f"{module_name}:{parent_path}", self.origin)
                if parent_path
                else module
            )
            found.append((obj, parent, name))
        return found

    @contextmanager
    def bound(self, handle: MemdbHandle, named: Named | None = None) -> Iterator[None]:
        """Point every named object (``named``: as :meth:`objects` found them for this test)
        at ``handle``'s database until the block ends."""
        named = self.objects() if named is None else named
        engines = {id(obj) for obj, _parent, _name in named}
        self._places = {key: found for key, found in self._places.items() if key in engines}
        undo: list[tuple[str, Any, Any]] = []
        before = {id(namespace) for namespace in _namespaces()}
        try:
            for obj, parent, name in named:
                self._bind(obj, parent, name, handle, undo)
            yield
        finally:
            try:
                self._unbind_late_copies(named, handle, before)
            finally:
                _undo(undo)

    def _bind(
        self,
        obj: object,
        parent: object,
        name: str,
        handle: MemdbHandle,
        undo: list[tuple[str, Any, Any]],
    ) -> None:
        if isinstance(obj, (Engine, AsyncEngine)):
            ours = _ours(obj, handle)
            places, makers, scoped = self._places.setdefault(id(obj), _Places(obj)).find()
            for namespace, key in places:
                undo.append(("global", (namespace, key), obj))
                namespace[key] = ours
            if not isinstance(parent, ModuleType):
                makers, scoped = _beside(parent, obj, makers, scoped)
                if getattr(parent, name, None) is obj:
                    undo.append(("attribute", (parent, name), obj))
                    setattr(parent, name, ours)
            for session in scoped:
                _clear(session, track=True)
                undo.append(("clear", session, None))
            for maker in makers:
                _rebind(maker, handle, undo)
        elif isinstance(obj, (scoped_session, async_scoped_session)):
            _clear(obj, track=True)
            undo.append(("clear", obj, None))
            _rebind(obj.session_factory, handle, undo)
        else:
            assert isinstance(obj, (sessionmaker, async_sessionmaker))
            _rebind(obj, handle, undo)

    def _unbind_late_copies(self, named: Named, handle: MemdbHandle, before: set[int]) -> None:
        """Modules loaded during the test took the test's engines: give them the app's back."""
        originals: dict[int, object] = {}
        for obj, _parent, _name in named:
            if isinstance(obj, (Engine, AsyncEngine)):
                originals[id(_ours(obj, handle))] = obj
        if not originals:
            return
        for namespace in _namespaces():
            if id(namespace) in before:
                continue
            for key, value in list(namespace.items()):
                if id(value) in originals:
                    namespace[key] = originals[id(value)]
                elif isinstance(value, (scoped_session, async_scoped_session)):
                    _clear(value)
                    _give_back(value.session_factory, originals)
                elif isinstance(value, (sessionmaker, async_sessionmaker)):
                    _give_back(value, originals)


def _beside(
    holder: object, engine: object, makers: list[Makers], scoped: list[Scoped]
) -> tuple[list[Makers], list[Scoped]]:
    """``makers`` and ``scoped``, with the sessionmakers and scoped sessions among
    ``holder``'s own attributes (``vars()``, slots) that are bound to ``engine``."""
    makers_by_id = {id(maker): maker for maker in makers}
    scoped_by_id = {id(session): session for session in scoped}
    for value in _attributes(holder):
        if isinstance(value, (scoped_session, async_scoped_session)):
            if _bound_to(value.session_factory, engine):
                scoped_by_id.setdefault(id(value), value)
                makers_by_id.setdefault(id(value.session_factory), value.session_factory)
        elif isinstance(value, (sessionmaker, async_sessionmaker)) and _bound_to(value, engine):
            makers_by_id.setdefault(id(value), value)
    return list(makers_by_id.values()), list(scoped_by_id.values())


def _attributes(holder: object) -> list[object]:
    """The values of ``holder``'s own attributes: its ``__dict__`` (an instance's, or a
    class's own), and its slots; nothing computed (no properties), nothing inherited."""
    found = list(dict(getattr(holder, "__dict__", None) or {}).values())
    for klass in type(holder).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__"):
                value = getattr(holder, slot, None)
                if value is not None:
                    found.append(value)
    return found


def _give_back(maker: Makers, originals: dict[int, object]) -> None:
    bind = maker.kw.get("bind")
    if id(bind) in originals:
        maker.configure(bind=originals[id(bind)])
    binds = maker.kw.get("binds")
    if binds and any(id(value) in originals for value in binds.values()):
        maker.configure(binds={k: originals.get(id(v), v) for k, v in binds.items()})


def _undo(undo: list[tuple[str, Any, Any]]) -> None:
    for kind, where, old in reversed(undo):
        if kind == "global":
            namespace, key = where
            namespace[key] = old
        elif kind == "attribute":
            parent, name = where
            setattr(parent, name, old)
        elif kind == "maker":
            where.kw.clear()
            where.kw.update(old)
        else:  # "clear": a scoped session's registry, after the test too
            _clear(where)


def _rebind(maker: Makers, handle: MemdbHandle, undo: list[tuple[str, Any, Any]]) -> None:
    """``configure`` the maker onto the test's engines, remembering its configuration.

    Each engine is replaced by the test's engine of the same kind; a maker with no bind
    gets the kind its sessions need (``sessionmaker(class_=AsyncSession)``, SQLAlchemy
    1.4's way, is async).
    """
    undo.append(("maker", maker, dict(maker.kw)))
    bind = maker.kw.get("bind")
    if isinstance(bind, (Engine, AsyncEngine)):
        engine = _ours(bind, handle)
    elif isinstance(maker, async_sessionmaker) or issubclass(maker.class_, AsyncSession):
        engine = handle.engine
    else:
        engine = handle.sync_engine
    new: dict[str, Any] = {"bind": engine}
    binds = maker.kw.get("binds")
    if binds:
        new["binds"] = {
            key: _ours(value, handle) if isinstance(value, (Engine, AsyncEngine)) else value
            for key, value in binds.items()
        }
    maker.configure(**new)


def _ours(engine: Engine | AsyncEngine, handle: MemdbHandle) -> Engine | AsyncEngine:
    return handle.engine if isinstance(engine, AsyncEngine) else handle.sync_engine


class _Tracking(ThreadLocalRegistry[Any]):
    """A scoped session's thread-local registry while a test runs: the same, remembering
    every session any thread put in it, for the test's end to close them (a
    ``threading.local`` can be read only from its own thread)."""

    def __init__(self, createfunc: Callable[[], Any]) -> None:
        super().__init__(createfunc)
        self.made: list[Any] = []

    def __call__(self) -> Any:
        try:
            return self.registry.value
        except AttributeError:
            value = self.registry.value = self.createfunc()
            self.made.append(value)  # list.append: atomic, from any thread
            return value

    def set(self, obj: Any) -> None:  # scoped_session(bind=...): a session made with options
        self.registry.value = obj
        self.made.append(obj)


def _clear(scoped: Scoped, *, track: bool = False) -> None:
    """Close every session the registry holds that can be reached, and give the scoped
    session a fresh, empty registry of the same kind (the same scope function, the same
    session factory): no thread, task or scope finds a session made before, on the app's
    engine or on a test's. ``remove()`` alone reaches only the current scope: a thread-local
    registry holds one session per thread (an app's long-lived worker thread keeps its own
    from test to test, and only that thread can see it), an ``async_scoped_session`` one per
    task.

    ``track``: a new thread-local registry remembers the sessions every thread makes in it,
    for the next clear (the test's end) to close them.
    """
    registry = scoped.registry
    sessions = getattr(registry, "registry", None)
    held: list[Any] = []
    if type(registry) in (ThreadLocalRegistry, _Tracking):
        held.extend(getattr(registry, "made", ()))
        held.append(getattr(sessions, "value", None))  # this thread's (the others: tracked)
        kind = _Tracking if track else ThreadLocalRegistry
        scoped.registry = kind(registry.createfunc)
    elif type(registry) is ScopedRegistry and isinstance(sessions, dict):
        held.extend(list(sessions.values()))
        scoped.registry = ScopedRegistry(registry.createfunc, registry.scopefunc)
    elif isinstance(sessions, dict):  # a registry of the app's own kind: emptied in place
        held.extend(list(sessions.values()))
        sessions.clear()
    else:
        held.append(registry() if registry.has() else None)
        registry.clear()
    _close_all(held)


def _close_all(sessions: list[Any]) -> None:
    """Close each session once (every one, even when one of them raises)."""
    seen: set[int] = set()
    failure: BaseException | None = None
    for session in sessions:
        if session is None or id(session) in seen:
            continue
        seen.add(id(session))
        try:
            if isinstance(session, AsyncSession):
                run_sync(session.close())
            else:
                session.close()
        except Exception as exc:  # the others are closed first
            failure = failure or exc
    if failure is not None:
        raise failure
