"""``memdb_factories``: factory_boy and polyfactory factories writing through the test's session.

Imports SQLAlchemy: load lazily. factory_boy and polyfactory are never imported here: a
factory can only exist once the user's module imported its library, so the base classes
are looked up in ``sys.modules`` (and either library may be missing).

Test data factories hold their session in class-level configuration (factory_boy's
``Meta.sqlalchemy_session``, polyfactory's ``__session__`` / ``__async_session__``), set
once at import, while each test has a database of its own. So for each test, every bound
factory is given the test's own session, and its configuration is put back exactly as it
was after the test (teardown runs after failures, skips and interrupts too).

Which session: the one the test reads through, so the factory's rows are in it without
any commit. Sharing one session is the only choice that works in every isolation mode: a
second session that only flushed would hold SQLite's write lock, and in ``copy`` mode the
memdb VFS blocks every other connection's reads until the busy timeout; in ``rollback``
mode a second writer waits for the first one's savepoint. Objects made by a factory and
used by the test are then also in one identity map (no "already attached to session").

* The test's session is ``memdb_session`` (an ``AsyncSession``) when the test uses it
  (asks for it, or a fixture it uses does) and not ``memdb_sync_session``; otherwise
  ``memdb_sync_session``. The sessions are those fixtures' values, requested when a
  factory first creates, so a factory and the test always share one object.
* factory_boy is synchronous: with an async test session it writes through
  ``memdb_session.sync_session`` (the ``Session`` behind the ``AsyncSession``).
  ``sqlalchemy_session_persistence = None`` only adds (the test's next query autoflushes);
  ``"flush"`` / ``"commit"`` need I/O, which sync code outside SQLAlchemy's greenlet cannot
  wait for: that is a clear error, unless the factory runs in ``memdb_session.run_sync``.
* polyfactory: ``create_async`` writes through ``memdb_session``; ``create_sync`` through the
  test's session as above (always with I/O: polyfactory flushes or commits).
* A commit is undone as any commit of the test is: ``copy`` restores the working database,
  ``rollback`` rolls back the outer transaction, ``session`` keeps it, by design.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol, cast

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util.concurrency import in_greenlet

from pytest_memdb.core.importing import describe, import_module
from pytest_memdb.errors import MemdbError
from pytest_memdb.messages import FACTORY_NEEDS_IO, POLYFACTORY_CREATE_SYNC

SessionKind = Literal["async", "sync"]
KINDS = "factory_boy SQLAlchemyModelFactory or polyfactory SQLAlchemyFactory subclass"
_MISSING = object()


def session_kind(fixturenames: Iterable[str]) -> SessionKind:
    """``async`` when the test uses ``memdb_session`` and not ``memdb_sync_session``."""
    names = set(fixturenames)
    return "async" if "memdb_session" in names and "memdb_sync_session" not in names else "sync"


def _base(module: str, name: str) -> type[Any] | None:
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def library_of(obj: object) -> Literal["factory_boy", "polyfactory"] | None:
    """Which library's SQLAlchemy factory ``obj`` is, if it is a concrete one (not a base)."""
    if not isinstance(obj, type):
        return None
    factory_boy = _base("factory.alchemy", "SQLAlchemyModelFactory")
    if factory_boy is not None and issubclass(obj, factory_boy):
        return None if cast(Any, obj)._meta.abstract else "factory_boy"
    polyfactory = _base("polyfactory.factories.sqlalchemy_factory", "SQLAlchemyFactory")
    if polyfactory is not None and issubclass(obj, polyfactory):
        return None if obj.__dict__.get("__is_base_factory__", False) else "polyfactory"
    return None


def factories_in(module: ModuleType) -> list[type[Any]]:
    """The concrete factories a module defines or imports, in the module's order."""
    found: dict[int, type[Any]] = {}
    for value in list(vars(module).values()):
        if library_of(value) is not None:
            found.setdefault(id(value), value)
    return list(found.values())


