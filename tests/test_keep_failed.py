"""``--memdb-keep-failed DIR``: a failing test's database, written out as a SQLite file.

Inner tests write rows named after themselves and then fail (in the body, or in a
fixture set up after ``memdb``); the outer tests open every dump with ``sqlite3`` and
check it is a valid database holding what that test wrote, and that passing tests
wrote nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.helpers import APP_USER_MODELS, write_ini

pytestmark = pytest.mark.usefixtures("app_db")

MODES = ["copy", "rollback", "session"]
BASE = ["ada", "brian", "grace"]
KEPT = re.compile(
    r"^(?P<fixture>\w+): the database as the test left it(?: \([^)]*\))? is in (?P<path>.+)$"
)

TESTS = """
import pytest
from sqlalchemy import text

INSERT = text("INSERT INTO user (name, email) VALUES (:name, 'x@example.com')")


async def test_body_fails(memdb_session):
    await memdb_session.execute(INSERT, {"name": "body"})
    await memdb_session.commit()
    assert 1 + 1 == 3, "the body failed"


def test_passes(memdb_sync_session):
    memdb_sync_session.execute(INSERT, {"name": "passing"})
    memdb_sync_session.commit()


@pytest.fixture
def breaks_after_memdb(memdb, memdb_sync_session):
    memdb_sync_session.execute(INSERT, {"name": "setup"})
    memdb_sync_session.commit()
    raise RuntimeError("the fixture broke")


def test_setup_error(breaks_after_memdb):
    pass


def test_fails_without_memdb():
    assert False
"""


def kept(lines: list[str]) -> dict[str, str]:
    """The report lines naming a dump, as {path: fixture}."""
    found = {}
    for line in lines:
        match = KEPT.match(line.strip())
        if match:
            found[match["path"]] = match["fixture"]
    return found


def names_in(path: Path, table: str = "user") -> list[str]:
    """The ``table`` names in a dump, after checking that it is a sound SQLite file."""
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return [row[0] for row in conn.execute(f"SELECT name FROM {table} ORDER BY id")]
    finally:
        conn.close()


BOTH = TESTS.replace(
    "INSERT INTO user (name, email) VALUES (:name, 'x@example.com')",
    "INSERT INTO app_user (name) VALUES (:name)",
)
""":data:`TESTS` on a project both backends build (models and a seed, no SQLite file)."""

SEED = "INSERT INTO app_user (name) VALUES ('ada'), ('brian'), ('grace');\n"


def names_in_sql(path: Path, server: Any, also: str | None = None) -> list[Any]:
    """The ``app_user`` names in a PostgreSQL dump, loaded as the docs say (``createdb``,
    ``psql -f``) into a new database on ``server``, with every statement required to work;
    then the rows of query ``also``, when given."""
    assert path.read_text().startswith("-- pytest-memdb --memdb-keep-failed: ")
    name = f"kept_{uuid.uuid4().hex[:8]}"
    with server_connection(server) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        psql = shutil.which("psql") or server.binaries.tool("psql")
        url = make_url(server.url(name, "psycopg"))
        done = subprocess.run(
            [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", url.query["host"],
             "-p", str(url.query.get("port", 5432)), "-U", url.username, "-d", name,
             "-f", str(path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        with server_connection(server, name) as conn:
            rows = conn.execute("SELECT name FROM app_user ORDER BY id").fetchall()
            # the sequence goes on where the test left it: a new row does not collide
            conn.execute("INSERT INTO app_user (name) VALUES ('after')")
            if also is not None:
                return [[row[0] for row in rows], conn.execute(also).fetchall()]
        return [row[0] for row in rows]
    finally:
        with server_connection(server) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@contextlib.contextmanager
def server_connection(server: Any, database: str = "postgres") -> Iterator[Any]:
    import psycopg

    url = make_url(server.url(database, "psycopg"))
    with psycopg.connect(
        host=url.query["host"], port=url.query.get("port"), user=url.username,
        dbname=database, autocommit=True,
    ) as conn:  # fmt: skip
        yield conn


def _project(pytester: pytest.Pytester, isolation: str, tests: str) -> None:
    """An inner project both backends build: models and a seed, no SQLite file."""
    pytester.makepyfile(models=APP_USER_MODELS, test_keep=tests)
    (pytester.path / "seed.sql").write_text(SEED)
    write_ini(
        pytester,
        memdb_metadata="models:Base",
        memdb_load="seed.sql",
        memdb_isolation=isolation,
        pythonpath=".",
    )


def _reader(switch: list[str], request: pytest.FixtureRequest) -> tuple[str, Any]:
    """The file suffix of a backend's dumps, and how to read the names in one."""
    if switch:
        server = request.getfixturevalue("pg_server")
        return ".sql", lambda path: names_in_sql(path, server)
    return ".sqlite", lambda path: names_in(path, "app_user")


