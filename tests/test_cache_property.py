"""The cache's one promise, as a property: whatever the inputs were edited to between
runs, the template it hands out is the one a build without the cache gives.

Drives the core (:class:`pytest_memdb.sqlite.cache.TemplateCache` and ``build_template``) with
no pytest session, so each example is fast: a run is a new cache object (a new run id)
on the same cache folder, with the project's modules imported anew, as a new process
would. The inputs: a fixture file (edited in place: same inode, often the same size),
models with ``after_create`` DDL (a seed row, a view), Alembic migrations (a version
folder outside the script folder), a ``.sql`` and a callable seed step, a hook that
branches on ``target.fixture``, and the fixture's name. Hypothesis draws a few states
of them in a row; CI runs the same examples every time (``CI`` set). The same property
through real pytest sessions, per kind of input: ``tests/test_cache_inputs.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import os
import sqlite3
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection

from pytest_memdb.core.config import LoadStep, Target
from pytest_memdb.sqlite.build import build_template
from pytest_memdb.sqlite.cache import TemplateCache
from pytest_memdb.sqlite.memory import MemoryDatabase, unique_name
from tests.helpers import with_version_location

EXAMPLES = int(os.environ.get("MEMDB_CACHE_PROPERTY_EXAMPLES", "12"))
PREFIX = "cacheprop_"
"""The project's modules, dropped from ``sys.modules`` before every run."""

WORDS = st.sampled_from(["ada", "bob", "cy"])
"""Few values: runs in a row often repeat one (a cache hit), and often change one."""


@dataclass(frozen=True)
class Inputs:
    """Everything a run's template is built from."""

    file_rows: tuple[str, ...] | None
    schema: str
    """``models`` (create_all with DDL events) or ``alembic`` (migrations)."""
    column: str
    ddl_row: str
    view_limit: int
    sql_row: str | None
    callable_row: str | None
    hook_row: str | None
    fixture: str


FIELDS: dict[str, st.SearchStrategy[object]] = {
    "file_rows": st.none() | st.lists(WORDS, max_size=3).map(tuple),
    "schema": st.sampled_from(["models", "models", "alembic"]),
    "column": st.sampled_from(["String(20)", "String(30)", "Integer"]),
    "ddl_row": WORDS,
    "view_limit": st.integers(0, 2),
    "sql_row": st.none() | WORDS,
    "callable_row": st.none() | WORDS,
    "hook_row": st.none() | WORDS,
    "fixture": st.sampled_from(["memdb", "other_db"]),
}
INPUTS = st.fixed_dictionaries(FIELDS).map(lambda values: Inputs(**values))  # type: ignore[arg-type]
EDITS = st.lists(
    st.lists(
        st.sampled_from(sorted(FIELDS)).flatmap(
            lambda name: st.tuples(st.just(name), FIELDS[name])
        ),
        min_size=1,
        max_size=2,
    ),
    min_size=1,
    max_size=3,
)
"""Runs after the first: each changes one or two inputs (or sets one to what it was)."""


MODELS = """
from sqlalchemy import DDL, Integer, String, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column({column})


event.listen(Item.__table__, "after_create", DDL("INSERT INTO item (name) VALUES ('{ddl_row}')"))
event.listen(
    Item.__table__,
    "after_create",
    DDL("CREATE VIEW first_items AS SELECT name FROM item LIMIT {view_limit}"),
)
"""

REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "item", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.{column})
    )
    op.execute("INSERT INTO item (name) VALUES ('{ddl_row}')")
    op.execute("CREATE VIEW first_items AS SELECT name FROM item LIMIT {view_limit}")
"""

SEED = """
from sqlalchemy import text


def seed(conn):
    conn.execute(text("INSERT INTO item (name) VALUES ('{callable_row}')"))
"""

HOOK = """
def pytest_memdb_template(connection, target):
    connection.exec_driver_sql(
        f"INSERT INTO item (name) VALUES ('{hook_row} ' || '{{target.fixture}}')"
    )
