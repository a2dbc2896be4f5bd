"""``memdb_cache`` keys on everything a build reads or runs: after an edit to any input,
a warm cache serves what a build without the cache gives.

Each test runs real sessions: with ``--memdb-cache`` (cold), after an edit with
``--memdb-cache`` again (warm), and without the cache (the truth); the inner test dumps
the schema (``sqlite_master``) and every row of the template it gets to ``dump.json``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from tests.helpers import make_sqlite, with_version_location, write_ini

DUMPING = """
import json
from pathlib import Path

from sqlalchemy import text


def dump(handle):
    with handle.sync_engine.connect() as conn:
        schema = [
            list(row)
            for row in conn.execute(
                text("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
            )
        ]
        rows = {
            name: sorted(repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{name}"')))
            for kind, name, _, _ in schema
            if kind == "table"
        }
    return {"schema": schema, "rows": rows}


def save(**handles):
    found = {name: dump(handle) for name, handle in handles.items()}
    Path("dump.json").write_text(json.dumps(found, sort_keys=True))
"""

DUMP_TEST = """
from dumping import save


def test_dump(memdb):
    save(memdb=memdb)
"""

MODELS = """
from sqlalchemy import DDL, String, event, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


event.listen(Item.__table__, "after_create", DDL("INSERT INTO item (name) VALUES ('ddl v1')"))
event.listen(
    Item.__table__, "after_create", DDL("CREATE VIEW item_names AS SELECT name FROM item")
)


@event.listens_for(Base.metadata, "after_create")
def _listener(target, connection, **kw):
    connection.execute(text("INSERT INTO item (name) VALUES ('listener v1')"))
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
        "author",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
    )
    author = sa.table("author", sa.column("name", sa.String))
    op.bulk_insert(author, [{"name": "migrated v1"}])
"""

SEED = """
from sqlalchemy import text


def seed(conn):
    conn.execute(text("INSERT INTO item (name) VALUES ('callable v1')"))
"""

HOOK = """
def pytest_memdb_template(connection, target):
    connection.exec_driver_sql(f"INSERT INTO item (name) VALUES ('hook v1 {target.fixture}')")
"""


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def _alembic(pytester: pytest.Pytester, versions: str) -> Path:
    """``alembic init`` (Alembic's own API) in ``migrations``; the revision goes in
    ``versions`` (relative to the project): ``migrations/versions`` is Alembic's own."""
    ini = pytester.path / "alembic.ini"
    command.init(Config(str(ini)), str(pytester.path / "migrations"))
    folder = pytester.path / versions
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0001_author.py").write_text(REVISION)
    write_ini(pytester, memdb_alembic="alembic.ini")
    return ini


def _outside_script_location(pytester: pytest.Pytester) -> None:
    ini = _alembic(pytester, "more_versions")
    ini.write_text(with_version_location(ini.read_text(), "%(here)s/more_versions"))


def _symlinked_versions(pytester: pytest.Pytester) -> None:
    _alembic(pytester, "real_versions")
    versions = pytester.path / "migrations" / "versions"
    versions.rmdir()
    versions.symlink_to(pytester.path / "real_versions", target_is_directory=True)


def _models(pytester: pytest.Pytester, **ini: str) -> None:
    pytester.makepyfile(models=MODELS)
    write_ini(pytester, memdb_metadata="models:Base", **ini)


def _file(pytester: pytest.Pytester) -> None:
    make_sqlite(pytester.path / "data" / "app.sqlite")
    write_ini(pytester, memdb_file="data/app.sqlite")


def _edit_file_in_place(pytester: pytest.Pytester) -> None:
    """Same size, same inode: only the content (and the mtime) changes."""
    path = pytester.path / "data" / "app.sqlite"
    size = path.stat().st_size
    conn = sqlite3.connect(path)
    conn.execute("UPDATE user SET name = 'bob' WHERE name = 'ada'")
    conn.commit()
    conn.close()
    assert path.stat().st_size == size


def _seed_sql(pytester: pytest.Pytester) -> None:
    (pytester.path / "seed.sql").write_text("INSERT INTO item (name) VALUES ('sql v1');\n")
    _models(pytester, memdb_load="seed.sql")


def _seed_callable(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(seeding=SEED)
    _models(pytester, memdb_load="seeding:seed")


def _hook(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(HOOK)
    _models(pytester)


@dataclass(frozen=True)
class Kind:
    """One kind of input: how the project is made, and one edit to it."""

    setup: Callable[[pytest.Pytester], None]
    edit: Callable[[pytest.Pytester], None]
    changes: bool = True
    """False: the edit changes an input but not what a build gives (a comment)."""


def _in(name: str, old: str, new: str) -> Callable[[pytest.Pytester], None]:
    return lambda pytester: _replace(pytester.path / name, old, new)


KINDS = {
    "file": Kind(_file, _edit_file_in_place),
    "models: a column": Kind(_models, _in("models.py", "String(40)", "String(40), unique=True")),
    "models: after_create DDL seed row": Kind(_models, _in("models.py", "ddl v1", "ddl v2")),
    "models: after_create DDL view": Kind(
        _models, _in("models.py", "name FROM item", "name FROM item WHERE id > 1")
    ),
    "models: after_create listener": Kind(_models, _in("models.py", "listener v1", "listener v2")),
    "alembic: version_locations outside script_location": Kind(
        _outside_script_location, _in("more_versions/0001_author.py", "v1", "v2")
    ),
    "alembic: symlinked versions folder": Kind(
        _symlinked_versions, _in("real_versions/0001_author.py", "v1", "v2")
    ),
    "alembic: env.py": Kind(
        lambda pytester: _alembic(pytester, "migrations/versions"),
        _in("migrations/env.py", "target_metadata = None", "target_metadata = None\n# edited"),
        changes=False,
    ),
    "seed .sql": Kind(_seed_sql, _in("seed.sql", "sql v1", "sql v2")),
    "seed callable": Kind(_seed_callable, _in("seeding.py", "callable v1", "callable v2")),
    "hook": Kind(_hook, _in("conftest.py", "hook v1", "hook v2")),
}


def _dump(pytester: pytest.Pytester, *args: str) -> object:
    (pytester.path / "dump.json").unlink(missing_ok=True)
    result = pytester.runpytest_subprocess(*args, timeout=120)
    result.assert_outcomes(passed=1)
    return json.loads((pytester.path / "dump.json").read_text())


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_an_edit_to_any_input_rebuilds(pytester: pytest.Pytester, kind: Kind) -> None:
    pytester.makepyfile(dumping=DUMPING, test_dump=DUMP_TEST)
    kind.setup(pytester)
    cold = _dump(pytester, "--memdb-cache")
    kind.edit(pytester)

    warm = _dump(pytester, "--memdb-cache")
    truth = _dump(pytester)

    assert warm == truth
    if kind.changes:
        assert truth != cold, "the edit changes what a build gives"
    entries = list((pytester.path / ".pytest_cache" / "d" / "pytest-memdb").glob("*.sqlite"))
    assert len(entries) == 2, "the edit made a new entry"


HOOK_BY_FIXTURE = """
from pytest_memdb import memdb_factory

other_db = memdb_factory("other_db", metadata="models:Base")


def pytest_memdb_template(connection, config, target):
    connection.exec_driver_sql(f"INSERT INTO item (name) VALUES ('{target.fixture}')")
"""

BY_FIXTURE_TESTS = """
import pytest
from sqlalchemy import text


def names(handle):
    with handle.sync_engine.connect() as conn:
        return conn.execute(text("SELECT name FROM item ORDER BY id")).scalars().all()


@pytest.mark.parametrize("n", range(4))
def test_each_fixture_has_its_own_template(memdb, other_db, n):
    assert names(memdb) == ["ddl v1", "listener v1", "memdb"]
    assert names(other_db) == ["ddl v1", "listener v1", "other_db"]
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one process", "xdist"])
def test_a_hook_that_branches_on_the_fixture_gives_each_fixture_its_template(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    """The README's own hook example, ``memdb`` and a ``memdb_factory`` on one metadata:
    the hook sees ``target.fixture``, so the key does too, cold and warm."""
    pytester.makeconftest(HOOK_BY_FIXTURE)
    pytester.makepyfile(test_by_fixture=BY_FIXTURE_TESTS)
    _models(pytester, memdb_cache="true")
    for _ in range(2):
        result = pytester.runpytest_subprocess(*workers, timeout=120)
        result.assert_outcomes(passed=4)
    entries = list((pytester.path / ".pytest_cache" / "d" / "pytest-memdb").glob("*.sqlite"))
    assert len(entries) == 2


def test_without_a_hook_fixtures_on_one_source_share_an_entry(pytester: pytest.Pytester) -> None:
    """What no hook sees (the fixture's name) is not in the key."""
    pytester.makeconftest(
        "from pytest_memdb import memdb_factory\n"
        "other_db = memdb_factory('other_db', metadata='models:Base')\n"
    )
    pytester.makepyfile(
        test_shared="""
        def test_both(memdb, other_db):
            assert memdb.name != other_db.name
        """
    )
    _models(pytester, memdb_cache="true")
    pytester.runpytest_subprocess(timeout=120).assert_outcomes(passed=1)
    entries = list((pytester.path / ".pytest_cache" / "d" / "pytest-memdb").glob("*.sqlite"))
    assert len(entries) == 1


def test_the_building_modules_the_key_hashes_are_the_plugins_modules() -> None:
    """The key hashes the source of the modules that build a template, so an editable
    install's change rebuilds; a name that is no module hashed as its own name. After the
    layout moved them under ``core/`` and ``sqlite/``, none of the six names was one."""
    import importlib.util

    from pytest_memdb.sqlite.cache_key import _BUILDING_MODULES, module_hash

    for name in _BUILDING_MODULES:
        module = f"pytest_memdb.{name}"
        assert importlib.util.find_spec(module) is not None, module
        assert module_hash(module) != module, module