BACKENDS_AND_MODES = [
    *(pytest.param("sqlite", mode, id=f"sqlite-{mode}") for mode in MODES),
    *(pytest.param("postgresql", mode, id=f"postgresql-{mode}") for mode in ("copy", "rollback")),
]
"""PostgreSQL's session mode dumps as copy's does (a clone of its own, by pg_dump): left out
to keep the run short."""


@pytest.mark.parametrize(("switch", "isolation"), BACKENDS_AND_MODES, indirect=["switch"])
def test_failing_tests_leave_their_database(
    pytester: pytest.Pytester, isolation: str, switch: list[str], request: pytest.FixtureRequest
) -> None:
    """On PostgreSQL, a ``.sql`` file that ``psql -f`` loads into a new database."""
    _project(pytester, isolation, BOTH)
    result = pytester.runpytest(*switch, "-p", "no:cacheprovider", "--memdb-keep-failed", "dumps")
    result.assert_outcomes(passed=1, failed=2, errors=1)

    suffix, read = _reader(switch, request)
    dumps = pytester.path / "dumps"
    body = dumps / f"test_keep.py_test_body_fails{suffix}"
    setup = dumps / f"test_keep.py_test_setup_error{suffix}"
    assert sorted(p.name for p in dumps.iterdir()) == sorted([body.name, setup.name])
    assert read(body) == [*BASE, "body"]
    # session isolation keeps every earlier test's writes (the passing test's included)
    expected_setup = (
        [*BASE, "body", "passing", "setup"] if isolation == "session" else [*BASE, "setup"]
    )
    assert read(setup) == expected_setup
    assert kept(result.outlines) == {str(body): "memdb", str(setup): "memdb"}
    result.stdout.fnmatch_lines(
        [
            "*_ test_body_fails _*",
            "*the body failed*",
            "*- pytest-memdb: database kept -*",
            f"memdb: the database as the test left it* is in {body}",
        ]
    )


def test_passing_run_writes_nothing(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(test_keep=TESTS)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--memdb-keep-failed", "dumps", "-k", "passes"
    )
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "dumps").exists()
    result.stdout.no_fnmatch_line("*database kept*")


