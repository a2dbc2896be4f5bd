"""The isolation machine (tests/test_isolation_machine.py), extended to what lives around a test.

:class:`LayerMachine` is :class:`IsolationMachine` with every rule of it (random steps in
copy, rollback and session tests), plus:

* layers of every scope (session, module, class; made as the plugin's ``open_layer``
  makes them, nested, torn down and made again), written by "scoped fixtures" (through
  ``layer.sync_session()``, ``layer.session()``, ``layer.engine``, ``layer.sync_engine``,
  ``layer.url``), some of which commit and then raise; illegal writes to a layer by a
  test or by a function fixture; tests opened on the innermost layer;
* ``handle.reset()`` / ``await handle.areset()`` in the middle of a test, after which the
  objects handed out before (``handle.engine``, ``sync_engine``, the sessionmakers, the
  sessions the handle made, app objects bound by ``memdb_bind``, bound factories) are
  used again;
* ``memdb_bind``: an app module with a global engine, sync engine and sessionmakers,
  bound with ``Binder.bound(handle)`` for the test, written through by steps;
* factory_boy factories bound with ``FactoryBinding`` to the handle's sessions;
* driver connection state under a pooled connection (``row_factory``, ``text_factory``,
  ``isolation_level``, ``autocommit``, ``deserialize``, ``setlimit``,
  ``create_function``, ``close()``, on ``driver_connection`` and on aiosqlite's
  ``_conn``);
* journal modes with writes that spill a tiny page cache and are rolled back, writes
  around the page-recording VFS (``vfs=memdb``), and ``PRAGMA schema_version`` rewound
  after DDL through an engine kept across tests;
* a one-shot fault armed inside the page restore (as a pytest-timeout firing there);
* work that outlives its test (a thread or an asyncio task writing through the test's
  sessionmaker or ``sqlite_uri`` once the next test has started);
* a test on an empty template.

The invariants, checked when each test starts (what the NEXT test sees): a copy or
rollback test opened on a stack of layers sees exactly the template plus the rows the
legitimate scoped fixtures of those layers wrote (never a row of a test, of a function
fixture, of a fixture that failed, of work that outlived its test), through a new
``sqlite3`` connection, the handle's engines and an engine kept across tests; every
pooled connection of the handle's engines behaves as a fresh one (tuples of ``str``, a
rollback rolls back, the working database's data); the app's own database is never
written. After a reset: the test's stack's content, through every object handed out
before, each of which still writes to the test's database.

The machine touches the core's layer and test-boundary API only through the adapters
below (``make_layer`` ... ``end_test``): re-point them when that API changes.

Environment: as tests/test_isolation_machine.py (``MEMDB_MACHINE_EXAMPLES``,
``MEMDB_MACHINE_MULTIPLE``, ``MEMDB_MACHINE_TRACE`` ...), and for this machine alone
``MEMDB_LAYER_MACHINE_EXAMPLES`` (default 20) / ``MEMDB_LAYER_MACHINE_STEPS`` (default 30);
``MEMDB_LAYER_MACHINE_ONLY=group,...`` / ``MEMDB_LAYER_MACHINE_SKIP=group,...`` run some
groups of rules only (see ``GROUPS``), to find one class of bugs at a time: Hypothesis
reports the simplest failure, and one class found early hides the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import factory
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule, run_state_machine_as_test
from sqlalchemy import Integer, MetaData, String, create_engine, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.config import Target
from pytest_memdb.core.layers import MemdbLayer, Writer
from pytest_memdb.core.registry import MemdbRegistry
from pytest_memdb.errors import MemdbError
from pytest_memdb.integrations.factory_binding import FactoryBinding
from pytest_memdb.sqlite import pages
from tests.helpers import make_sqlite
from tests.test_isolation_machine import (
    ACTIONS,
    BUSY_TIMEOUT_S,
    MODES,
    MULTIPLE,
    OWN_TIMEOUT_S,
    TRACE,
    VIAS,
    Hang,
    IsolationError,
    IsolationMachine,
    bounded,
    raw_snapshot,
    snapshot,
)

EXAMPLES = int(
    os.environ.get("MEMDB_LAYER_MACHINE_EXAMPLES", os.environ.get("MEMDB_MACHINE_EXAMPLES", "20"))
)
STEPS = int(
    os.environ.get("MEMDB_LAYER_MACHINE_STEPS", os.environ.get("MEMDB_MACHINE_STEPS", "30"))
)
SCOPES = ("session", "module", "class")
LAYER_VIAS = ("sync_session", "session", "engine", "sync_engine", "url")
GROUPS = (
    "steps",
    "layers",
    "failed",
    "fnfixture",
    "illegal",
    "reset",
    "bind",
    "factories",
    "driver",
    "journal",
    "bypass",
    "schema",
    "fault",
    "outlive",
    "empty",
)
_ONLY = {g for g in os.environ.get("MEMDB_LAYER_MACHINE_ONLY", "").split(",") if g}
_SKIP = {g for g in os.environ.get("MEMDB_LAYER_MACHINE_SKIP", "").split(",") if g}
assert not (_ONLY | _SKIP) - set(GROUPS), f"unknown rule groups: {(_ONLY | _SKIP) - set(GROUPS)}"


def on(group: str) -> bool:
    """Whether a group of rules runs (``MEMDB_LAYER_MACHINE_ONLY=a,b`` / ``..._SKIP=a,b``:
    to measure one class of bugs at a time; "failed", "fnfixture" and "illegal" bring
    "layers" with them)."""
    if group in _SKIP:
        return False
    needs_layers = bool({"failed", "fnfixture", "illegal"} & _ONLY)
    return not _ONLY or group in _ONLY or (group == "layers" and needs_layers)


WAIT_S = 5.0
"""How long the machine waits for work it started in a thread or task."""


# --- adapters: every way the machine touches the core's layer / test-boundary API -------
# Re-point these (and only these) when that API changes.


@dataclass
class OpenTest:
    """One open test, as the plugin's ``memdb`` fixture holds it."""

    handle: Any
    layer: MemdbLayer | None
    registry: MemdbRegistry


_pending: list[str] = []
"""Problems the boundary checks found around a fixture's set-up, reported as the plugin
reports them: by the test they belong to (its set-up fails)."""
_writers = iter(range(1, 1 << 30))


def _asked_all(registry: MemdbRegistry) -> tuple[frozenset[Writer], str]:
    """The machine's tests ask for every scoped fixture of their stack (it models no subsets)."""
    return registry.layers.writers(), "a machine test"


