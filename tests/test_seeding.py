"""Seeding a template once: memdb_load steps and the pytest_memdb_template hook."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pytest_memdb.core.config import LoadStep, Target
from pytest_memdb.core.templates import split_sql
from pytest_memdb.errors import MemdbError
from pytest_memdb.sqlite.build import build_template
from pytest_memdb.sqlite.memory import MemoryDatabase, unique_name
from tests.helpers import digest, write_ini

MODELS = """
from sqlalchemy import String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


def _log(what):
    with open("seed.log", "a") as log:
        log.write(what + "\\n")


def add_callable_row(conn):
    _log("add_callable_row")
    # runs after the SQL script: it sees the script's rows
    count = conn.execute(text("SELECT count(*) FROM author")).scalar()
    conn.execute(text("INSERT INTO author (name) VALUES (:n)"), {"n": f"callable after {count}"})


def explode(conn):
    _log("explode")
    raise ValueError("the seed data is missing")


async def async_seed(conn):
    pass


not_callable = 7
"""

SEED_SQL = """\
-- authors; with a semicolon in a comment
INSERT INTO author (name) VALUES ('semi;colon');
/* a block comment; with a semicolon */
INSERT INTO author (name) VALUES ('it''s');
CREATE TABLE audit (msg TEXT);
CREATE TRIGGER author_audit AFTER INSERT ON author BEGIN
    INSERT INTO audit VALUES ('added; ' || new.name);
END;
INSERT INTO author (name) VALUES ('last, no semicolon')
"""

NAMES = """
from sqlalchemy import text


def names(session):
    return session.execute(text("SELECT name FROM author ORDER BY id")).scalars().all()
"""


def _project(pytester: pytest.Pytester, **ini: str) -> None:
    pytester.makepyfile(models=MODELS, names_helper=NAMES)
    (pytester.path / "seed.sql").write_text(SEED_SQL)
    ini.setdefault("memdb_metadata", "models:Base")
    write_ini(pytester, **ini)


def _log(pytester: pytest.Pytester) -> list[str]:
    path = pytester.path / "seed.log"
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("isolation", ["copy", "rollback", "session"])
def test_load_steps_run_in_order_once_and_every_test_sees_them(
    pytester: pytest.Pytester, isolation: str
) -> None:
    _project(
        pytester,
        memdb_load="\n    seed.sql\n    models:add_callable_row",
        memdb_isolation=isolation,
    )
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy import text
        from names_helper import names

        SEEDED = ["semi;colon", "it's", "last, no semicolon", "callable after 3"]

        @pytest.mark.parametrize("n", range(3))
        def test_seeded(memdb_sync_session, n):
            assert names(memdb_sync_session)[:4] == SEEDED
            audit = memdb_sync_session.execute(text("SELECT msg FROM audit")).scalars().all()
            assert audit[:2] == ["added; last, no semicolon", "added; callable after 3"]
            memdb_sync_session.execute(text(f"INSERT INTO author (name) VALUES ('extra{n}')"))
            memdb_sync_session.commit()
            print("AUTHORS", len(names(memdb_sync_session)))
        """
    )

    result = pytester.runpytest("-s", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=3)
    assert _log(pytester) == ["add_callable_row"]  # once per session
    counts = [line.split()[-1] for line in result.outlines if "AUTHORS" in line]
    assert counts == (["5", "6", "7"] if isolation == "session" else ["5", "5", "5"])


