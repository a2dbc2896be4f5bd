"""``memdb_takeover``: engines a suite makes itself, on the test's database, by ini lines only.

Each outer test writes a tutorial-style suite (its own ``create_engine("sqlite:///./test.db")``
in a fixture, a session-scoped engine, an async variant, an engine made at import) into a
pytester project, leaves its code as it is, and adds ini lines: every test must keep its
outcome, a row written through the taken-over engine in one test must be absent in the
next (in ``copy`` and ``rollback`` isolation), and no ``test.db`` may appear on disk.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.helpers import write_ini

MODELS = """
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


    class Base(DeclarativeBase):
        pass


    class Item(Base):
        __tablename__ = "item"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]
"""

# The tutorial's way: a function-scoped fixture makes the engine, creates the tables, hands
# out a sessionmaker and drops the tables after.
FUNCTION_CONFTEST = """
    import pytest
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from app.models import Base


    @pytest.fixture
    def session_factory():
        engine = create_engine("sqlite:///./test.db", connect_args={"check_same_thread": False})
        Base.metadata.create_all(engine)
        yield sessionmaker(bind=engine, autoflush=False)
        Base.metadata.drop_all(engine)
"""

FUNCTION_TESTS = """
    from sqlalchemy import func, select

    from app.models import Item


    def count(session):
        return session.scalar(select(func.count()).select_from(Item))


    def test_1_writes_through_the_suites_engine(session_factory, memdb_sync_session):
        with session_factory() as session:
            session.add(Item(name="one"))
            session.commit()
            assert count(session) == 1
        assert count(memdb_sync_session) == 1  # the same database memdb hands out


    def test_2_sees_the_template(session_factory):
        with session_factory() as session:
            assert count(session) == 0


    def test_3_rolls_back_its_own_session(session_factory):
        with session_factory() as session:
            session.add(Item(name="gone"))
            session.flush()
            assert count(session) == 1
            session.rollback()
            assert count(session) == 0
"""

# An engine held by a session-scoped fixture: its pool outlives every test.
SESSION_CONFTEST = """
    import pytest
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from app.models import Base


    @pytest.fixture(scope="session")
    def engine():
        engine = create_engine("sqlite:///./test.db")
        Base.metadata.create_all(engine)  # before any test
        yield engine
        Base.metadata.drop_all(engine)  # after the last one
        engine.dispose()


    @pytest.fixture
    def session(engine):
        with Session(engine) as session:
            yield session
"""

SESSION_TESTS = """
    import pytest
    from sqlalchemy import func, select

    from app.models import Item


    def count(session):
        return session.scalar(select(func.count()).select_from(Item))


    def test_1_writes(session):
        session.add(Item(name="one"))
        session.commit()
        assert count(session) == 1


    def test_2_sees_the_template(session):
        assert count(session) == 0
        session.add(Item(name="two"))
        session.commit()


    @pytest.mark.memdb(isolation="session")
    def test_3_on_the_session_database(session, memdb):
        assert memdb.isolation == "session"
        assert count(session) == 0
        session.add(Item(name="kept"))
        session.commit()


    @pytest.mark.memdb(isolation="session")
    def test_4_the_pool_follows_the_test(session):
        # the pooled connection of test 3 was not kept: this one is on the session database
        assert list(session.scalars(select(Item.name))) == ["kept"]


    def test_5_back_on_the_template(session, memdb_sync_session):
        assert count(session) == 0
        assert count(memdb_sync_session) == 0
"""

ASYNC_CONFTEST = """
    import pytest
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from app.models import Base


    @pytest.fixture
    async def session():
        engine = create_async_engine("sqlite+aiosqlite:///./test.db")
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            yield session
        await engine.dispose()


    @pytest.fixture(scope="session")
    def shared_engine():
        return create_async_engine("sqlite+aiosqlite:///./test.db")
"""

ASYNC_TESTS = """
    from sqlalchemy import func, select, text
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.models import Item


    async def count(session):
        return await session.scalar(select(func.count()).select_from(Item))


    async def test_1_writes(session, memdb_session):
        session.add(Item(name="one"))
        await session.commit()
        assert await count(session) == 1
        assert await count(memdb_session) == 1


    async def test_2_sees_the_template(session):
        assert await count(session) == 0


    async def test_3_session_scoped_async_engine(shared_engine):
        async with AsyncSession(shared_engine) as session:
            session.add(Item(name="three"))
            await session.commit()
            assert await count(session) == 1


    async def test_4_its_pool_is_not_reused(shared_engine):
        # another event loop, another test: the connection of test 3 is gone
        async with shared_engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM item"))).scalar() == 0