def make_layer(
    registry: MemdbRegistry, target: Target, scope: str, parent: MemdbLayer | None
) -> MemdbLayer:
    """A layer fixture's set-up (``memdb_suite`` / ``memdb_module`` / ``memdb_class``), as
    plugin.py's ``open_layer`` makes it."""
    return registry.layer(
        lambda: target, scope, f"machine-{scope}", parent, lambda: _asked_all(registry)
    )


def close_layer(registry: MemdbRegistry, layer: MemdbLayer) -> None:
    """The layer fixture's teardown (the end of its scope)."""
    registry.close_layer(layer)


@contextlib.contextmanager
def scoped_fixture(registry: MemdbRegistry, layer: MemdbLayer) -> Iterator[MemdbLayer]:
    """A scoped fixture's set-up writing to ``layer`` (of the layer's scope); an exception in
    the body is the fixture failing (it propagates), as plugin.py's boundary hook sees it."""
    writer = Writer(f"machine_fixture_{next(_writers)}")
    with registry.layers.fixture(writer, layer.scope) as watch:
        yield layer
    _pending.extend(watch.problems)


@contextlib.contextmanager
def function_fixture(registry: MemdbRegistry, layer: MemdbLayer | None) -> Iterator[None]:
    """A function-scoped fixture's set-up that asks for a layer, before the test takes
    ``memdb``."""
    with registry.layers.fixture(Writer("machine_function_fixture"), "function") as watch:
        yield
    _pending.extend(watch.problems)


def open_test(registry: MemdbRegistry, target: Target, layer: MemdbLayer | None) -> OpenTest:
    """The ``memdb`` fixture's set-up: the boundary check at the start of a test, then the
    test's database on the innermost layer."""
    problems = [*_pending, *registry.layers.check("something before this test")]
    _pending.clear()
    if problems:
        raise MemdbError("\n".join(problems))
    asked, test = _asked_all(registry)
    handle = registry.open(target, layer, asked=asked, test=test)
    return OpenTest(handle, layer, registry)


def end_test(opened: OpenTest) -> None:
    """The ``memdb`` fixture's teardown, then the boundary check at the end of the test
    (pytest reports both; here the teardown's own error comes first)."""
    try:
        opened.handle.close()
    except BaseException:
        opened.registry.layers.check("the test")  # the layers are put back all the same
        raise
    problems = opened.registry.layers.check("the test")
    if problems:
        raise MemdbError("\n".join(problems))


# --- what the steps use ---------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    email: Mapped[str | None] = mapped_column(String, nullable=True)


class SyncUserFactory(factory.alchemy.SQLAlchemyModelFactory):
    class Meta:
        model = User
        sqlalchemy_session_persistence = "commit"

    name = factory.Sequence(lambda n: f"fs{n}")


class AsyncUserFactory(factory.alchemy.SQLAlchemyModelFactory):
    class Meta:
        model = User
        sqlalchemy_session_persistence = None  # the test commits the AsyncSession

    name = factory.Sequence(lambda n: f"fa{n}")


APP_NAME = "memdb_machine_app"
APP_PATHS = (f"{APP_NAME}:engine", f"{APP_NAME}:sync_engine")


def make_app(real: Path) -> types.ModuleType:
    """The app module memdb_bind binds: global engines and sessionmakers on its own database."""
    app = types.ModuleType(APP_NAME)
    app.engine = create_async_engine(f"sqlite+aiosqlite:///{real}")  # type: ignore[attr-defined]
    app.sync_engine = create_engine(f"sqlite:///{real}")  # type: ignore[attr-defined]
    app.SessionLocal = async_sessionmaker(app.engine, expire_on_commit=False)  # type: ignore[attr-defined]
    app.SyncSessionLocal = sessionmaker(app.sync_engine)  # type: ignore[attr-defined]
    app.empty_metadata = MetaData()  # type: ignore[attr-defined]  # an empty template's
    sys.modules[APP_NAME] = app
    return app


class InjectedTimeout(BaseException):
    """A fault the machine armed inside a restore (a BaseException, like pytest's
    ``Failed`` that pytest-timeout raises from its signal handler)."""


class Fault:
    """A one-shot fault in the page restore: after ``after`` page writes, raise."""

    armed: int | None = None
    fired = 0

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch) -> None:
        original = pages.Watched._put_back

        def put_back(watched: Any, source: int, header: bytes) -> None:
            after, cls.armed = cls.armed, None
            if after is None:
                return original(watched, source, header)
            memdb = watched._vfs.memdb
            write = memdb.write
            done = [0]

            def faulty(*args: Any) -> int:
                if done[0] >= after:
                    cls.fired += 1
                    raise InjectedTimeout(
                        f"injected: a timeout inside the restore of {watched.name}"
                    )
                done[0] += 1
                result: int = write(*args)
                return result

            memdb.write = faulty
            try:
                original(watched, source, header)
            finally:
                memdb.write = write

        monkeypatch.setattr(pages.Watched, "_put_back", put_back)


@dataclass
class LayerState:
    scope: str
    layer: MemdbLayer
    ops: list[tuple[str, Any]] = field(default_factory=list)
    """The legitimate scoped fixtures' writes: ("insert", row) or ("rename_min", name)."""


@dataclass
class Outliver:
    """Work a test started that writes after the test ended (when the next one began)."""

    owner: int
    kind: str
    gate: threading.Event
    done: threading.Event
    task: Any = None


def user_rows(fetch: Callable[[str], list[Any]]) -> dict[int, tuple[Any, ...]]:
    return {r[0]: tuple(r) for r in fetch("SELECT * FROM user")}