def test_hook_runs_after_load_steps_in_the_same_transaction(pytester: pytest.Pytester) -> None:
    _project(pytester, memdb_load="seed.sql")
    pytester.makeconftest(
        """
        from sqlalchemy import text

        def pytest_memdb_template(connection, target):
            count = connection.execute(text("SELECT count(*) FROM author")).scalar()
            connection.execute(
                text("INSERT INTO author (name) VALUES (:n)"),
                {"n": f"hook saw {count} for {target.fixture}"},
            )
        """
    )
    pytester.makepyfile(
        """
        from names_helper import names

        def test_seeded(memdb_sync_session):
            assert names(memdb_sync_session)[-1] == "hook saw 3 for memdb"
        """
    )

    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_hook_with_unknown_arguments_is_refused_by_pluggy(pytester: pytest.Pytester) -> None:
    """The hook is declared through pytest_addhooks, so a misspelt argument fails early."""
    _project(pytester)
    pytester.makeconftest("def pytest_memdb_template(connection, conifg):\n    pass\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    assert result.ret != pytest.ExitCode.OK
    result.stderr.fnmatch_lines(["*pytest_memdb_template*conifg*"])


def test_marker_load_replaces_the_ini_steps_for_one_test(pytester: pytest.Pytester) -> None:
    _project(pytester, memdb_load="seed.sql")
    pytester.makepyfile(
        """
        import pytest
        from names_helper import names

        def test_ini_steps(memdb_sync_session):
            assert len(names(memdb_sync_session)) == 3

        @pytest.mark.memdb(load=["models:add_callable_row"])
        def test_marker_steps(memdb_sync_session):
            assert names(memdb_sync_session) == ["callable after 0"]
        """
    )

    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_a_failing_sql_statement_errors_every_test_of_that_template_only(
    pytester: pytest.Pytester,
) -> None:
    _project(pytester, memdb_load="\n    models:add_callable_row\n    bad.sql")
    (pytester.path / "bad.sql").write_text(
        "INSERT INTO author (name) VALUES ('x');\nINSERT INTO author (name) VALUES ('x');\n"
    )
    before = digest(pytester.path / "bad.sql")
    pytester.makepyfile(
        """
        import pytest
        from names_helper import names

        def test_a(memdb):
            pass

        def test_b(memdb_session):
            pass

        @pytest.mark.memdb(load=["seed.sql"])
        def test_other_template(memdb_sync_session):
            assert len(names(memdb_sync_session)) == 3

        def test_no_database():
            pass
        """
    )

    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_a*",
            "pytest-memdb: seeding the template failed while running statement 2 of the SQL "
            "script '*bad.sql' (entry 'bad.sql' in memdb_load in pytest.ini): INSERT INTO "
            "author (name) VALUES ('x'): IntegrityError: *UNIQUE constraint failed: author.name*",
        ]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    assert _log(pytester) == ["add_callable_row"]  # tried once, not once per test
    assert digest(pytester.path / "bad.sql") == before


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            "models:explode",
            "pytest-memdb: seeding the template failed while running the callable "
            "'models:explode' (from memdb_load in pytest.ini): ValueError: the seed data is "
            "missing",
        ),
        (
            "models:async_seed",
            "pytest-memdb: memdb_load in pytest.ini: 'models:async_seed' is async; load steps "
            "get a sync SQLAlchemy Connection*",
        ),
        (
            "models:not_callable",
            "pytest-memdb: memdb_load in pytest.ini: 'models:not_callable' is an int (7), not a "
            "callable taking a sync SQLAlchemy Connection.",
        ),
        (
            "models:nothing_here",
            "pytest-memdb: memdb_load in pytest.ini 'models:nothing_here': module 'models' has "
            "no attribute 'nothing_here'.",
        ),
        (
            "missing.sql",
            "pytest-memdb: seeding the template failed while reading the SQL script "
            "'*missing.sql' (entry 'missing.sql' in memdb_load in pytest.ini): No such file or "
            "directory",
        ),
    ],
)
def test_a_failing_step_is_named_with_its_error(
    pytester: pytest.Pytester, entry: str, expected: str
) -> None:
    _project(pytester, memdb_load=entry)
    pytester.makepyfile("def test_uses_db(memdb):\n    pass\n")

    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error::RuntimeWarning")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([expected])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*was never awaited*")


def test_a_failing_hook_names_its_implementation(pytester: pytest.Pytester) -> None:
    _project(pytester)
    pytester.makeconftest(
        """
        def pytest_memdb_template(connection):
            raise KeyError("tenant")
        """
    )
    pytester.makepyfile("def test_uses_db(memdb):\n    pass\n")

    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "pytest-memdb: seeding the template failed in the pytest_memdb_template hook "
            "implementation pytest_memdb_template (*conftest.py:1): KeyError: 'tenant'"
        ]
    )


@pytest.mark.parametrize("entry", ["seed.txt", "models.seed", "not a path"])
def test_an_entry_that_is_neither_sql_nor_callable_is_a_usage_error(
    pytester: pytest.Pytester, entry: str
) -> None:
    _project(pytester, memdb_load=entry)
    pytester.makepyfile("def test_nothing():\n    pass\n")

    result = pytester.runpytest("-p", "no:cacheprovider")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*memdb_load in pytest.ini got {entry!r}; each entry is a path to a .sql file*"]
    )


def test_a_failing_seed_leaves_nothing_half_applied(tmp_path: Path) -> None:
    """DDL and rows of the steps before the failing one are rolled back with it.

    A second connection keeps the template's database alive after the builder gives up
    on it, so what the failed seeding left behind can be looked at.
    """
    name = unique_name("test", "half")
    watcher = MemoryDatabase(name)
    script = tmp_path / "steps.sql"
    script.write_text(
        "CREATE TABLE a (x UNIQUE);\nINSERT INTO a VALUES (1);\nINSERT INTO a VALUES (1);\n"
    )
    target = Target(
        file=None,
        file_origin="",
        isolation="copy",
        metadata=None,
        load=(LoadStep("steps.sql", "a test", script=script),),
    )
    try:
        with pytest.raises(MemdbError, match="statement 3 of the SQL script"):
            build_template(target, name, base_dir=tmp_path)
        tables = watcher.anchor.execute("SELECT name FROM sqlite_master").fetchall()
        assert tables == []
    finally:
        watcher.close()


@pytest.mark.parametrize(
    ("script", "statements"),
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1;", "SELECT 2;"]),
        ("SELECT ';'; -- x; y\nSELECT 2", ["SELECT ';';", "-- x; y\nSELECT 2"]),
        ("/* a; b */ SELECT 1;\n-- only a comment\n", ["/* a; b */ SELECT 1;"]),
        (
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; SELECT 2; END; SELECT 3;",
            ["CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; SELECT 2; END;", "SELECT 3;"],
        ),
        ("", []),
        (";;", []),
    ],
)
def test_split_sql_splits_where_sqlite_says_a_statement_ends(
    script: str, statements: list[str]
) -> None:
    assert split_sql(script) == statements
    for statement in statements:
        assert sqlite3.complete_statement(statement + "\n;")
