"""``memdb_strict``: a test that reaches a database other than its own fails (SQLite, and
with ``memdb_postgresql`` PostgreSQL too)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import APP_USER_MODELS, write_ini

pytestmark = pytest.mark.usefixtures("app_db")

TESTS = """
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine


def test_1_missed_engine_is_stopped_before_the_file_is_made(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/real.db")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        pass  # an app that swallows errors must not hide it
    assert not (tmp_path / "real.db").exists()


async def test_2_engines_on_memdb_url_are_allowed(memdb_url, memdb):
    engine = create_async_engine(memdb_url)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM app_user"))).scalar() == 3
    await engine.dispose()
    sync = create_engine(memdb.sync_url)
    with sync.connect() as conn:
        conn.execute(text("SELECT 1"))
    sync.dispose()


async def test_3_async_missed_engine(tmp_path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/other.db")
    with pytest.raises(Exception, match="memdb_strict"):
        async with engine.connect():
            pass
    await engine.dispose()


def test_4_without_memdb_at_all_is_checked_too(tmp_path):
    engine = create_engine("sqlite://")
    with engine.connect():
        pass
"""


SEED = "INSERT INTO app_user (name) VALUES ('ada'), ('brian'), ('grace');\n"


def _project(pytester: pytest.Pytester, tests: str, **options: str) -> None:
    """A strict project both backends build: models and a seed, no SQLite file."""
    pytester.makepyfile(models=APP_USER_MODELS, test_strict=tests)
    (pytester.path / "seed.sql").write_text(SEED)
    write_ini(
        pytester,
        memdb_metadata="models:Base",
        memdb_load="seed.sql",
        memdb_strict="true",
        pythonpath=".",
        **options,
    )


def test_strict_mode_fails_tests_that_open_another_sqlite_database(
    pytester: pytest.Pytester, switch: list[str]
) -> None:
    """On PostgreSQL too: none of the test's databases is a SQLite one (an engine still on
    the app's ``sqlite:///app.db`` missed the swap), and ``memdb_url`` is the test's own."""
    _project(pytester, TESTS)
    result = pytester.runpytest(*switch, "-p", "no:cacheprovider", "-rE")
    # 1, 3 and 4 error at teardown, also where the test swallowed the error (1) or expected
    # it (3); 4 fails in its body too (an in-memory database is another database as well).
    result.assert_outcomes(passed=3, failed=1, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_1_missed_engine_is_stopped_before_the_file_is_made*",
            "pytest-memdb (memdb_strict): this test opened the SQLite database '*real.db' "
            "through SQLAlchemy, which is not one of its memdb databases (it has none), at "
            "*test_strict.py:* (test_1_missed_engine_is_stopped_before_the_file_is_made)*",
        ]
    )
    result.stdout.fnmatch_lines(["*opened the SQLite database ':memory:'*"])
    result.stdout.fnmatch_lines(["memdb: metadata=*, strict=on (memdb_strict)"])  # the header


OTHER_POSTGRESQL = """
import os

from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

DEV_URL = os.environ["DEV_DATABASE_URL"]  # the app's settings: its dev database


def test_1_the_apps_dev_database(memdb_sync_session):
    engine = create_engine(DEV_URL)
    try:
        with engine.connect() as conn:  # here: test_1_the_apps_dev_database
            conn.execute(text("SELECT 1"))
    except Exception:
        pass  # an app that swallows errors must not hide it
    engine.dispose()


async def test_2_async_and_another_driver(memdb_session):
    engine = create_async_engine(DEV_URL.replace("+psycopg", "+asyncpg"))
    try:
        async with engine.connect():  # here: test_2_async_and_another_driver
            pass
    finally:
        await engine.dispose()


def test_3_engines_on_memdb_url_are_allowed(memdb, memdb_url):
    engine = create_engine(memdb.sync_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM app_user")).scalar() == 3
    engine.dispose()


def test_4_and_the_next_tests_clones_made_ahead_meanwhile(memdb_sync_session):
    assert memdb_sync_session.execute(text("SELECT count(*) FROM app_user")).scalar() == 3


def test_5_without_memdb_at_all_is_checked_too():
    engine = create_engine(DEV_URL)
    with engine.connect():
        pass
"""


def test_strict_mode_on_postgresql_fails_tests_that_open_another_postgresql_database(
    pytester: pytest.Pytester, pg_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the switch, a PostgreSQL database that is not one of the test's (the app's dev
    database from its settings; here the server's ``postgres`` one) is refused before the
    driver connects, by any driver, and the test errors at teardown naming the URL and
    the line. The test's own clone by ``memdb_url`` is allowed, and so are the plugin's own
    connections while a test runs (copy mode makes the next clone in the background)."""
    dev = pg_server.url("postgres", "psycopg")
    monkeypatch.setenv("DEV_DATABASE_URL", dev)
    _project(pytester, OTHER_POSTGRESQL)
    result = pytester.runpytest(f"--memdb-postgresql={dev}", "-p", "no:cacheprovider", "-rE")
    result.assert_outcomes(passed=3, failed=2, errors=3)
    shown = dev.replace("postgresql+psycopg://", "")
    for number, line in enumerate(OTHER_POSTGRESQL.splitlines()):  # it starts with a newline
        if "# here: " in line:
            function = line.split("# here: ")[1]
            result.stdout.fnmatch_lines(
                [
                    f"*ERROR at teardown of {function}*",
                    "pytest-memdb (memdb_strict): this test opened the PostgreSQL database "
                    f"'postgresql+*://{shown}' through SQLAlchemy, which is not one of its "
                    f"memdb databases (memdb_*), at *test_strict.py:{number} ({function}). "
                    "An engine the swap onto memdb missed? Name it (or the sessionmaker that "
                    "uses it) in memdb_bind, or build it from memdb_url.",
                ]
            )
    result.stdout.fnmatch_lines(
        ["*this test opened the PostgreSQL database*which is not one of its memdb databases "
         "(it has none)*test_5_without_memdb_at_all_is_checked_too*"]
    )  # fmt: skip


def test_without_the_switch_postgresql_connections_are_not_judged(
    pytester: pytest.Pytester, pg_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite, strict mode judges SQLite connections only: a PostgreSQL database a test
    uses (another plugin's, a service's) is not a swap onto SQLite that missed."""
    monkeypatch.setenv("DEV_DATABASE_URL", pg_server.url("postgres", "psycopg"))
    _project(pytester, OTHER_POSTGRESQL.split("async def test_2")[0])
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_without_strict_nothing_is_checked(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(
        test_lax="""
        from sqlalchemy import create_engine


        def test_other_database(tmp_path):
            with create_engine(f"sqlite:///{tmp_path}/real.db").connect():
                pass
            assert (tmp_path / "real.db").exists()
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*strict=on*")


def test_strict_mode_lets_the_plugin_build_its_template_from_migrations(
    pytester: pytest.Pytester,
) -> None:
    # Migrations run on a build database of the plugin's own, while the first test sets up:
    # that is not the test opening another database.
    from alembic import command
    from alembic.config import Config

    command.init(Config(str(pytester.path / "alembic.ini")), str(pytester.path / "migrations"))
    (pytester.path / "migrations" / "versions" / "0001_items.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\nrevision = '0001'\n"
        "down_revision = None\n\n\ndef upgrade():\n"
        "    op.create_table('items', sa.Column('id', sa.Integer(), primary_key=True))\n"
    )
    write_ini(pytester, memdb_alembic="alembic.ini", memdb_strict="true")
    pytester.makepyfile(
        test_migrated="""
        from sqlalchemy import text


        def test_the_migrated_table_is_there(memdb_sync_session):
            assert memdb_sync_session.execute(text("SELECT count(*) FROM items")).scalar() == 0
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["memdb: alembic=*alembic.ini (head), isolation=copy, restore=*"])


WHERE = """import asyncio
import threading

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session


def quietly(connect):
    try:
        connect()
    except Exception:
        pass  # refused: the message is the test's teardown error


def test_sync_engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/a.db")
    with pytest.raises(Exception, match="memdb_strict"):
        engine.connect()  # here: test_sync_engine


def test_begin_in_a_with(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/a.db")
    try:
        with engine.begin() as conn:  # here: test_begin_in_a_with
            conn.execute(text("SELECT 1"))
    except Exception:
        pass


def test_orm_session(tmp_path):
    with Session(create_engine(f"sqlite:///{tmp_path}/a.db")) as session:
        quietly(lambda: session.execute(text("SELECT 1")))  # here: <lambda>


async def test_async_session_through_the_greenlet(tmp_path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/a.db")
    async with AsyncSession(engine) as session:
        try:
            await session.execute(text("SELECT 1"))  # here: test_async_session_through_the_greenlet
        except Exception:
            pass
    await engine.dispose()


def test_a_thread_that_runs_only_sqlalchemy(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/a.db")
    thread = threading.Thread(target=engine.connect)
    thread.start(); thread.join()  # here: test_a_thread_that_runs_only_sqlalchemy


async def test_an_executor_thread(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/a.db")
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, engine.connect)  # here: test_an_executor_thread
    except Exception:
        pass
"""


def test_strict_names_the_users_line_that_connected(pytester: pytest.Pytester) -> None:
    """Never SQLAlchemy's generated code (``<sqlalchemy generated _go() wrapper ...>``) nor
    "an unknown place": the line of the test that connected, through a greenlet, a ``with``,
    an ORM session, or a thread that runs no code of the test's (then where the test was)."""
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_strict="true")
    pytester.makepyfile(test_where=WHERE)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6, errors=6)
    lines = WHERE.splitlines()
    for number, line in enumerate(lines, start=1):
        if "# here: " in line:
            function = line.split("# here: ")[1]
            result.stdout.fnmatch_lines(
                [
                    f"*which is not one of its memdb databases (it has none), at "
                    f"*test_where.py:{number} ({function})*"
                ]
            )
    assert "generated" not in result.stdout.str()
    assert "unknown place" not in result.stdout.str()


NESTED_DOCS = """
from sqlalchemy import create_engine


def test_a_docs_example_with_its_own_database(tmp_path):
    with create_engine(f"sqlite:///{tmp_path}/example.db").connect():
        pass
"""

NESTED_OUTER = """
import subprocess
import sys

import pytest


@pytest.mark.parametrize("extra", [[], ["-o", "memdb_strict=false"]])
def test_runs_the_docs_tests(extra):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "docs_tests", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(done.stdout)
    assert done.returncode == 0
"""


def test_a_nested_run_of_the_same_ini_knows_and_says_how_to_scope_strict(
    pytester: pytest.Pytester,
) -> None:
    """A suite that runs its docs' tests in a pytest subprocess: that run reads the same ini
    file, so memdb_strict applies there too. It knows it is nested (the header says so), the
    message says how to turn strict off for it, and ``-o memdb_strict=false`` does."""
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_strict="true")
    pytester.makepyfile(test_outer=NESTED_OUTER)
    (pytester.path / "docs_tests").mkdir()
    (pytester.path / "docs_tests" / "test_docs.py").write_text(NESTED_DOCS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "test_outer.py", "-rA", timeout=240
    )
    result.assert_outcomes(passed=1, failed=1)
    ini = pytester.path / "pytest.ini"
    result.stdout.fnmatch_lines(
        [
            f"memdb: started by a test of another run of {ini}: memdb_strict applies here too "
            "(-o memdb_strict=false turns it off for this run)",
            "*pytest-memdb (memdb_strict): this test opened the SQLite database '*example.db'*"
            f"This pytest run was started by a test of another run of the same ini file "
            f"({ini})*start it with -o memdb_strict=false.",
        ]
    )
