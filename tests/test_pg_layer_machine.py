"""A state machine for layers on PostgreSQL: is every write to a layer found, and nothing else?

The layer machine (tests/test_isolation_machine_layers.py) is SQLite's (pages, journal
modes, driver state); this one drives the same core API (``registry.layer``,
``registry.layers.fixture`` / ``check``, ``registry.open``) on a real PostgreSQL server, as
the plugin does, with random steps:

* module and class layers opened (the class one on the module's) and torn down;
* scoped fixtures writing their layer, through its sync session, its sync engine or an
  engine built from its URL, some raising after their commit;
* writes to a layer by anything else (a test, a function-scoped fixture, something between
  tests), of every kind the detection has to see: rows inserted, updated, deleted, deleted
  and inserted again as they were, an index, a column, a table, a sequence moved, a
  connection left holding an uncommitted write or an exclusive lock;
* tests in copy, rollback and session mode on the innermost layer, writing to their own
  database.

The invariants: a write by anything but a fixture of the layer's scope is reported at the
next boundary (and only such a write: a test writing to its own database, a legitimate
fixture, reads, are never reported), and afterwards the layer itself and every copy or
rollback test on it hold exactly the template's rows plus those of the legitimate fixtures
of the layers below, with the template's schema and sequences.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from sqlalchemy import Connection, create_engine, inspect, text

from pytest_memdb.core.config import MemdbConfig, Target
from pytest_memdb.core.layers import MemdbLayer, Writer
from pytest_memdb.core.registry import MemdbRegistry
from pytest_memdb.postgresql.backend import PgBackend, new_run_id

pytestmark = pytest.mark.slow  # a clone per layer, checkpoint and test: a minute or more

EXAMPLES = int(os.environ.get("MEMDB_PG_LAYER_MACHINE_EXAMPLES", "6"))
STEPS = int(os.environ.get("MEMDB_PG_LAYER_MACHINE_STEPS", "20"))
BASE = ["ada", "brian", "grace"]
COLUMNS = ["id", "name"]
WRITES = (
    "insert",
    "update",
    "delete",
    "same-rows-after",
    "index",
    "column",
    "table",
    "sequence",
    "leaked-write",
    "leaked-lock",
)
WHO = ("test", "function fixture", "between tests")


def _build(conn: Connection, target: Target) -> None:
    """The template, by the ``pytest_memdb_template`` hook's way in."""
    conn.exec_driver_sql("CREATE TABLE app_user (id serial PRIMARY KEY, name text NOT NULL)")
    conn.exec_driver_sql("INSERT INTO app_user (name) VALUES ('ada'), ('brian'), ('grace')")


def _names(conn: Connection) -> list[str]:
    return list(conn.execute(text("SELECT name FROM app_user ORDER BY id")).scalars())


def _shape(conn: Connection) -> tuple[list[str], list[str], list[Any], int]:
    """The schema and the sequence: tables, columns, indexes, the sequence's last value."""
    found = inspect(conn)
    columns = [column["name"] for column in found.get_columns("app_user")]
    last = conn.execute(text("SELECT last_value FROM app_user_id_seq")).scalar_one()
    return found.get_table_names(), columns, found.get_indexes("app_user"), int(last)