def test_without_the_option_nothing_is_written(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(test_keep=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2, errors=1)
    assert sorted(os.listdir(pytester.path)) == ["data", "pytest.ini", "test_keep.py"]
    result.stdout.no_fnmatch_line("*database kept*")


ODD_IDS = {
    "slash": "a/b",
    "space": "a b",
    "underscore": "a_b",
    "bracket": "[a]b",
    "unicode": "äb€ 漢字",
    "long": "x" * 300,
    "long2": "x" * 299 + "y",
    "dots": "../..",
}


def test_odd_test_ids_give_distinct_legal_names(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(
        test_odd=f"""
        import pytest
        from sqlalchemy import text

        IDS = {list(ODD_IDS.values())!r}


        @pytest.mark.parametrize("label", IDS, ids=IDS)
        def test_odd(memdb_sync_session, label):
            memdb_sync_session.execute(
                text("INSERT INTO user (name) VALUES (:name)"), {{"name": label}}
            )
            memdb_sync_session.commit()
            assert False
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--memdb-keep-failed", "dumps")
    result.assert_outcomes(failed=len(ODD_IDS))

    dumps = pytester.path / "dumps"
    files = sorted(dumps.iterdir())
    assert len(files) == len(ODD_IDS)
    assert sorted(kept(result.outlines)) == [str(f) for f in files]
    by_label = {}
    for path in files:
        assert path.parent == dumps
        assert len(path.name.encode()) <= 255
        assert re.fullmatch(r"[A-Za-z0-9_.-]+\.sqlite", path.name), path.name
        assert not path.name.startswith(".")
        names = names_in(path)
        assert names[:3] == BASE
        assert len(names) == 4
        by_label[names[3]] = path
    assert sorted(by_label) == sorted(ODD_IDS.values())


def test_factory_databases_get_the_fixture_name(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makeconftest(
        """
        from pytest_memdb import memdb_factory

        other_db = memdb_factory("other_db", file="data/app.sqlite")
        """
    )
    pytester.makepyfile(
        test_two="""
        from sqlalchemy import text


        def test_two(memdb, other_db):
            for handle, name in ((memdb, "main-row"), (other_db, "other-row")):
                with handle.sync_sessionmaker() as session:
                    session.execute(text("INSERT INTO user (name) VALUES (:n)"), {"n": name})
                    session.commit()
            assert False
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--memdb-keep-failed", "dumps")
    result.assert_outcomes(failed=1)
    main = pytester.path / "dumps" / "test_two.py_test_two.sqlite"
    other = pytester.path / "dumps" / "test_two.py_test_two-other_db.sqlite"
    assert sorted((pytester.path / "dumps").iterdir()) == sorted([main, other])
    assert names_in(main) == [*BASE, "main-row"]
    assert names_in(other) == [*BASE, "other-row"]
    assert kept(result.outlines) == {str(main): "memdb", str(other): "other_db"}


def test_relative_dir_is_relative_to_the_invocation_dir(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(test_keep=TESTS)
    elsewhere = pytester.mkdir("elsewhere")
    monkeypatch.chdir(elsewhere)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--memdb-keep-failed", "out", str(pytester.path)
    )
    result.assert_outcomes(passed=1, failed=2, errors=1)
    assert not (pytester.path / "out").exists()
    assert sorted(p.name for p in (elsewhere / "out").iterdir()) == [
        "test_keep.py_test_body_fails.sqlite",
        "test_keep.py_test_setup_error.sqlite",
    ]


def test_under_xdist(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    for isolation in MODES:
        header = f"import pytest\n\npytestmark = pytest.mark.memdb(isolation={isolation!r})\n"
        pytester.makepyfile(**{f"test_keep_{isolation}": header + TESTS})
    elsewhere = pytester.mkdir("elsewhere")
    monkeypatch.chdir(elsewhere)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        "--memdb-keep-failed",
        "out",
        str(pytester.path),
        timeout=120,
    )
    result.assert_outcomes(passed=3, failed=6, errors=3)
    out = elsewhere / "out"
    expected = {
        f"test_keep_{isolation}.py_test_{name}.sqlite"
        for isolation in MODES
        for name in ("body_fails", "setup_error")
    }
    assert {p.name for p in out.iterdir()} == expected
    for isolation in ("copy", "rollback"):
        assert names_in(out / f"test_keep_{isolation}.py_test_body_fails.sqlite") == [
            *BASE,
            "body",
        ]
        assert names_in(out / f"test_keep_{isolation}.py_test_setup_error.sqlite") == [
            *BASE,
            "setup",
        ]
    # session mode: the tests of that module may run on either worker, in any order
    assert "body" in names_in(out / "test_keep_session.py_test_body_fails.sqlite")
    assert "setup" in names_in(out / "test_keep_session.py_test_setup_error.sqlite")
    assert set(kept(result.outlines)) == {str(out / name) for name in expected}


UNCOMMITTED = """
import pytest
from sqlalchemy import text

INSERT = text("INSERT INTO app_user (name) VALUES (:name)")


async def test_left_uncommitted(memdb, memdb_session, memdb_sessionmaker):
    async with memdb_sessionmaker() as other:
        await other.execute(INSERT, {"name": "committed"})
        await other.commit()
    await memdb_session.execute(INSERT, {"name": "pending"})
    assert False, "failed with a write pending"


def test_next_test_runs(memdb_sync_session):
    names = list(memdb_sync_session.scalars(text("SELECT name FROM app_user")))
    assert "pending" not in names
"""


UNCOMMITTED_PARAMS = [
    *(pytest.param("sqlite", mode, id=f"sqlite-{mode}") for mode in MODES),
    # a subprocess run on PostgreSQL each: 6-10 s with a CI run on the same 2 cores
    *(
        pytest.param("postgresql", mode, id=f"postgresql-{mode}", marks=pytest.mark.slow)
        for mode in ("copy", "rollback")
    ),
]


@pytest.mark.parametrize(("switch", "isolation"), UNCOMMITTED_PARAMS, indirect=["switch"])
def test_uncommitted_write_does_not_hang_the_dump(
    pytester: pytest.Pytester, isolation: str, switch: list[str], request: pytest.FixtureRequest
) -> None:
    _project(pytester, isolation, UNCOMMITTED)
    result = pytester.runpytest_subprocess(
        *switch, "-p", "no:cacheprovider", "--memdb-keep-failed", "dumps", timeout=60
    )
    result.assert_outcomes(failed=1, passed=1)
    suffix, read = _reader(switch, request)
    path = pytester.path / "dumps" / f"test_keep.py_test_left_uncommitted{suffix}"
    if switch and isolation == "copy":
        # PostgreSQL, a clone of the test's own: pg_dump is another connection, which sees
        # what was committed and is not held up by the pending write.
        assert read(path) == [*BASE, "committed"]
        result.stdout.fnmatch_lines(
            [f"memdb: the database as the test left it (committed writes only) is in {path}"]
        )
        return
    # Rollback mode: one connection holds the test's view (on PostgreSQL, read through the
    # held session). Copy and session modes on SQLite: SQLite's memdb lets nobody read past
    # the pending write, so the session that holds it is written out, its committed and its
    # pending rows.
    assert read(path) == [*BASE, "committed", "pending"]
    if switch:
        result.stdout.fnmatch_lines(
            [f"memdb: the database as the test left it (uncommitted writes included) is in {path}"]
        )
    elif isolation != "rollback":
        result.stdout.fnmatch_lines(
            [
                "memdb: the database as the test left it, with the uncommitted writes of the "
                f"session that held them, is in {path}"
            ]
        )


LEAKED_WRITER = """
import sqlite3


def test_left_a_write_of_its_own(memdb):
    leak = sqlite3.connect(memdb.database.sqlite_uri, uri=True, check_same_thread=False)
    leak.execute("INSERT INTO user (name) VALUES ('pending')")
    assert False, "failed with a write pending on a connection of its own"
"""


def test_a_pending_write_of_a_connection_not_the_plugins_is_explained(
    pytester: pytest.Pytester,
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(test_leak=LEAKED_WRITER)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--memdb-keep-failed", "dumps", timeout=60
    )
    result.assert_outcomes(failed=1)
    path = pytester.path / "dumps" / "test_leak.py_test_left_a_write_of_its_own.sqlite"
    assert not path.exists()
    result.stdout.fnmatch_lines(
        [f"memdb: could not write the database to {path}: *uncommitted write*"]
    )


def test_teardown_and_expected_failures(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(
        test_teardown="""
        import pytest
        from sqlalchemy import text

        INSERT = text("INSERT INTO user (name) VALUES (:name)")


        @pytest.fixture
        def breaks_at_teardown(memdb, memdb_sync_session):
            yield memdb_sync_session
            memdb_sync_session.execute(INSERT, {"name": "teardown"})
            memdb_sync_session.commit()
            raise RuntimeError("the teardown broke")


        def test_call_then_teardown_fail(breaks_at_teardown):
            breaks_at_teardown.execute(INSERT, {"name": "call"})
            breaks_at_teardown.commit()
            assert False


        def test_only_teardown_fails(breaks_at_teardown):
            breaks_at_teardown.execute(INSERT, {"name": "passed"})
            breaks_at_teardown.commit()


        @pytest.mark.xfail(reason="known", strict=True)
        def test_expected_failure(memdb_sync_session):
            assert False
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--memdb-keep-failed", "dumps")
    result.assert_outcomes(failed=1, passed=1, errors=2, xfailed=1)
    dumps = pytester.path / "dumps"
    both = dumps / "test_teardown.py_test_call_then_teardown_fail.sqlite"
    # The teardown report comes after every fixture was torn down: the database is gone
    # by then, so only the call's failure is dumped, as it was then.
    assert sorted(dumps.iterdir()) == [both]
    assert names_in(both) == [*BASE, "call"]
    assert list(kept(result.outlines)) == [str(both)]


class _NoSerialize:
    """A ``sqlite3.Connection`` on a SQLite built without the serialize API: no ``serialize()``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def iterdump(self):  # type: ignore[no-untyped-def]
        return self._conn.iterdump()


@pytest.mark.parametrize("serialize", [True, False], ids=["serialize", "iterdump"])
def test_connection_view_includes_its_open_transaction(tmp_path: Path, serialize: bool) -> None:
    from pytest_memdb.sqlite.dumps import save_connection_view
    from pytest_memdb.sqlite.memory import MemoryDatabase, unique_name

    database = MemoryDatabase(unique_name("keep", "view"))
    conn = sqlite3.connect(database.sqlite_uri, uri=True, isolation_level=None)
    try:
        conn.execute("CREATE TABLE user (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO user (name) VALUES ('before')")
        conn.execute("BEGIN")  # the rollback-mode outer transaction
        conn.execute("SAVEPOINT sp")
        conn.execute("INSERT INTO user (name) VALUES ('released')")
        conn.execute("RELEASE sp")
        conn.execute("SAVEPOINT pending")
        conn.execute("INSERT INTO user (name) VALUES ('pending')")
        source = conn if serialize else _NoSerialize(conn)
        path = save_connection_view(source, tmp_path / "view.sqlite")  # type: ignore[arg-type]
        assert conn.in_transaction
        conn.execute("ROLLBACK")
    finally:
        conn.close()
        database.close()
    assert names_in(path) == ["before", "released", "pending"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["view.sqlite"]


AWKWARD_MODELS = """
from sqlalchemy import Computed, ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "app_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    shout: Mapped[str] = mapped_column(String(50), Computed("upper(name)", persisted=True))
    mentor_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))


class Note(Base):
    __tablename__ = "Odd Note"
    __table_args__ = {"prefixes": ["UNLOGGED"]}
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id"))
    body: Mapped[str | None]
"""

AWKWARD = """
from sqlalchemy import text

from models import Note, User


def test_fails(memdb_sync_session):
    s = memdb_sync_session
    odd = User(name="tab\\there\\nnewline \\\\ back")
    s.add(odd)
    s.flush()
    mentee = User(name="mentee", mentor_id=odd.id)
    s.add(mentee)
    s.flush()
    s.add_all([Note(user_id=mentee.id, body=None), Note(user_id=odd.id, body="ünïcode")])
    s.commit()
    s.execute(text("CREATE TABLE made_here (x int)"))
    s.execute(text("INSERT INTO app_user (name) VALUES ('pending')"))
    assert False
"""


def test_a_rollback_dump_loads_whatever_the_rows_hold(
    pytester: pytest.Pytester, pg_server: Any
) -> None:
    """PostgreSQL's rollback mode: the rows are read through the held session, between
    pg_dump's schema and its constraints: a self-referencing foreign key, a generated
    column, a quoted unlogged table, NULL, tabs, newlines, backslashes and non-ASCII text load
    back as they were, with the session's pending row, and the sequence goes on after them.
    A table the test created in its transaction is not in the template's schema: named."""
    pytester.makepyfile(models=AWKWARD_MODELS, test_keep=AWKWARD)
    (pytester.path / "seed.sql").write_text(SEED)
    write_ini(pytester, memdb_metadata="models:Base", memdb_load="seed.sql",
              memdb_isolation="rollback", pythonpath=".")  # fmt: skip
    url = pg_server.url("postgres", "psycopg")
    result = pytester.runpytest(f"--memdb-postgresql={url}", "--memdb-keep-failed", "dumps")
    result.assert_outcomes(failed=1)
    path = pytester.path / "dumps" / "test_keep.py_test_fails.sql"
    result.stdout.fnmatch_lines(
        [
            "memdb: the database as the test left it (uncommitted writes included; not the "
            f"tables it created: public.made_here) is in {path}"
        ]
    )
    names, notes = names_in_sql(path, pg_server, 'SELECT user_id, body FROM "Odd Note" ORDER BY id')
    assert names == [*BASE, "tab\there\nnewline \\ back", "mentee", "pending"]
    assert notes == [(5, None), (4, "ünïcode")]  # an UNLOGGED table's rows too


def test_without_a_recent_enough_pg_dump_the_error_lists_where_it_looked() -> None:
    """A server newer than every ``pg_dump`` installed (an older one refuses it): the error
    names each place looked at and what was there, and what to install."""
    from pytest_memdb.errors import MemdbError
    from pytest_memdb.postgresql.dumps import find_pg_dump

    with pytest.raises(MemdbError) as raised:
        find_pg_dump(990000)  # PostgreSQL 99
    message = str(raised.value)
    assert "no pg_dump of version 99 or later was found" in message
    assert re.search(r"  - \S+/pg_dump \(PATH\): pg_dump \(PostgreSQL\) \d+.*too old", message)
    assert "  - no pg_dump in " in message  # the folders without one, on one line
    assert "/opt/homebrew/opt/postgresql@*/bin" in message
    assert "apt-get install postgresql-client-99" in message