class LayerMachine(IsolationMachine):
    app: types.ModuleType
    app_real: Path

    def __init__(self) -> None:
        super().__init__()
        _pending.clear()  # one example's boundary problems are not the next one's
        self.stack: list[LayerState] = []
        self.illegal_pending = ""
        """An illegal layer write (a function fixture's) since the last test boundary."""
        self.illegal_in_test = ""
        self.test_stack: list[LayerState] = []
        self.opened: OpenTest | None = None
        self.want_bind = False
        self.want_factories: str | None = None
        self.bound_exit: contextlib.ExitStack | None = None
        self.binding: FactoryBinding | None = None
        self.fixture_sessions: tuple[Any, Any] | None = None
        self.binder = self.registry.binder(APP_PATHS, "machine memdb_bind")
        self.app_expected = raw_snapshot(f"file:{self.app_real}?mode=ro")
        self.kept: dict[str, Any] = {}
        """Sync engines kept across tests, by working database name (an app's engine)."""
        self.outliving: list[Outliver] = []
        self.own_touched = False
        self.fault_armed = False
        Fault.armed = None
        con = sqlite3.connect(f"file:{self.source}?mode=ro", uri=True)
        try:
            self.template_rows = user_rows(lambda sql: con.execute(sql).fetchall())
        finally:
            con.close()
        self.empty_targets = {
            mode: Target(
                file=None,
                file_origin="",
                isolation=mode,
                metadata=f"{APP_NAME}:empty_metadata",
                metadata_origin="machine (a template with no tables)",
            )
            for mode in ("copy", "rollback")
        }

    # --- the expected content ---------------------------------------------------------

    def _stack_rows(self, stack: list[LayerState]) -> dict[int, tuple[Any, ...]]:
        rows = dict(self.template_rows)
        for state in stack:
            for op, value in state.ops:
                if op == "insert":
                    rows[value[0]] = value
                elif op == "rename_min" and rows:
                    low = min(rows)
                    rows[low] = (low, value, *rows[low][2:])
        return rows

    def _expected_for(self, stack: list[LayerState]) -> dict[str, Any]:
        rows = self._stack_rows(stack)
        return {
            **self.expected,
            "rows": {**self.expected["rows"], "user": sorted(repr(r) for r in rows.values())},
        }

    def _expected_at_start(self, mode: str) -> dict[str, Any] | None:
        if mode == "session":
            return None if self.test_stack else super()._expected_at_start(mode)
        return self._expected_for(self.test_stack)

    def _records_session(self) -> bool:
        return not self.test_stack

    # --- layers and scoped fixtures ---------------------------------------------------

    @precondition(
        lambda self: on("layers") and self.handle is None and len(self.stack) < len(SCOPES)
    )
    @rule()
    def push_layer(self) -> None:
        scope = SCOPES[len(self.stack)]
        parent = self.stack[-1].layer if self.stack else None
        with bounded(f"make the {scope} layer"):
            layer = make_layer(self.registry, self.targets["copy"], scope, parent)
        self.stack.append(LayerState(scope, layer))

    @precondition(lambda self: on("layers") and self.handle is None and bool(self.stack))
    @rule()
    def pop_layer(self) -> None:
        state = self.stack.pop()
        with bounded(f"close the {state.scope} layer"):
            close_layer(self.registry, state.layer)

    @precondition(lambda self: self.handle is None and bool(self.stack))
    @rule(
        via=st.sampled_from(LAYER_VIAS),
        rename=st.booleans(),
        fail=st.booleans() if on("failed") else st.just(False),
    )
    def scoped_fixture_writes(self, via: str, rename: bool, fail: bool) -> None:
        """A scoped fixture of the innermost scope writes its data (and maybe then raises)."""
        state = self.stack[-1]
        n = self._next()
        row = (100000 + n, f"L{n}", f"l{n}@layer")
        statements = [
            (
                "INSERT INTO user (id, name, email) VALUES (:id, :name, :email)",
                {"id": row[0], "name": row[1], "email": row[2]},
            ),
        ]
        if rename:
            statements.append(
                (
                    "UPDATE user SET name = :name WHERE id = (SELECT min(id) FROM user)",
                    {"name": f"R{n}"},
                )
            )
        where = f"{state.scope} fixture writes via {via}{' then fails' if fail else ''}"
        with bounded(where):
            try:
                with scoped_fixture(self.registry, state.layer) as layer:
                    _write_layer(layer, via, statements)
                    if fail:
                        raise FixtureFailed(where)
            except FixtureFailed:
                return
        state.ops.append(("insert", row))
        if rename:
            state.ops.append(("rename_min", f"R{n}"))

    @precondition(lambda self: on("fnfixture") and self.handle is None and bool(self.stack))
    @rule(via=st.sampled_from(LAYER_VIAS), level=st.integers(0, 2))
    def function_fixture_writes_layer(self, via: str, level: int) -> None:
        """A function-scoped fixture of the next test writes to a layer (illegal)."""
        state = self.stack[min(level, len(self.stack) - 1)]
        n = self._next()
        where = f"function fixture writes the {state.scope} layer via {via}"
        with bounded(where), function_fixture(self.registry, self.stack[-1].layer):
            _write_layer(state.layer, via, [(f"INSERT INTO user (name) VALUES ('F{n}')", {})])
        self.illegal_pending = where

    @precondition(
        lambda self: (
            on("illegal") and self.handle is not None and bool(self.test_stack) and not self.blocked
        )
    )
    @rule(via=st.sampled_from(LAYER_VIAS), level=st.integers(0, 2))
    def test_writes_layer(self, via: str, level: int) -> None:
        """The test writes to a layer of its stack itself (illegal)."""
        state = self.test_stack[min(level, len(self.test_stack) - 1)]
        n = self._next()
        where = f"test {self.test_no} writes the {state.scope} layer via {via}"
        with bounded(where):
            _write_layer(state.layer, via, [(f"INSERT INTO user (name) VALUES ('T{n}')", {})])
        self.illegal_in_test = where

    # --- tests ------------------------------------------------------------------------

    @precondition(lambda self: self.handle is None)
    @rule(
        mode=st.sampled_from(MODES),
        look=st.sampled_from([True, False]),
        connect_listener=st.booleans(),
        commit_check=st.booleans(),
        planned=st.integers(0, 6) if on("steps") else st.just(0),
        bind=st.booleans() if on("bind") else st.just(False),
        factories=st.sampled_from([None, "sync", "async"]) if on("factories") else st.none(),
    )
    def start_test(
        self,
        mode: str,
        look: bool,
        connect_listener: bool,
        commit_check: bool,
        planned: int,
        bind: bool,
        factories: str | None,
    ) -> None:
        self.want_bind, self.want_factories = bind, factories
        self.illegal_in_test = ""
        self.own_touched = False
        IsolationMachine.start_test(self, mode, look, connect_listener, commit_check, planned)
        if self.handle is not None:
            with bounded(f"test {self.test_no}: fixtures"):
                self._set_up_fixtures()
            name = self.handle.database.name
            if name not in self.kept:
                self.kept[name] = create_engine(
                    self.handle.sync_url,
                    connect_args={"timeout": OWN_TIMEOUT_S, "check_same_thread": False},
                )

    def _open_test(self, mode: str) -> Any:
        layer = self.stack[-1].layer if self.stack else None
        self.test_stack = list(self.stack)
        illegal, self.illegal_pending = self.illegal_pending, ""
        try:
            self.opened = open_test(self.registry, self.targets[mode], layer)
        except MemdbError as exc:  # the plugin turns it into the test's error
            if not illegal:
                raise AssertionError(
                    f"test {self.test_no} ({mode}): opening it raised {exc}"
                ) from exc
            return None
        except InjectedTimeout:
            if not self.fault_armed:
                raise
            self.fault_armed = False
            return None
        return self.opened.handle

    def _set_up_fixtures(self) -> None:
        handle = self.handle
        if self.want_factories is not None:
            sync_session = handle.sync_session()  # memdb_sync_session
            async_session = handle.session()  # memdb_session
            self.fixture_sessions = (sync_session, async_session)
            self.binding = FactoryBinding(
                "sync" if self.want_factories == "sync" else "async",
                sync_session=lambda: sync_session,
                async_session=lambda: async_session,
            )
            self.binding.bind(
                SyncUserFactory if self.want_factories == "sync" else AsyncUserFactory
            )
        if self.want_bind:
            self.bound_exit = contextlib.ExitStack()
            self.bound_exit.enter_context(self.binder.bound(handle))

    def _tear_down_fixtures(self) -> None:
        if self.bound_exit is not None:
            exit_stack, self.bound_exit = self.bound_exit, None
            exit_stack.close()
        if self.binding is not None:
            binding, self.binding = self.binding, None
            binding.restore()
        if self.fixture_sessions is not None:
            sync_session, async_session = self.fixture_sessions
            self.fixture_sessions = None
            with contextlib.suppress(Exception):
                sync_session.close()
            with contextlib.suppress(Exception):
                run_sync(async_session.close())

    def _opened(self, where: str) -> None:
        """Work earlier tests left running writes now, after this test's database was made
        equal (pytest would be running this test's set-up or body meanwhile)."""
        late, self.outliving = self.outliving, []
        for work in late:
            work.gate.set()
            if work.task is not None:
                run_sync(_wait_task(work.task))
            else:
                work.done.wait(WAIT_S)
        seen_app = raw_snapshot(f"file:{self.app_real}?mode=ro")
        assert seen_app == self.app_expected, f"{where}: the app's own database was written"

    def _close_test(self, handle: Any) -> BaseException | None:
        reported: BaseException | None = None
        try:
            self._tear_down_fixtures()
        except Hang:
            raise
        except Exception as exc:
            reported = AssertionError(f"a fixture's teardown failed: {exc!r}")
            reported.__cause__ = exc
        opened, self.opened = self.opened, None
        assert opened is not None
        assert opened.handle is handle
        try:
            end_test(opened)
        except Hang:
            raise
        except (Exception, InjectedTimeout) as exc:
            reported = reported or exc
        if reported is None and self.fault_armed and Fault.armed is None:
            raise AssertionError("a fault fired inside the restore and close() said nothing")
        return reported

    def _close_error_allowed(self, reported: BaseException) -> bool:
        if isinstance(reported, InjectedTimeout) and self.fault_armed:
            self.fault_armed = False
            return True
        if (
            isinstance(reported, MemdbError)
            and self.illegal_in_test
            and "wrote to the" in str(reported)
        ):
            return True
        return super()._close_error_allowed(reported)

    def _run_via(self, via: str, action: str, n: int, commit: bool, keep: bool) -> Any:
        if via not in ("async_session", "sync_session"):
            self.own_touched = True
        return super()._run_via(via, action, n, commit, keep)

    def _check_connection_state(self, where: str) -> None:
        super()._check_connection_state(where)
        expected = self._expected_at_start(self.mode)
        count = len(self._stack_rows(self.test_stack))
        self._check_fresh_sync(where, expected, count)
        run_sync(self._check_fresh_async(where, expected, count))
        kept = self.kept.get(self.handle.database.name)
        if kept is not None and self.mode == "copy":  # rollback: the outer transaction's
            # locks make an outside connection wait (README, "What to know about rollback")
            with kept.connect() as conn:
                seen = snapshot(lambda sql: conn.exec_driver_sql(sql).fetchall())
            assert seen == expected, f"{where}: content via an engine kept across tests"

    def _check_fresh_sync(self, where: str, expected: Any, count: int) -> None:
        engine = self.handle.sync_engine
        wanted = _pooled(engine.pool) + 1
        with contextlib.ExitStack() as stack:
            conns = [stack.enter_context(engine.connect()) for _ in range(wanted)]
            for i, conn in enumerate(conns):
                label = f"{where}: sync pooled connection {i}"
                try:
                    _fresh(conn.exec_driver_sql, label, expected, rows=True)
                    conn.exec_driver_sql(f"INSERT INTO user (name) VALUES ('rolled{i}')")
                    conn.rollback()
                    seen = conn.exec_driver_sql("SELECT count(*) FROM user").scalar()
                    conn.rollback()
                except AssertionError:
                    raise
                except Exception as exc:
                    raise AssertionError(f"{label}: failed: {exc!r}") from exc
                assert seen == count, f"{label}: a rolled-back insert stayed ({seen} != {count})"

    async def _check_fresh_async(self, where: str, expected: Any, count: int) -> None:
        engine = self.handle.engine
        wanted = _pooled(engine.sync_engine.pool) + 1
        async with contextlib.AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(engine.connect()) for _ in range(wanted)]
            for i, conn in enumerate(conns):
                label = f"{where}: async pooled connection {i}"
                try:
                    await conn.run_sync(_fresh_on, label, expected)
                    await conn.exec_driver_sql(f"INSERT INTO user (name) VALUES ('arolled{i}')")
                    await conn.rollback()
                    seen = (await conn.exec_driver_sql("SELECT count(*) FROM user")).scalar()
                    await conn.rollback()
                except AssertionError:
                    raise
                except Exception as exc:
                    raise AssertionError(f"{label}: failed: {exc!r}") from exc
                assert seen == count, f"{label}: a rolled-back insert stayed ({seen} != {count})"

    @precondition(lambda self: on("steps") and self.handle is not None and not self.blocked)
    @rule(
        via=st.sampled_from(VIAS),
        action=st.sampled_from(ACTIONS),
        commit=st.booleans(),
        keep=st.booleans(),
    )
    def step(self, via: str, action: str, commit: bool, keep: bool) -> None:
        """The base machine's steps (SQL of every kind through every way in)."""
        IsolationMachine.step(self, via, action, commit, keep)

    # --- reset ------------------------------------------------------------------------

    @precondition(lambda self: on("reset") and self.handle is not None and not self.blocked)
    @rule(asynchronous=st.booleans(), write_first=st.booleans())
    def reset(self, asynchronous: bool, write_first: bool) -> None:
        handle = self.handle
        n = self._next()
        where = f"test {self.test_no} ({self.mode}) {'a' if asynchronous else ''}reset"
        with bounded(where):
            if write_first:
                with contextlib.suppress(Exception), handle.sync_sessionmaker() as session:
                    session.execute(text(f"INSERT INTO user (name) VALUES ('pre{n}')"))
                    session.commit()
            handed = self._handed_out()
            try:
                if asynchronous:
                    run_sync(handle.areset())
                else:
                    handle.reset()
            except InjectedTimeout:
                if not self.fault_armed:
                    raise
                self.fault_armed = False
                self.blocked = True  # the test errors: its teardown comes next
                return
            except MemdbError as exc:
                isolation = IsolationError is not None and isinstance(exc, IsolationError)
                if isolation and self.mode == "rollback" and self.escape_possible:
                    self.escape_possible, self.escape_certain = False, ""
                    return  # begun again: the rest of the test goes on (not checked here)
                if "could not restore" in str(exc) and self.own_touched:
                    self.blocked = True
                    return
                raise AssertionError(f"{where}: raised {exc!r}") from exc
            if IsolationError is not None and self.escape_certain:
                raise AssertionError(
                    f"{where}: the test ended its outer transaction ({self.escape_certain}) "
                    "and the reset reported nothing"
                )
            self.escape_possible, self.escape_certain = False, ""
            expected = self._expected_for(self.test_stack)
            for label, fetch_snapshot, _write in handed:
                try:
                    seen = fetch_snapshot()
                except Exception as exc:
                    raise AssertionError(
                        f"{where}: {label} fails after the reset: {exc!r}"
                    ) from exc
                assert seen == expected, f"{where}: {label} after the reset"
            # session mode keeps per-connection state by design (a PRAGMA query_only a step
            # set stays on its pooled connection), a reset included: reads only there
            for label, _fetch, write in handed if self.mode != "session" else []:
                name = f"h{n}_{label.split()[0]}"
                try:
                    write(name)
                except Exception as exc:
                    raise AssertionError(
                        f"{where}: writing through {label} fails after the reset: {exc!r}"
                    ) from exc
                with handle.sync_engine.connect() as conn:
                    found = conn.exec_driver_sql(
                        f"SELECT count(*) FROM user WHERE name = '{name}'"
                    ).scalar()
                assert found == 1, (
                    f"{where}: what {label} wrote after the reset is not in the test's database"
                )

    def _handed_out(self) -> list[tuple[str, Callable[[], Any], Callable[[str], None]]]:
        """Objects handed out before a reset: how to read a snapshot through each, and to
        write a row (committed) through each."""
        handle = self.handle
        async_engine, sync_engine = handle.engine, handle.sync_engine
        maker, sync_maker = handle.sessionmaker, handle.sync_sessionmaker
        found: list[tuple[str, Callable[[], Any], Callable[[str], None]]] = []

        def via_sync_engine(engine: Any) -> tuple[Callable[[], Any], Callable[[str], None]]:
            def read() -> Any:
                with engine.connect() as conn:
                    return snapshot(lambda sql: conn.exec_driver_sql(sql).fetchall())

            def write(name: str) -> None:
                with engine.begin() as conn:
                    conn.exec_driver_sql(f"INSERT INTO user (name) VALUES ('{name}')")

            return read, write

        def via_async_engine(engine: Any) -> tuple[Callable[[], Any], Callable[[str], None]]:
            async def aread() -> Any:
                async with engine.connect() as conn:
                    return await conn.run_sync(
                        lambda s: snapshot(lambda sql: s.exec_driver_sql(sql).fetchall())
                    )

            async def awrite(name: str) -> None:
                async with engine.begin() as conn:
                    await conn.exec_driver_sql(f"INSERT INTO user (name) VALUES ('{name}')")

            return (lambda: run_sync(aread())), (lambda name: run_sync(awrite(name)))

        def via_sync_maker(
            make: Callable[[], Any],
        ) -> tuple[Callable[[], Any], Callable[[str], None]]:
            def read() -> Any:
                with make() as session:
                    conn = session.connection()
                    seen = snapshot(lambda sql: conn.exec_driver_sql(sql).fetchall())
                    session.rollback()
                    return seen

            def write(name: str) -> None:
                with make() as session:
                    session.execute(text(f"INSERT INTO user (name) VALUES ('{name}')"))
                    session.commit()

            return read, write

        def via_async_maker(
            make: Callable[[], Any],
        ) -> tuple[Callable[[], Any], Callable[[str], None]]:
            async def aread() -> Any:
                async with make() as session:
                    conn = await session.connection()
                    seen = await conn.run_sync(
                        lambda s: snapshot(lambda sql: s.exec_driver_sql(sql).fetchall())
                    )
                    await session.rollback()
                    return seen

            async def awrite(name: str) -> None:
                async with make() as session:
                    await session.execute(text(f"INSERT INTO user (name) VALUES ('{name}')"))
                    await session.commit()

            return (lambda: run_sync(aread())), (lambda name: run_sync(awrite(name)))

        found.append(("handle.engine (before)", *via_async_engine(async_engine)))
        found.append(("handle.sync_engine (before)", *via_sync_engine(sync_engine)))
        found.append(("handle.sessionmaker (before)", *via_async_maker(maker)))
        found.append(("handle.sync_sessionmaker (before)", *via_sync_maker(sync_maker)))
        if self.bound_exit is not None:
            app = self.app
            # The app reads its globals when it runs: look them up then, as it would.
            found.append(("app.engine (bound)", *via_async_engine_lazy(app, "engine")))
            found.append(("app.sync_engine (bound)", *via_sync_engine_lazy(app, "sync_engine")))
            found.append(("app.SessionLocal (bound)", *via_async_maker(lambda: app.SessionLocal())))
            found.append(
                ("app.SyncSessionLocal (bound)", *via_sync_maker(lambda: app.SyncSessionLocal()))
            )
        if self.binding is not None and self.fixture_sessions is not None:
            found.append(("factory (bound)", self._factory_read, self._factory_write))
        return found

    def _factory_read(self) -> Any:
        sync_session, async_session = self.fixture_sessions  # type: ignore[misc]
        if self.want_factories == "sync":
            conn = sync_session.connection()
            seen = snapshot(lambda sql: conn.exec_driver_sql(sql).fetchall())
            sync_session.rollback()
            return seen

        async def aread() -> Any:
            conn = await async_session.connection()
            seen = await conn.run_sync(
                lambda s: snapshot(lambda sql: s.exec_driver_sql(sql).fetchall())
            )
            await async_session.rollback()
            return seen

        return run_sync(aread())

    def _factory_write(self, name: str) -> None:
        _sync_session, async_session = self.fixture_sessions  # type: ignore[misc]
        if self.want_factories == "sync":
            SyncUserFactory.create(name=name)
        else:
            AsyncUserFactory.create(name=name)
            run_sync(async_session.commit())

    # --- memdb_bind and factories -----------------------------------------------------

    @precondition(
        lambda self: self.handle is not None and not self.blocked and self.bound_exit is not None
    )
    @rule(via=st.sampled_from(["SessionLocal", "SyncSessionLocal", "engine", "sync_engine"]))
    def app_writes(self, via: str) -> None:
        app, n = self.app, self._next()
        sql = f"INSERT INTO user (name) VALUES ('app{n}')"
        with bounded(f"test {self.test_no}: the app writes via {via}"):
            with contextlib.suppress(Exception):
                if via == "SyncSessionLocal":
                    with app.SyncSessionLocal() as session:
                        session.execute(text(sql))
                        session.commit()
                elif via == "sync_engine":
                    with app.sync_engine.begin() as conn:
                        conn.exec_driver_sql(sql)
                else:
                    run_sync(_app_async_write(app, via, sql))

    @precondition(
        lambda self: self.handle is not None and not self.blocked and self.binding is not None
    )
    @rule(count=st.integers(1, 3))
    def factory_creates(self, count: int) -> None:
        sync_session, async_session = self.fixture_sessions  # type: ignore[misc]
        with bounded(f"test {self.test_no}: factory creates {count}"):
            try:
                if self.want_factories == "sync":
                    SyncUserFactory.create_batch(count)
                else:
                    AsyncUserFactory.create_batch(count)
                    run_sync(async_session.commit())
            except Hang:
                raise
            except Exception:  # the user table may be gone (a step dropped it)
                with contextlib.suppress(Exception):
                    sync_session.rollback()
                with contextlib.suppress(Exception):
                    run_sync(async_session.rollback())

    # --- driver connection state ------------------------------------------------------

    @precondition(lambda self: on("driver") and self.handle is not None and not self.blocked)
    @rule(
        engine=st.sampled_from(["sync", "async", "aiosqlite"]),
        what=st.sampled_from(
            [
                "row_factory",
                "text_factory",
                "isolation_level",
                "autocommit",
                "deserialize",
                "setlimit",
                "create_function",
                "close",
            ]
        ),
    )
    def driver_state(self, engine: str, what: str) -> None:
        """Change the sqlite3 connection under a pooled connection and give it back."""
        where = f"test {self.test_no} ({self.mode}) driver {what} via {engine}"
        if self.mode == "rollback":  # on the shared connection: setting isolation_level
            self.escape_possible = True  # commits, close() and deserialize() end it
        with bounded(where):
            try:
                if engine == "sync":
                    with self.handle.sync_engine.connect() as conn:
                        conn.exec_driver_sql("SELECT 1").all()
                        conn.rollback()
                        _driver_change(conn.connection.driver_connection, what)
                else:
                    run_sync(_async_driver_state(self.handle.engine, engine, what))
            except Hang:
                raise
            except Exception as exc:
                if TRACE:
                    print(f"        driver step failed: {exc!r:.150}", file=sys.stderr)

    # --- journal modes, the page-recording VFS, the schema cookie ----------------------

    @precondition(lambda self: on("journal") and self.handle is not None and not self.blocked)
    @rule(
        journal=st.sampled_from(["OFF", "MEMORY", "DELETE", "TRUNCATE", "PERSIST", "WAL", None]),
        via=st.sampled_from(["handle", "raw", "bypass"]),
        end=st.sampled_from(["ROLLBACK", "COMMIT"]),
        grow=st.booleans(),
    )
    def big_write(self, journal: str | None, via: str, end: str, grow: bool) -> None:
        """A write bigger than a tiny page cache (it spills), in a journal mode, ended; in
        place (the template's ``blob`` pages, page 1 untouched) or growing the file."""
        handle = self.handle
        n = self._next()
        where = f"test {self.test_no} ({self.mode}) big write journal={journal} via {via} {end}"
        statements = [
            "PRAGMA cache_size = 2",
            *([f"PRAGMA journal_mode = {journal}"] if journal else []),
            "BEGIN",
            "UPDATE blob SET data = randomblob(length(data))",
            *(
                [
                    f"INSERT INTO user (name, email) SELECT 'big{n}_' || x, hex(randomblob(300)) "
                    "FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                    "WHERE x < 200) SELECT x FROM c)",
                    "UPDATE user SET email = hex(randomblob(200))",
                ]
                if grow
                else []
            ),
            end,
        ]
        if via != "handle":
            self.own_touched = True
        elif self.mode == "rollback":  # BEGIN ... ROLLBACK as text on the shared connection
            self.escape_possible = True
        with bounded(where):
            if via == "handle":
                with handle.sync_engine.connect() as conn:
                    dbapi = conn.connection.driver_connection
                    _run_raw(dbapi, statements, driver_transactions=True)
                    conn.rollback()
                return
            uri = (
                handle.database.sqlite_uri
                if via == "raw"
                else f"file:/{handle.database.name}?vfs=memdb"
            )
            raw = sqlite3.connect(
                uri, uri=True, timeout=OWN_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            try:
                _run_raw(raw, statements, driver_transactions=False)
            finally:
                raw.close()

    @precondition(lambda self: on("bypass") and self.handle is not None and not self.blocked)
    @rule(commit=st.booleans())
    def bypass_write(self, commit: bool) -> None:
        """A small write around the page-recording VFS (``vfs=memdb`` on the same name)."""
        handle, n = self.handle, self._next()
        self.own_touched = True
        with bounded(f"test {self.test_no} bypass write commit={commit}"):
            raw = sqlite3.connect(
                f"file:/{handle.database.name}?vfs=memdb",
                uri=True,
                timeout=OWN_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                _run_raw(
                    raw,
                    [
                        "BEGIN",
                        f"UPDATE user SET name = 'by{n}' WHERE id = (SELECT min(id) FROM user)",
                        "COMMIT" if commit else "ROLLBACK",
                    ],
                    driver_transactions=False,
                )
            finally:
                raw.close()

    @precondition(
        lambda self: (
            on("schema")
            and self.handle is not None
            and not self.blocked
            and self.handle.database.name in self.kept
        )
    )
    @rule(through_handle=st.booleans())
    def schema_rewind(self, through_handle: bool) -> None:
        """DDL, then ``PRAGMA schema_version`` set back, through the engine kept across tests
        (and a handle connection that read the schema in between)."""
        n = self._next()
        self.own_touched = True
        where = f"test {self.test_no} ({self.mode}) schema_version rewound"
        with bounded(where), contextlib.suppress(Exception):
            with self.kept[self.handle.database.name].connect() as conn:
                before = conn.exec_driver_sql("PRAGMA schema_version").scalar()
                conn.exec_driver_sql(f"ALTER TABLE user ADD COLUMN k{n} TEXT")
                conn.commit()
                conn.exec_driver_sql("SELECT * FROM user").all()
                if through_handle:
                    with self.handle.sync_engine.connect() as other:
                        other.exec_driver_sql("SELECT * FROM user").all()
                        other.rollback()
                conn.exec_driver_sql(f"PRAGMA schema_version = {before}")
                conn.commit()
                conn.exec_driver_sql("SELECT * FROM user").all()
                conn.rollback()

    # --- interrupted teardowns, work that outlives its test ----------------------------

    @precondition(
        lambda self: (
            on("fault")
            and self.handle is not None
            and self.mode != "session"
            and not self.fault_armed
            and self.handle.database.restores_pages
        )
    )
    @rule(after=st.integers(0, 2))
    def arm_restore_fault(self, after: int) -> None:
        """The next page restore raises after ``after`` page writes (a timeout firing)."""
        Fault.armed = after
        self.fault_armed = True

    @precondition(lambda self: on("outlive") and self.handle is not None and self.mode != "session")
    @rule(
        kind=st.sampled_from(["thread", "task"]),
        # Not the database's name (sqlite_uri): the README lists work that outlives its
        # test through memdb.name, memdb.url or the engines as out of reach.
        via=st.just("sessionmaker"),  # a thread: memdb.sync_sessionmaker; a task: the async one
    )
    def outlive(self, kind: str, via: str) -> None:
        """Start work that writes once this test is over (when the next one has begun)."""
        handle, n = self.handle, self._next()
        gate, done = threading.Event(), threading.Event()
        work = Outliver(self.test_no, kind, gate, done)
        sql = f"INSERT INTO user (name) VALUES ('late{n}')"
        if kind == "thread":
            sync_maker = handle.sync_sessionmaker

            def body() -> None:
                try:
                    if not gate.wait(WAIT_S * 4) or getattr(work, "cancelled", False):
                        return
                    with sync_maker() as session:
                        session.execute(text(sql))
                        session.commit()
                except Exception:
                    pass
                finally:
                    done.set()

            threading.Thread(target=body, name=f"machine-outlive-{n}", daemon=True).start()
        else:
            maker = handle.sessionmaker

            async def body_async() -> None:
                try:
                    while not gate.is_set():
                        await asyncio.sleep(0.001)
                    if getattr(work, "cancelled", False):
                        return
                    async with maker() as session:
                        await session.execute(text(sql))
                        await session.commit()
                except Exception:
                    pass
                finally:
                    done.set()

            async def spawn() -> Any:
                return asyncio.get_running_loop().create_task(body_async())

            work.task = run_sync(spawn())
        self.outliving.append(work)

    # --- an empty template --------------------------------------------------------------

    @precondition(lambda self: on("empty") and self.handle is None and not self.fault_armed)
    @rule(mode=st.sampled_from(["copy", "rollback"]), write=st.booleans())
    def empty_template_test(self, mode: str, write: bool) -> None:
        """A whole test on a template with no tables: it starts empty, and so does the next."""
        self.test_no += 1
        where = f"test {self.test_no} ({mode}) on an empty template"
        with bounded(where):
            handle = self.registry.open(self.empty_targets[mode])
            try:
                seen = raw_snapshot(handle.database.sqlite_uri)
                assert seen["sqlite_master"] == [] and seen["rows"] == {}, f"{where}: {seen}"
                if write:
                    with handle.sync_sessionmaker() as session:
                        session.execute(text("CREATE TABLE t (x)"))
                        session.execute(text("INSERT INTO t VALUES (1)"))
                        session.commit()
            finally:
                handle.close()

    # --- the end of one example -------------------------------------------------------

    def teardown(self) -> None:
        with bounded("layer machine teardown"):
            with contextlib.suppress(Exception):
                self._tear_down_fixtures()
            if self.opened is not None and self.handle is not None:
                opened, self.opened, self.handle = self.opened, None, None
                with contextlib.suppress(Exception, InjectedTimeout):
                    end_test(opened)
            Fault.armed = None
            for work in self.outliving:
                work.cancelled = True  # type: ignore[attr-defined]
                work.gate.set()
                if work.task is not None:
                    run_sync(_wait_task(work.task))
                else:
                    work.done.wait(WAIT_S)
            self.outliving = []
            while self.stack:
                with contextlib.suppress(Exception):
                    close_layer(self.registry, self.stack.pop().layer)
            for engine in self.kept.values():
                engine.dispose(close=False)
            self.kept = {}
        super().teardown()


class FixtureFailed(Exception):
    """A scoped fixture raising after it committed."""


def _write_layer(layer: MemdbLayer, via: str, statements: list[tuple[str, dict[str, Any]]]) -> None:
    """Write ``statements`` to a layer and commit, as a fixture would."""
    if via == "sync_session":
        with layer.sync_session() as session:
            for sql, params in statements:
                session.execute(text(sql), params)
            session.commit()
    elif via == "sync_engine":
        with layer.sync_engine.begin() as conn:
            for sql, params in statements:
                conn.execute(text(sql), params)
    elif via == "session":

        async def write() -> None:
            async with layer.session() as session:
                for sql, params in statements:
                    await session.execute(text(sql), params)
                await session.commit()

        run_sync(write())
    else:

        async def write_engine() -> None:
            own = via == "url"
            engine = (
                create_async_engine(layer.url, connect_args={"timeout": BUSY_TIMEOUT_S})
                if own
                else layer.engine
            )
            try:
                async with engine.begin() as conn:
                    for sql, params in statements:
                        await conn.execute(text(sql), params)
            finally:
                if own:
                    await engine.dispose()

        run_sync(write_engine())


def _pooled(pool: Any) -> int:
    """How many idle connections a pool holds (a StaticPool, rollback mode's: its one)."""
    checkedin = getattr(pool, "checkedin", None)
    return checkedin() if checkedin is not None else 0


def _fresh_on(sync: Any, label: str, expected: Any) -> None:
    """:func:`_fresh` on a sync ``Connection`` (what ``AsyncConnection.run_sync`` passes)."""
    _fresh(sync.exec_driver_sql, label, expected, rows=True)


def _fresh(fetch: Callable[[str], Any], label: str, expected: Any, *, rows: bool = False) -> None:
    """One connection behaves as a fresh one: tuples of str, the working database's data.
    (``rows``: ``fetch`` returns a result, whose rows are read here.)"""
    if rows:
        execute = fetch

        def fetch(sql: str) -> Any:
            return execute(sql).fetchall()

    rows_seen = fetch("SELECT 'x', 1")
    assert [tuple(r) for r in rows_seen] == [("x", 1)], f"{label}: SELECT 'x', 1 gave {rows_seen!r}"
    assert type(rows_seen[0][0]) is str, f"{label}: SELECT 'x', 1 gave {rows_seen!r}"
    if expected is not None:
        assert snapshot(fetch) == expected, f"{label}: content"


def _driver_change(dbapi: Any, what: str) -> None:
    """Change one thing on a driver connection (sqlite3, or the wrapper rollback mode gives)."""
    if what == "row_factory":
        dbapi.row_factory = lambda cursor, row: tuple(reversed(row))
    elif what == "text_factory":
        dbapi.text_factory = bytes
    elif what == "isolation_level":
        dbapi.isolation_level = None
    elif what == "autocommit":
        if sys.version_info >= (3, 12) and hasattr(dbapi, "autocommit"):
            dbapi.autocommit = True
        else:
            dbapi.isolation_level = None
    elif what == "deserialize":
        other = sqlite3.connect(":memory:")
        other.execute("CREATE TABLE user (id INTEGER PRIMARY KEY, name TEXT, email TEXT)")
        other.execute("INSERT INTO user (name) VALUES ('deserialized')")
        other.commit()
        data = other.serialize()
        other.close()
        dbapi.deserialize(data)
    elif what == "setlimit":
        dbapi.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 40)
    elif what == "create_function":
        dbapi.create_function("memdb_f", 1, lambda x: x)
    elif what == "close":
        dbapi.close()


async def _async_driver_state(engine: Any, layer: str, what: str) -> None:
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1")
        await conn.rollback()
        raw = await conn.get_raw_connection()
        aio = raw.driver_connection
        if layer == "aiosqlite" and what == "close":
            await aio.close()
        elif layer == "aiosqlite" and what in ("isolation_level", "row_factory", "text_factory"):
            _driver_change(aio, what)  # aiosqlite's setters pass it to the sqlite3 connection
        else:
            _driver_change(aio._conn, what)


async def _app_async_write(app: Any, via: str, sql: str) -> None:
    if via == "SessionLocal":
        async with app.SessionLocal() as session:
            await session.execute(text(sql))
            await session.commit()
    else:
        async with app.engine.begin() as conn:
            await conn.exec_driver_sql(sql)


def via_sync_engine_lazy(app: Any, name: str) -> tuple[Callable[[], Any], Callable[[str], None]]:
    def read() -> Any:
        with getattr(app, name).connect() as conn:
            return snapshot(lambda sql: conn.exec_driver_sql(sql).fetchall())

    def write(row: str) -> None:
        with getattr(app, name).begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO user (name) VALUES ('{row}')")

    return read, write


def via_async_engine_lazy(app: Any, name: str) -> tuple[Callable[[], Any], Callable[[str], None]]:
    async def aread() -> Any:
        async with getattr(app, name).connect() as conn:
            return await conn.run_sync(
                lambda s: snapshot(lambda sql: s.exec_driver_sql(sql).fetchall())
            )

    async def awrite(row: str) -> None:
        async with getattr(app, name).begin() as conn:
            await conn.exec_driver_sql(f"INSERT INTO user (name) VALUES ('{row}')")

    return (lambda: run_sync(aread())), (lambda row: run_sync(awrite(row)))


def _run_raw(dbapi: Any, statements: list[str], *, driver_transactions: bool) -> None:
    """Run statements on a driver connection; stop at the first that fails and roll back.
    ``driver_transactions``: the driver begins its own (leave BEGIN / the end to it)."""
    try:
        for sql in statements:
            if driver_transactions and sql == "BEGIN":
                continue
            if driver_transactions and sql in ("COMMIT", "ROLLBACK"):
                dbapi.commit() if sql == "COMMIT" else dbapi.rollback()
                continue
            dbapi.execute(sql).fetchall()
    except Hang:
        raise
    except Exception:
        with contextlib.suppress(Exception):
            if getattr(dbapi, "in_transaction", False):
                dbapi.rollback() if driver_transactions else dbapi.execute("ROLLBACK")


async def _wait_task(task: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait({task}, timeout=WAIT_S)


def add_blob_table(path: Path) -> Path:
    """A table of 300 rows of 300 bytes (about 25 pages): a write to all of it spills a
    tiny page cache without touching page 1."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE blob (id INTEGER PRIMARY KEY, data BLOB)")
        conn.execute(
            "INSERT INTO blob (data) SELECT zeroblob(300) FROM (WITH RECURSIVE c(x) AS "
            "(SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300) SELECT x FROM c)"
        )
        conn.commit()
    finally:
        conn.close()
    return path


@pytest.mark.slow
def test_every_test_starts_from_its_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, module in list(sys.modules.items()):
        if name.startswith("pytest_memdb") and hasattr(module, "BUSY_TIMEOUT_S"):
            monkeypatch.setattr(module, "BUSY_TIMEOUT_S", BUSY_TIMEOUT_S)
    LayerMachine.source = add_blob_table(make_sqlite(tmp_path / "data" / "app.sqlite"))
    LayerMachine.base_dir = tmp_path
    LayerMachine.app_real = make_sqlite(tmp_path / "app_real" / "real.sqlite")
    LayerMachine.app = make_app(LayerMachine.app_real)
    monkeypatch.setitem(sys.modules, APP_NAME, LayerMachine.app)
    Fault.install(monkeypatch)
    try:
        run_state_machine_as_test(
            LayerMachine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                database=None,
                print_blob=True,
                report_multiple_bugs=MULTIPLE,
                suppress_health_check=list(HealthCheck),
                # CI runs the same examples every time (a new seed per run found two model
                # errors and one plugin bug this week: explore with the long runs instead).
                derandomize=bool(os.environ.get("CI"))
                and "MEMDB_LAYER_MACHINE_EXAMPLES" not in os.environ,
            ),
        )
    finally:
        run_sync(LayerMachine.app.engine.dispose())
        LayerMachine.app.sync_engine.dispose()