class PgLayerMachine(RuleBasedStateMachine):
    url: str
    base_dir: Path

    def __init__(self) -> None:
        super().__init__()
        self.settings = MemdbConfig(
            file=None, file_origin="", isolation="copy", echo=False, base_dir=self.base_dir
        )
        self.targets = {
            mode: Target(file=None, file_origin="pg layer machine", isolation=mode)
            for mode in ("copy", "rollback", "session")
        }
        run_id = new_run_id()
        self.registry = MemdbRegistry(
            self.settings,
            lambda: PgBackend(self.url, self.settings, run_id=run_id, worker="machine"),
            _build,
        )
        self.module: MemdbLayer | None = None
        self.klass: MemdbLayer | None = None
        self.rows: dict[str, list[str]] = {"module": [], "class": []}
        """The rows each layer's legitimate fixtures wrote (besides the template's)."""
        self.names = itertools.count(1)
        self.leaked: list[Any] = []
        self.session_mode_seen = False

    # -- helpers ---------------------------------------------------------------------------
    def _layers(self) -> list[MemdbLayer]:
        return [layer for layer in (self.module, self.klass) if layer is not None]

    def _innermost(self) -> MemdbLayer | None:
        return self.klass or self.module

    def _expected(self, layer: MemdbLayer | None) -> list[str]:
        if layer is None:
            return BASE
        if layer is self.module:
            return [*BASE, *self.rows["module"]]
        return [*BASE, *self.rows["module"], *self.rows["class"]]

    def _asked(self) -> tuple[frozenset[Writer], str]:
        return self.registry.layers.writers(), "a machine test"

    def _check(self, who: str) -> list[str]:
        return self.registry.layers.check(who)

    def _write(self, layer: MemdbLayer, kind: str) -> None:
        """One write of ``kind`` to ``layer``, not through a fixture of its scope."""
        if kind in ("leaked-write", "leaked-lock"):
            conn = create_engine(layer.sync_url).connect()
            conn.execute(text("LOCK TABLE app_user IN ACCESS EXCLUSIVE MODE"))
            if kind == "leaked-write":
                conn.execute(text("INSERT INTO app_user (name) VALUES ('leaked')"))
            self.leaked.append(conn)  # never committed, never closed
            return
        statements = {
            "insert": ["INSERT INTO app_user (name) VALUES ('illegal')"],
            "update": ["UPDATE app_user SET name = name || '!' WHERE id = 1"],
            "delete": ["DELETE FROM app_user WHERE id = 2"],
            "same-rows-after": [
                "DELETE FROM app_user WHERE id = 3",
                "INSERT INTO app_user (id, name) VALUES (3, 'grace')",
            ],
            "index": ["CREATE INDEX ix_name ON app_user (name)"],
            "column": ["ALTER TABLE app_user ADD COLUMN extra integer"],
            "table": ["CREATE TABLE extra (id integer)"],
            "sequence": ["SELECT setval('app_user_id_seq', 1000)"],
        }[kind]
        with layer.sync_engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))

    # -- layers ----------------------------------------------------------------------------
    @initialize()
    def start_in_a_module_with_a_layer(self) -> None:
        self.open_module_layer()

    @precondition(lambda self: self.module is None)
    @rule()
    def open_module_layer(self) -> None:
        self.module = self.registry.layer(
            lambda: self.targets["copy"], "module", "machine-module", None, self._asked
        )
        self.rows["module"] = []

    @precondition(lambda self: self.module is not None and self.klass is None)
    @rule()
    def open_class_layer(self) -> None:
        self.klass = self.registry.layer(
            lambda: self.targets["copy"], "class", "machine-class", self.module, self._asked
        )
        self.rows["class"] = []

    @precondition(lambda self: self.klass is not None)
    @rule()
    def close_class_layer(self) -> None:
        assert self.klass is not None
        self.registry.close_layer(self.klass)
        self.klass = None

    @precondition(lambda self: self.module is not None and self.klass is None)
    @rule()
    def close_module_layer(self) -> None:
        assert self.module is not None
        self.registry.close_layer(self.module)
        self.module = None

    @precondition(lambda self: bool(self._layers()))
    @rule(
        inner=st.booleans(),
        via=st.sampled_from(["sync_session", "sync_engine", "url"]),
        raises=st.booleans(),
    )
    def scoped_fixture_writes(self, inner: bool, via: str, raises: bool) -> None:
        layer = self.klass if inner and self.klass is not None else self.module
        assert layer is not None
        if layer is self.module and self.klass is not None and self.klass.laid:
            return  # the class layer is laid on the module's rows as they were: not modelled
        name = f"fixture{next(self.names)}"
        writer = Writer(name)
        with pytest.raises(RuntimeError) if raises else contextlib.nullcontext():
            with self.registry.layers.fixture(writer, layer.scope) as watch:
                insert = text("INSERT INTO app_user (name) VALUES (:name)")
                if via == "sync_session":
                    with layer.sync_session() as session:
                        session.execute(insert, {"name": name})
                        session.commit()
                elif via == "sync_engine":
                    with layer.sync_engine.begin() as conn:
                        conn.execute(insert, {"name": name})
                else:
                    engine = create_engine(layer.sync_url)
                    with engine.begin() as conn:
                        conn.execute(insert, {"name": name})
                    engine.dispose()
                if raises:
                    raise RuntimeError("the fixture fails after its commit")
            assert watch.problems == [], watch.problems  # its own scope's fixture: legitimate
        if not raises:
            self.rows[layer.scope].append(name)

    @precondition(lambda self: bool(self._layers()))
    @rule(inner=st.booleans(), kind=st.sampled_from(WRITES), who=st.sampled_from(WHO))
    def illegal_write(self, inner: bool, kind: str, who: str) -> None:
        layer = self.klass if inner and self.klass is not None else self.module
        assert layer is not None
        _ = layer.handle  # laid (a write to a layer nobody used yet is to what it is laid on)
        if who == "function fixture":
            with self.registry.layers.fixture(Writer("function_fixture"), "function") as watch:
                self._write(layer, kind)
            problems = watch.problems
        elif who == "test":
            handle = self.registry.open(
                self.targets["copy"], self._innermost(), asked=self._asked()[0], test="t"
            )
            assert self._check("the start of the test") == []
            self._write(layer, kind)
            handle.close()
            problems = self._check("the test")
        else:
            self._write(layer, kind)
            problems = self._check("something between tests")
        assert len(problems) == 1, (kind, who, problems)
        assert f"wrote to the {layer.scope} layer" in problems[0], problems
        assert "It was put back" in problems[0], problems

    # -- tests -----------------------------------------------------------------------------
    @rule(mode=st.sampled_from(["copy", "rollback", "session"]), write=st.booleans())
    def run_a_test(self, mode: str, write: bool) -> None:
        layer = self._innermost()
        assert self._check("before the test") == []
        handle = self.registry.open(self.targets[mode], layer, asked=self._asked()[0], test="t")
        try:
            with handle.sync_engine.connect() as conn:
                if mode != "session" or not self.session_mode_seen:
                    assert _names(conn) == self._expected(layer)
                    tables, columns, indexes, _ = _shape(conn)
                    assert (tables, columns, indexes) == (["app_user"], COLUMNS, [])
            if write:
                with handle.sync_engine.begin() as conn:
                    conn.execute(text("INSERT INTO app_user (name) VALUES ('the test''s')"))
                    conn.execute(text("CREATE TABLE IF NOT EXISTS mine (id integer)"))
        finally:
            handle.close()
        if mode == "session" and write:
            self.session_mode_seen = True  # never restored: not compared from now on
        assert self._check("the test") == []  # a test writing its own database: not a write

    @invariant()
    def layers_are_as_their_fixtures_left_them(self) -> None:
        for layer in self._layers():
            if not layer.laid:
                continue
            with layer.sync_engine.connect() as conn:
                assert _names(conn) == self._expected(layer)
                tables, columns, indexes, last = _shape(conn)
                assert (tables, columns, indexes) == (["app_user"], COLUMNS, [])
                assert last < 1000  # the sequence was put back too

    def teardown(self) -> None:
        try:
            for conn in self.leaked:
                conn.invalidate()
            for layer in reversed(self._layers()):
                self.registry.close_layer(layer)
        finally:
            self.registry.close()


@pytest.fixture
def machine(pg_server: Any, tmp_path: Path) -> type[PgLayerMachine]:
    PgLayerMachine.url = pg_server.url("postgres", "psycopg")
    PgLayerMachine.base_dir = tmp_path
    return PgLayerMachine


def test_every_write_to_a_postgresql_layer_is_found_and_undone(
    machine: type[PgLayerMachine],
) -> None:
    run_state_machine = machine.TestCase
    run_state_machine.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    run_state_machine().runTest()