class FactoryModules:
    """The factories of the modules ``memdb_factories`` names: imported at the first test
    that uses memdb (as the other options' objects are, through :mod:`importing`), kept
    for the run."""

    def __init__(self, modules: tuple[str, ...], origin: str, base_dir: Path) -> None:
        self.modules = modules
        self.origin = origin
        self._base_dir = base_dir
        self._factories: list[type[Any]] | None = None

    def factories(self) -> list[type[Any]]:
        if self._factories is None:
            found: dict[int, type[Any]] = {}
            for name in self.modules:
                try:
                    module = import_module(name, self.origin, self._base_dir)
                except MemdbError as exc:
                    hinted = _with_install_hint(exc)
                    if hinted is exc:
                        raise
                    raise hinted from exc.__cause__
                classes = factories_in(module)
                if not classes:
                    raise MemdbError(
                        f"pytest-memdb: {self.origin} {name!r}: the module defines or imports "
                        f"no {KINDS} (abstract base factories are not bound)."
                    )
                for cls in classes:
                    found.setdefault(id(cls), cls)
            self._factories = list(found.values())
        return self._factories


def _with_install_hint(exc: MemdbError) -> MemdbError:
    """The import error, saying what to install when factory_boy or polyfactory is missing."""
    cause = exc.__cause__
    if isinstance(cause, ModuleNotFoundError) and cause.name in ("factory", "polyfactory"):
        text, see, link = str(exc).partition("\nSee ")  # the hint goes before the link line
        return MemdbError(
            f"{text.rstrip('.')}. Install the factory libraries: "
            f"pip install 'pytest-memdb[factories]'{see}{link}"
        )
    return exc


class LayerWriter(Protocol):
    """What a layer offers to write through (:class:`pytest_memdb.core.layers.MemdbLayer`)."""

    def session(self) -> AsyncSession: ...

    def sync_session(self) -> Session: ...


class LayerSessions:
    """The sessions factories use inside one layer fixture's set-up, made on first use."""

    def __init__(self, layer: LayerWriter) -> None:
        self._layer = layer
        self._sync: Session | None = None
        self._async: AsyncSession | None = None

    def sync(self) -> Session:
        if self._sync is None:
            self._sync = self._layer.sync_session()
        return self._sync

    def async_(self) -> AsyncSession:
        if self._async is None:
            self._async = self._layer.session()
        return self._async

    def commit(self) -> None:
        """Commit what the factories added (their rows belong to the layer fixture)."""
        from pytest_memdb.core._loop import run_sync

        if self._sync is not None:
            self._sync.commit()
        if self._async is not None:
            run_sync(self._async.commit())

    def close(self) -> None:
        from pytest_memdb.core._loop import run_sync

        sync, self._sync = self._sync, None
        made, self._async = self._async, None
        if sync is not None:
            sync.close()
        if made is not None:
            run_sync(made.close())