"""


class Project:
    """A project folder whose files are rewritten to match an :class:`Inputs`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache = folder / "cache"
        self.ini = folder / "alembic.ini"
        command.init(Config(str(self.ini), stdout=io.StringIO()), str(folder / "migrations"))
        text = self.ini.read_text()
        self.ini.write_text(with_version_location(text, "%(here)s/vers"))
        (folder / "vers").mkdir()

    def write(self, inputs: Inputs) -> Target:
        """The files as ``inputs`` says (the fixture file edited in place), and the target."""
        values = {
            "column": inputs.column,
            "ddl_row": inputs.ddl_row,
            "view_limit": inputs.view_limit,
            "callable_row": inputs.callable_row,
            "hook_row": inputs.hook_row,
        }
        self._text(f"{PREFIX}models.py", MODELS.format(**values))
        self._text("vers/0001_item.py", REVISION.format(**values))
        self._text(f"{PREFIX}seed.py", SEED.format(**values))
        self._text(f"{PREFIX}hooks.py", HOOK.format(**values))
        self._text("seed.sql", f"INSERT INTO item (name) VALUES ('{inputs.sql_row}');\n")
        data = self.folder / "data.sqlite"
        if inputs.file_rows is not None:
            conn = sqlite3.connect(data)  # in place: the inode stays
            conn.execute("CREATE TABLE IF NOT EXISTS user (name TEXT)")
            conn.execute("DELETE FROM user")
            conn.executemany("INSERT INTO user VALUES (?)", [(r,) for r in inputs.file_rows])
            conn.commit()
            conn.close()
        load = []
        if inputs.sql_row is not None:
            load.append(LoadStep("seed.sql", "test", script=self.folder / "seed.sql"))
        if inputs.callable_row is not None:
            load.append(LoadStep("seed", "test", callable=f"{PREFIX}seed:seed"))
        models = inputs.schema == "models"
        return Target(
            file=data if inputs.file_rows is not None else None,
            file_origin="test",
            isolation="copy",
            metadata=f"{PREFIX}models:Base" if models else None,
            metadata_origin="test",
            load=tuple(load),
            fixture=inputs.fixture,
            alembic=None if models else self.ini,
            alembic_origin="test",
        )

    def _text(self, name: str, text: str) -> None:
        path = self.folder / name
        text = textwrap.dedent(text)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


@contextmanager
def a_new_process(folder: Path) -> Iterator[None]:
    """The project's modules imported anew, from its folder."""
    for name in [name for name in sys.modules if name.startswith(PREFIX)]:
        del sys.modules[name]
    importlib.invalidate_caches()
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def dump(database: MemoryDatabase) -> object:
    conn = database.anchor
    schema = conn.execute(
        "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
    ).fetchall()
    rows = {
        name: sorted(map(repr, conn.execute(f'SELECT * FROM "{name}"').fetchall()))
        for kind, name, _ in schema
        if kind in ("table", "view")
    }
    return schema, rows


def run(project: Project, inputs: Inputs) -> tuple[object, object]:
    """One run with the cache, and a build without it: what each gives."""
    target = project.write(inputs)
    with a_new_process(project.folder):
        hooks = []
        if inputs.hook_row is not None:
            hooks.append(importlib.import_module(f"{PREFIX}hooks").pytest_memdb_template)

        def hook(conn: Connection, target: Target) -> None:
            for each in hooks:
                each(conn, target)

        def build() -> MemoryDatabase:
            return build_template(
                target,
                unique_name("cacheprop", "template"),
                base_dir=project.folder,
                hook=hook if hooks else None,
            )

        cache = TemplateCache(
            project.cache,
            run_id=uuid.uuid4().hex,
            rebuild=False,
            base_dir=project.folder,
            pragmas=(),
            hook_functions=hooks,
            warn=pytest.fail,  # nothing here is bad or unusable
        )
        cached = cache.template(target, unique_name("cacheprop", "cached"), build)
        fresh = build()
    try:
        return dump(cached), dump(fresh)
    finally:
        cached.close()
        fresh.close()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=bool(os.environ.get("CI")),
)
@given(INPUTS, EDITS)
def test_any_edit_between_runs_serves_what_a_build_gives(
    first: Inputs, edits: list[list[tuple[str, object]]]
) -> None:
    # No bytecode: Python would load a module's old .pyc after an edit within the same
    # second that keeps its size (it compares the source's mtime in seconds, and size).
    saved = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        with tempfile.TemporaryDirectory(prefix="memdb-cache-property-") as folder:
            project = Project(Path(folder))
            inputs = first
            for edit in [[], *edits]:
                inputs = dataclasses.replace(inputs, **dict(edit))  # type: ignore[arg-type]
                cached, fresh = run(project, inputs)
                assert cached == fresh, inputs
    finally:
        sys.dont_write_bytecode = saved
