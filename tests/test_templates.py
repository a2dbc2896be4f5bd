"""Templates built from the user's models (memdb_metadata), alone or on top of a fixture file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.helpers import digest, write_ini

MODELS = """
from sqlalchemy import ForeignKey, String, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Book(Base):
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))


@event.listens_for(Base.metadata, "after_create")
def _built(target, connection, **kw):
    print("CREATE_ALL ran")
    with open("create_all.log", "a") as log:
        log.write("x\\n")


plain_metadata = Base.metadata
not_a_model = 42


def a_function():
    pass
"""

TABLES = """
from sqlalchemy import text


def tables(session):
    rows = session.execute(text("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"))
    return ",".join(rows.scalars())
"""


def _project(pytester: pytest.Pytester, **ini: str) -> None:
    pytester.makepyfile(models=MODELS, tablehelp=TABLES)
    write_ini(pytester, **ini)


@pytest.mark.parametrize("isolation", ["copy", "rollback", "session"])
def test_metadata_template_has_the_models_tables_and_is_isolated(
    pytester: pytest.Pytester, isolation: str
) -> None:
    _project(pytester, memdb_metadata="models:Base", memdb_isolation=isolation)
    pytester.makepyfile(
        """
        from sqlalchemy import func, select
        from models import Author
        from tablehelp import tables

        def test_1_write(memdb_sync_session):
            assert tables(memdb_sync_session) == "author,book"
            memdb_sync_session.add(Author(name="ada"))
            memdb_sync_session.commit()

        async def test_2_next_test(memdb_session):
            count = await memdb_session.scalar(select(func.count()).select_from(Author))
            print("COUNT", count)
        """
    )

    result = pytester.runpytest("-s", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=2)
    # copy and rollback: the next test starts from the empty template; session: it persists
    result.stdout.fnmatch_lines([f"*COUNT {1 if isolation == 'session' else 0}"])
    assert (pytester.path / "create_all.log").read_text() == "x\n"  # built once


def test_models_added_by_test_modules_during_collection_are_included(
    pytester: pytest.Pytester,
) -> None:
    _project(pytester, memdb_metadata="models:Base")
    pytester.makepyfile(
        test_extra="""
        from sqlalchemy.orm import Mapped, mapped_column
        from models import Base
        from tablehelp import tables

        class Note(Base):
            __tablename__ = "note"
            id: Mapped[int] = mapped_column(primary_key=True)

        def test_tables(memdb_sync_session):
            assert tables(memdb_sync_session) == "author,book,note"
        """
    )

    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_file_and_metadata_add_only_missing_tables_and_never_write_the_file(
    pytester: pytest.Pytester, app_db: Path
) -> None:
    before = digest(app_db)
    _project(pytester, memdb_file="data/app.sqlite", memdb_metadata="models:Base")
    pytester.makepyfile(
        """
        from sqlalchemy import text
        from tablehelp import tables

        def test_tables(memdb_sync_session):
            assert tables(memdb_sync_session) == "author,book,user"
            users = memdb_sync_session.execute(text("SELECT count(*) FROM user")).scalar()
            assert users == 3
        """
    )

    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert digest(app_db) == before


def test_an_existing_table_of_the_file_is_kept_not_recreated(pytester: pytest.Pytester) -> None:
    """The file has an ``author`` table with a row: create_all must not replace it."""
    path = pytester.path / "data" / "authors.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE author (id INTEGER PRIMARY KEY, name VARCHAR(50))")
    conn.execute("INSERT INTO author (name) VALUES ('from the file')")
    conn.commit()
    conn.close()
    before = digest(path)
    _project(pytester, memdb_file="data/authors.sqlite", memdb_metadata="models:Base")
    pytester.makepyfile(
        """
        from sqlalchemy import select
        from models import Author
        from tablehelp import tables

        def test_rows(memdb_sync_session):
            assert memdb_sync_session.scalars(select(Author.name)).all() == ["from the file"]
            assert tables(memdb_sync_session) == "author,book"
        """
    )

    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert digest(path) == before


def test_command_line_and_marker_choose_the_metadata(pytester: pytest.Pytester) -> None:
    _project(pytester, memdb_metadata="models:not_a_model")  # wrong, but overridden
    pytester.makepyfile(
        other_models="""
        from sqlalchemy import Column, Integer, MetaData, Table

        metadata = MetaData()
        Table("gadget", metadata, Column("id", Integer, primary_key=True))
        """
    )
    pytester.makepyfile(
        """
        import pytest
        from tablehelp import tables

        def test_cli(memdb_sync_session):
            assert tables(memdb_sync_session) == "author,book"

        @pytest.mark.memdb(metadata="other_models:metadata")
        def test_marker(memdb_sync_session):
            assert tables(memdb_sync_session) == "gadget"
        """
    )

    result = pytester.runpytest("-p", "no:cacheprovider", "--memdb-metadata", "models:Base")

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["memdb: metadata=models:Base (--memdb-metadata), isolation=copy, restore=*"]
    )


def test_a_plain_metadata_object_works(pytester: pytest.Pytester) -> None:
    _project(pytester, memdb_metadata="models:plain_metadata")
    pytester.makepyfile(
        """
        from tablehelp import tables

        def test_tables(memdb_sync_session):
            assert tables(memdb_sync_session) == "author,book"
        """
    )

    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("dotted", "expected"),
    [
        (
            "nosuchmodule:Base",
            "pytest-memdb: memdb_metadata in pytest.ini 'nosuchmodule:Base': importing module "
            "'nosuchmodule' (from *) failed: ModuleNotFoundError: No module named 'nosuchmodule'",
        ),
        (
            "models:Missing",
            "pytest-memdb: memdb_metadata in pytest.ini 'models:Missing': module 'models' has no "
            "attribute 'Missing'.",
        ),
        (
            "models:not_a_model",
            "pytest-memdb: memdb_metadata in pytest.ini 'models:not_a_model' is an int (42); "
            "expected a DeclarativeBase subclass (class Base(DeclarativeBase)) or a "
            "sqlalchemy.MetaData.",
        ),
        (
            "models:a_function",
            "pytest-memdb: memdb_metadata in pytest.ini 'models:a_function' is a function "
            "(<function a_function at *>); expected a DeclarativeBase subclass*",
        ),
    ],
)
def test_a_bad_metadata_path_errors_the_tests_that_use_it(
    pytester: pytest.Pytester, dotted: str, expected: str
) -> None:
    _project(pytester, memdb_metadata=dotted)
    pytester.makepyfile(
        """
        def test_uses_db(memdb):
            pass

        def test_no_db():
            pass
        """
    )

    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_uses_db*", expected])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


def test_an_option_given_with_dash_o_is_named_as_such(pytester: pytest.Pytester) -> None:
    """``-o memdb_metadata=...`` on the command line overrides the ini file's line: an error
    in it names ``-o memdb_metadata``, not the ini file (where the user would look in vain)."""
    _project(pytester, memdb_metadata="models:Base")
    pytester.makepyfile("def test_uses_db(memdb):\n    pass\n")

    result = pytester.runpytest("-p", "no:cacheprovider", "-o", "memdb_metadata=nosuch:Base")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["pytest-memdb: -o memdb_metadata 'nosuch:Base': importing*"])
    result.stdout.no_fnmatch_line("*memdb_metadata in pytest.ini*")


def test_a_module_that_raises_on_import_is_reported_with_its_error(
    pytester: pytest.Pytester,
) -> None:
    write_ini(pytester, memdb_metadata="broken:Base")
    pytester.makepyfile(broken="raise RuntimeError('models need DATABASE_URL')")
    pytester.makepyfile("def test_uses_db(memdb):\n    pass\n")

    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*memdb_metadata in pytest.ini 'broken:Base': importing module 'broken' (from *) "
            "failed: RuntimeError: models need DATABASE_URL"
        ]
    )


@pytest.mark.parametrize("raw", ["models.Base", "models:", ":Base", "models:Base extra"])
def test_a_malformed_metadata_option_is_a_usage_error(pytester: pytest.Pytester, raw: str) -> None:
    _project(pytester, memdb_metadata=raw)
    pytester.makepyfile("def test_nothing():\n    pass\n")

    result = pytester.runpytest("-p", "no:cacheprovider")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*memdb_metadata in pytest.ini got {raw!r}; expected a dotted path such as*"]
    )


def test_each_xdist_worker_builds_its_own_metadata_template(pytester: pytest.Pytester) -> None:
    _project(pytester, memdb_metadata="models:Base")
    pytester.makepyfile(
        """
        import pytest
        from models import Author

        @pytest.mark.parametrize("n", range(6))
        def test_write(memdb, memdb_sync_session, n):
            memdb_sync_session.add(Author(name=f"a{n}"))
            memdb_sync_session.commit()
            assert memdb_sync_session.query(Author).count() == 1
        """
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")

    result.assert_outcomes(passed=6)
    assert (pytester.path / "create_all.log").read_text() == "x\nx\n"  # one per worker