"""

# The older tutorial: the engine and create_all at import (outside any test).
IMPORT_TESTS = """
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.orm import sessionmaker

    from app.models import Base, Item

    engine = create_engine("sqlite:///./test.db", connect_args={"check_same_thread": False})
    Base.metadata.create_all(bind=engine)
    TestingSessionLocal = sessionmaker(autocommit=False, autoflush=False, bind=engine)


    def test_1_writes():
        with TestingSessionLocal() as session:
            session.add(Item(name="one"))
            session.commit()
            assert session.scalar(select(func.count()).select_from(Item)) == 1


    def test_2_sees_the_template():
        with TestingSessionLocal() as session:
            assert session.scalar(select(func.count()).select_from(Item)) == 0
"""


def project(pytester: pytest.Pytester, files: dict[str, str]) -> None:
    for path, text in {"app/__init__.py": "", "app/models.py": MODELS, **files}.items():
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.syspathinsert()
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def no_database_files(pytester: pytest.Pytester) -> None:
    made = sorted(p.name for p in pytester.path.rglob("*.db*"))
    assert made == [], made


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_function_scoped_engine_fixture(pytester: pytest.Pytester, isolation: str) -> None:
    project(pytester, {"conftest.py": FUNCTION_CONFTEST, "test_items.py": FUNCTION_TESTS})
    write_ini(
        pytester,
        memdb_metadata="app.models:Base",
        memdb_isolation=isolation,
        memdb_takeover="sqlite:///./test.db",
        memdb_strict="true",
    )
    result = run(pytester)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "memdb: takeover of sqlite:///./test.db (memdb_takeover in pytest.ini): "
            "each test's connections to it open the test's memdb database*"
        ]
    )
    no_database_files(pytester)


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_session_scoped_engine_fixture(pytester: pytest.Pytester, isolation: str) -> None:
    project(pytester, {"conftest.py": SESSION_CONFTEST, "test_items.py": SESSION_TESTS})
    write_ini(
        pytester,
        memdb_metadata="app.models:Base",
        memdb_isolation=isolation,
        memdb_takeover="sqlite:///./test.db",
        memdb_strict="true",
    )
    result = run(pytester)
    result.assert_outcomes(passed=5)
    no_database_files(pytester)


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_async_engines(pytester: pytest.Pytester, isolation: str) -> None:
    project(pytester, {"conftest.py": ASYNC_CONFTEST, "test_items.py": ASYNC_TESTS})
    write_ini(
        pytester,
        memdb_metadata="app.models:Base",
        memdb_isolation=isolation,
        memdb_takeover="sqlite+aiosqlite:///*",
        memdb_strict="true",
    )
    result = run(pytester)
    result.assert_outcomes(passed=4)
    no_database_files(pytester)


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_engine_made_at_import(pytester: pytest.Pytester, isolation: str) -> None:
    """create_all at import runs outside any test: on a scratch copy of the template, which
    no test sees; each test's connections are its own."""
    project(pytester, {"test_items.py": IMPORT_TESTS})
    write_ini(
        pytester,
        memdb_metadata="app.models:Base",
        memdb_isolation=isolation,
        memdb_takeover="sqlite:///./test.db",
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    no_database_files(pytester)


def test_engines_on_memdb_urls_are_left_alone(pytester: pytest.Pytester) -> None:
    """A pattern that matches every SQLite URL does not take over memdb's own databases (an
    engine the test builds from memdb_url), nor the plugin's engines."""
    project(
        pytester,
        {
            "test_own.py": """
            from sqlalchemy import create_engine, text
            from sqlalchemy.ext.asyncio import create_async_engine


            async def test_own_engines(memdb, memdb_url, memdb_session):
                engine = create_async_engine(memdb_url)
                async with engine.begin() as conn:
                    await conn.execute(text("INSERT INTO item (name) VALUES ('a')"))
                await engine.dispose()
                sync = create_engine(memdb.sync_url)
                with sync.connect() as conn:
                    assert conn.execute(text("SELECT count(*) FROM item")).scalar() == 1
                sync.dispose()
                seen = await memdb_session.execute(text("SELECT count(*) FROM item"))
                assert seen.scalar() == 1


            def test_any_other_sqlite_url_is_taken_over(tmp_path, memdb_sync_session):
                engine = create_engine(f"sqlite:///{tmp_path}/elsewhere.db")
                with engine.begin() as conn:
                    conn.execute(text("INSERT INTO item (name) VALUES ('b')"))
                assert not (tmp_path / "elsewhere.db").exists()
                assert memdb_sync_session.execute(text("SELECT name FROM item")).scalar() == "b"
            """
        },
    )
    write_ini(pytester, memdb_metadata="app.models:Base", memdb_takeover="sqlite:///*")
    result = run(pytester)
    result.assert_outcomes(passed=2)


def test_rows_written_outside_a_test_are_reported(pytester: pytest.Pytester) -> None:
    """A session-scoped fixture that seeds rows through a taken-over engine writes them to a
    database no test sees: the next test gets a warning that says so, and what to do."""
    project(
        pytester,
        {
            "conftest.py": """
            import pytest
            from sqlalchemy import create_engine
            from sqlalchemy.orm import Session

            from app.models import Base, Item


            @pytest.fixture(scope="session")
            def engine():
                engine = create_engine("sqlite:///./test.db")
                Base.metadata.create_all(engine)
                with Session(engine) as session:
                    session.add(Item(name="seeded"))
                    session.commit()
                return engine
            """,
            "test_seeded.py": """
            from sqlalchemy import func, select
            from sqlalchemy.orm import Session

            from app.models import Item


            def test_the_seeded_row_is_not_there(engine):
                with Session(engine) as session:
                    assert session.scalar(select(func.count()).select_from(Item)) == 0
            """,
        },
    )
    write_ini(pytester, memdb_metadata="app.models:Base", memdb_takeover="sqlite:///./test.db")
    result = run(pytester)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*MemdbWarning: pytest-memdb (memdb_takeover): sqlite:///./test.db was written "
            "outside any test*no test sees*memdb_load*memdb_suite*",
        ]
    )
    no_database_files(pytester)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("postgresql://localhost/app", "takes SQLite URLs"),
        ("sqlite://host/x.db", "takes SQLite URLs"),
    ],
)
def test_bad_patterns_stop_the_run(pytester: pytest.Pytester, pattern: str, message: str) -> None:
    write_ini(pytester, memdb_metadata="app.models:Base", memdb_takeover=pattern)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*memdb_takeover in pytest.ini got {pattern!r}*{message}*"])


