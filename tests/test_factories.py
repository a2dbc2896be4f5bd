"""memdb_factory: several databases in one test, each its own fixture and template."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import digest, make_sqlite, write_ini

MODELS = """
from sqlalchemy import String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "event"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))


def seed_events(conn):
    with open("seed.log", "a") as log:
        log.write("seed_events\\n")
    conn.execute(text("INSERT INTO event (kind) VALUES ('signup'), ('login')"))
"""

CONFTEST = """
from pytest_memdb import memdb_factory

analytics_db = memdb_factory(
    "analytics_db", metadata="models:Base", load=["models:seed_events"]{isolation}
)
users_db = memdb_factory("users_db", file="data/app.sqlite"{isolation})
"""

HELPERS = """
from sqlalchemy import text


def count(session, table):
    return session.execute(text(f"SELECT count(*) FROM {table}")).scalar()


async def acount(session, table):
    return (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar()
"""


def _project(pytester: pytest.Pytester, isolation: str | None = None, **ini: str) -> None:
    pytester.makepyfile(models=MODELS, counting=HELPERS)
    extra = f", isolation={isolation!r}" if isolation else ""
    pytester.makeconftest(CONFTEST.format(isolation=extra))
    write_ini(pytester, **ini)


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_two_factories_are_two_databases_each_isolated_per_test(
    pytester: pytest.Pytester, app_db: Path, isolation: str
) -> None:
    before = digest(app_db)
    _project(pytester, isolation=isolation)
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy import text
        from counting import acount, count

        @pytest.mark.parametrize("n", range(3))
        async def test_both(analytics_db, users_db, n):
            assert analytics_db.name != users_db.name
            async with analytics_db.session() as a, users_db.session() as u:
                assert await acount(a, "event") == 2
                assert await acount(u, "user") == 3
                await a.execute(text("INSERT INTO event (kind) VALUES ('test')"))
                await a.commit()
                await u.execute(text("DELETE FROM user"))
                await u.commit()
                # each database sees only its own writes
                assert await acount(a, "event") == 3
                assert await acount(u, "user") == 0
                tables = await u.execute(text("SELECT name FROM sqlite_master"))
                assert "event" not in tables.scalars().all()

        def test_sync_side(analytics_db):
            with analytics_db.sync_sessionmaker() as s:
                assert count(s, "event") == 2
        """
    )

    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(passed=4)
    assert (pytester.path / "seed.log").read_text() == "seed_events\n"  # one template
    assert digest(app_db) == before


def test_a_factory_handle_has_what_memdb_has(pytester: pytest.Pytester, app_db: Path) -> None:
    _project(pytester)
    pytester.makepyfile(
        """
        from sqlalchemy import create_engine, text
        from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

        async def test_handle(analytics_db, memdb):
            assert isinstance(analytics_db.engine, AsyncEngine)
            assert isinstance(analytics_db.sessionmaker, async_sessionmaker)
            assert analytics_db.url.startswith("sqlite+aiosqlite:///")
            assert analytics_db.name in analytics_db.url
            assert analytics_db.isolation == memdb.isolation == "copy"
            engine = create_async_engine(analytics_db.url)
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT count(*) FROM event"))).scalar() == 2
            await engine.dispose()
            sync = create_engine(analytics_db.sync_url)
            with sync.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM event")).scalar() == 2
            sync.dispose()
            async with analytics_db.session() as session:
                assert (await session.execute(text("SELECT 1"))).scalar() == 1
            # the plain memdb fixture is a third database, from the ini's file
            async with memdb.session() as session:
                users = (await session.execute(text("SELECT count(*) FROM user"))).scalar()
                assert users == 3
        """
    )

    result = pytester.runpytest("-p", "no:cacheprovider", "--memdb-file", str(app_db))

    result.assert_outcomes(passed=1)