class FactoryBinding:
    """One test's bound factories: what the ``memdb_factories`` fixture gives.

    ``bind(...)`` more factories (classes or modules) for the rest of the test;
    :meth:`restore` (the fixture's teardown) puts every one back as it was.
    """

    def __init__(
        self,
        kind: SessionKind,
        *,
        sync_session: Callable[[], Session],
        async_session: Callable[[], AsyncSession],
    ) -> None:
        self.kind: SessionKind = kind
        """Which of the test's sessions the factories write through (module docstring)."""
        self._sync_session = sync_session
        self._async_session = async_session
        self._undo: list[Callable[[], None]] = []
        self._bound: dict[int, type[Any]] = {}

    @classmethod
    def for_layer(cls, layer: LayerWriter) -> tuple[FactoryBinding, LayerSessions]:
        """A binding for a fixture that writes a layer (``memdb_module``...): factory_boy and
        ``create_sync`` write through one sync session of the layer, ``create_async``
        through one async session; the caller commits both when the fixture is set up."""
        sessions = LayerSessions(layer)
        made = cls("sync", sync_session=sessions.sync, async_session=sessions.async_)
        return made, sessions

    @property
    def session(self) -> Session | AsyncSession:
        """The test's session the factories write through (``memdb_session`` or
        ``memdb_sync_session``, the same object those fixtures give)."""
        return self._async_session() if self.kind == "async" else self._sync_session()

    @property
    def factories(self) -> list[type[Any]]:
        """The factories bound in this test, in the order they were bound."""
        return list(self._bound.values())

    def bind(self, *factories: type[Any] | ModuleType) -> None:
        """Bind factory classes, or every concrete factory of a module, until the test ends."""
        for item in factories:
            if isinstance(item, ModuleType):
                classes = factories_in(item)
                if not classes:
                    raise MemdbError(
                        f"pytest-memdb: memdb_factories.bind({item.__name__}): the module "
                        f"defines or imports no {KINDS}."
                    )
            elif library_of(item) is None:
                raise MemdbError(
                    f"pytest-memdb: memdb_factories.bind() got {describe(item)}; expected a "
                    f"{KINDS} (not an abstract base factory) or a module holding some."
                )
            else:
                classes = [item]
            for cls in classes:
                if id(cls) not in self._bound:
                    self._bound[id(cls)] = cls
                    if library_of(cls) == "factory_boy":
                        self._bind_factory_boy(cls)
                    else:
                        self._bind_polyfactory(cls)

    def restore(self) -> None:
        """Put every bound factory's session settings back, last bound first."""
        undo, self._undo = self._undo, []
        self._bound.clear()
        for step in reversed(undo):
            step()

    def _bind_factory_boy(self, cls: type[Any]) -> None:
        """``sqlalchemy_session_factory`` (factory_boy calls it at each create) gives the
        test's session; both session options are put back after."""
        meta = cls._meta
        session, maker = meta.sqlalchemy_session, meta.sqlalchemy_session_factory

        def put_back() -> None:
            meta.sqlalchemy_session, meta.sqlalchemy_session_factory = session, maker

        self._undo.append(put_back)
        meta.sqlalchemy_session = None
        meta.sqlalchemy_session_factory = lambda: self._for_factory_boy(cls)

    def _for_factory_boy(self, cls: type[Any]) -> Session:
        __tracebackhide__ = True  # the error is the user's to read, not our frame
        if self.kind == "sync":
            return self._sync_session()
        meta = cls._meta
        persistence = meta.sqlalchemy_session_persistence
        if (persistence is not None or meta.sqlalchemy_get_or_create) and not in_greenlet():
            what = (
                f"sqlalchemy_session_persistence = {persistence!r}"
                if persistence is not None
                else f"sqlalchemy_get_or_create = {tuple(meta.sqlalchemy_get_or_create)!r}"
            )
            raise MemdbError(FACTORY_NEEDS_IO(factory=cls.__name__, what=what))
        return self._async_session().sync_session

    def _bind_polyfactory(self, cls: type[Any]) -> None:
        """``__session__`` and ``__async_session__`` become callables on the class itself
        (polyfactory calls them at each create; a plain callable gets no cleanup, so the
        test's session stays open); the class's own attributes, or their absence, return."""
        for name in ("__session__", "__async_session__"):
            self._undo.append(_attribute_restorer(cls, name))
        cls.__session__ = staticmethod(lambda: self._for_polyfactory(cls))
        cls.__async_session__ = staticmethod(self._async_session)

    def _for_polyfactory(self, cls: type[Any]) -> Session:
        __tracebackhide__ = True
        if self.kind == "sync":
            return self._sync_session()
        if not in_greenlet():
            raise MemdbError(POLYFACTORY_CREATE_SYNC(factory=cls.__name__))
        return self._async_session().sync_session


def _attribute_restorer(cls: type[Any], name: str) -> Callable[[], None]:
    """Undo for setting ``cls.<name>``: its own value again, or no own value (inherited)."""
    own = cls.__dict__.get(name, _MISSING)

    def put_back() -> None:
        if own is _MISSING:
            if name in cls.__dict__:
                delattr(cls, name)
        else:
            setattr(cls, name, own)

    return put_back