# A suite whose tests make their own tables (many Bases, one table name in several: sqladmin's
# 14 `users` tables) names no template: with memdb_takeover, the template is empty.
NO_TEMPLATE_CONFTEST = """
    import pytest
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.orm import Session

    from app.models import Base


    @pytest.fixture
    def session():
        engine = create_engine("sqlite:///test.db")
        had_tables = inspect(engine).get_table_names()
        Base.metadata.create_all(engine)  # no drop_all: the next test must not see the table
        with Session(engine) as session:
            yield session, had_tables
"""

NO_TEMPLATE_TESTS = """
    from app.models import Item


    def test_1(session):
        session, had_tables = session
        assert had_tables == []
        session.add(Item(name="a"))
        session.commit()


    def test_2(session):
        session, had_tables = session
        assert had_tables == []
"""


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_takeover_alone_gives_an_empty_template(pytester: pytest.Pytester, isolation: str) -> None:
    project(pytester, {"conftest.py": NO_TEMPLATE_CONFTEST, "test_items.py": NO_TEMPLATE_TESTS})
    write_ini(
        pytester,
        memdb_isolation=isolation,
        memdb_takeover="sqlite:///test.db",
        memdb_strict="true",
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    no_database_files(pytester)


RESET_CONFTEST = """
    import pytest
    from sqlalchemy import create_engine

    ENGINE = create_engine("sqlite:///./test.db")


    @pytest.fixture
    def app_engine():
        return ENGINE
"""

RESET_TESTS = """
    from sqlalchemy import func, select, text

    from app.models import Item


    def test_reset_with_a_taken_over_connection_open(memdb, app_engine):
        for example in range(3):
            memdb.reset()
            held = app_engine.connect()  # the app keeps a connection
            assert held.scalar(select(func.count()).select_from(Item)) == 0, example
            held.execute(text("INSERT INTO item (name) VALUES ('x')"))
            held.commit()
            held.execute(text("INSERT INTO item (name) VALUES ('y')"))  # a write left open
"""


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_a_reset_closes_the_taken_over_connections_first(
    pytester: pytest.Pytester, isolation: str
) -> None:
    """``memdb.reset()`` ends the test's taken-over connections first, as the test's end
    does: a write one of them held open stopped the restore (``cannot be reset``)."""
    project(pytester, {"conftest.py": RESET_CONFTEST, "test_reset.py": RESET_TESTS})
    write_ini(
        pytester,
        memdb_metadata="app.models:Base",
        memdb_isolation=isolation,
        memdb_takeover="sqlite:///./test.db",
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    no_database_files(pytester)