def test_isolation_follows_the_run_unless_the_factory_sets_it(
    pytester: pytest.Pytester, app_db: Path
) -> None:
    pytester.makepyfile(models=MODELS)
    pytester.makeconftest(
        """
        from pytest_memdb import memdb_factory

        follows = memdb_factory("follows", metadata="models:Base")
        pinned = memdb_factory("pinned", metadata="models:Base", isolation="session")
        """
    )
    write_ini(pytester, memdb_isolation="rollback")
    pytester.makepyfile(
        """
        def test_modes(follows, pinned):
            assert (follows.isolation, pinned.isolation) == ("rollback", "session")
        """
    )

    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_factory_does_not_inherit_the_ini_sources(pytester: pytest.Pytester) -> None:
    """memdb_file/memdb_load describe the memdb database, not a factory's."""
    make_sqlite(pytester.path / "data" / "app.sqlite")
    pytester.makepyfile(models=MODELS)
    pytester.makeconftest(
        "from pytest_memdb import memdb_factory\n"
        "only_models = memdb_factory('only_models', metadata='models:Base')\n"
    )
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_load="models:seed_events")
    pytester.makepyfile(
        """
        from sqlalchemy import text

        def test_tables(only_models):
            with only_models.sync_sessionmaker() as s:
                names = s.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
                assert names.scalars().all() == ["event"]
                assert s.execute(text("SELECT count(*) FROM event")).scalar() == 0
        """
    )

    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            "memdb_factory('x')",
            "*memdb_factory('x') needs file=..., metadata=... or alembic=... (or more).",
        ),
        (
            "memdb_factory('x', metadata='models.Base')",
            "*memdb_factory('x'), metadata= got 'models.Base'; expected a dotted path*",
        ),
        (
            "memdb_factory('x', file='a.sqlite', isolation='rolback')",
            "*memdb_factory('x'), isolation= got 'rolback'; allowed values: copy, rollback, "
            "session.",
        ),
        (
            "memdb_factory('x', file='a.sqlite', load=['seed.txt'])",
            "*memdb_factory('x'), load= got 'seed.txt'; each entry is a path to a .sql file*",
        ),
        ("memdb_factory('memdb', file='a.sqlite')", "*must be a Python identifier other than*"),
    ],
)
def test_bad_factory_arguments_fail_at_the_conftest_line(
    pytester: pytest.Pytester, call: str, expected: str
) -> None:
    pytester.makeconftest(f"from pytest_memdb import memdb_factory\nx = {call}\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")

    result = pytester.runpytest("-p", "no:cacheprovider")

    assert result.ret != pytest.ExitCode.OK
    output = result.stdout.lines + result.stderr.lines
    pytest.LineMatcher(output).fnmatch_lines(["*conftest.py:2*", expected])


def test_a_factory_with_a_missing_file_errors_only_its_tests(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "from pytest_memdb import memdb_factory\n"
        "gone_db = memdb_factory('gone_db', file='data/gone.sqlite')\n"
    )
    write_ini(pytester)
    pytester.makepyfile(
        """
        def test_uses_it(gone_db):
            pass

        def test_does_not():
            pass
        """
    )

    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "pytest-memdb: the fixture file '*data/gone.sqlite' (from memdb_factory('gone_db'), "
            "file=): it does not exist."
        ]
    )


def test_factories_under_xdist(pytester: pytest.Pytester, app_db: Path) -> None:
    _project(pytester)
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy import text

        @pytest.mark.parametrize("n", range(8))
        def test_write(analytics_db, users_db, n, worker_id):
            assert f"-{worker_id}-" in analytics_db.name
            with analytics_db.sync_sessionmaker() as s:
                s.execute(text("INSERT INTO event (kind) VALUES ('x')"))
                s.commit()
                assert s.execute(text("SELECT count(*) FROM event")).scalar() == 3
        """
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")

    result.assert_outcomes(passed=8)
    assert (pytester.path / "seed.log").read_text() == "seed_events\n" * 2  # one per worker
