"""``memdb_strict`` with layers: a scoped fixture that builds an engine from its layer's URL.

A layer's database (``memdb_module.url``, ``.sync_url``: the README's way for the app's own
engines to write a layer) is the plugin's own, made for the run, not one of a test's: it
must be allowed in every test while the layer lives, and refused once it is freed. A scoped
fixture that opens a database that really is not memdb's is refused as before, with a
message that names that fixture and a location in its code (not in ``contextlib``).
"""

from __future__ import annotations

import pytest

from tests.helpers import write_ini

pytestmark = pytest.mark.usefixtures("app_db")

LAYER_URLS = """
import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

URLS = []


@pytest.fixture(scope="session")
def suite_row(memdb_suite):
    engine = sa.create_engine(memdb_suite.sync_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO user (name) VALUES ('suite')")
    engine.dispose()


@pytest.fixture(scope="module")
def module_row(memdb_module, suite_row):
    engine = sa.create_engine(memdb_module.sync_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO user (name) VALUES ('module')")
    engine.dispose()
    URLS.append(memdb_module.sync_url)


@pytest.fixture(scope="module")
def module_async_row(memdb_module, module_row):
    async def write():
        engine = create_async_engine(memdb_module.url)
        async with engine.begin() as conn:
            await conn.exec_driver_sql("INSERT INTO user (name) VALUES ('module-async')")
        await engine.dispose()

    asyncio.run(write())


class TestClassLayer:
    @pytest.fixture(scope="class")
    def class_row(self, memdb_class, module_async_row):
        engine = sa.create_engine(memdb_class.sync_url)
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO user (name) VALUES ('class')")
        engine.dispose()

    def test_sees_every_layer(self, memdb_sync_session, class_row, suite_row):
        names = memdb_sync_session.execute(text("SELECT name FROM user WHERE id > 3"))
        assert names.scalars().all() == ["suite", "module", "module-async", "class"]


def test_sees_module_rows(memdb_sync_session, module_row, suite_row):
    names = memdb_sync_session.execute(text("SELECT name FROM user WHERE id > 3"))
    assert names.scalars().all() == ["suite", "module"]


def test_a_test_may_read_its_live_layer_by_url_too(memdb, module_row, suite_row):
    engine = sa.create_engine(URLS[0])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM user WHERE name = 'module'")).scalar() == 1
    engine.dispose()
"""

FREED = """
import pytest
import sqlalchemy as sa

from test_a_layers import URLS


def test_a_freed_layer_is_not_allowed_any_more(memdb):
    assert URLS  # the layer of test_a_layers, torn down with its module
    engine = sa.create_engine(URLS[0])
    with pytest.raises(Exception, match="memdb_strict"):
        engine.connect()
    engine.dispose()
"""


def test_scoped_fixtures_may_build_engines_from_their_layers_urls(
    pytester: pytest.Pytester,
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_strict="true")
    pytester.makepyfile(test_a_layers=LAYER_URLS, test_b_freed=FREED)
    pytester.syspathinsert()
    result = pytester.runpytest("-p", "no:cacheprovider", "-rE", "-p", "no:randomly")
    # the freed layer's URL, opened by test_b, is refused in it and at its teardown
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_a_freed_layer_is_not_allowed_any_more*",
            "pytest-memdb (memdb_strict): this test opened the SQLite database "
            "'file:/memdb-*module_layer*' through SQLAlchemy, which is not one of its memdb "
            "databases (memdb-*), at *test_b_freed.py:* "
            "(test_a_freed_layer_is_not_allowed_any_more)*",
        ]
    )


FOREIGN = """
import pytest
import sqlalchemy as sa


@pytest.fixture(scope="module")
def foreign(memdb_module):
    engine = sa.create_engine("sqlite:///real.db")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
    engine.dispose()


def test_uses_it(memdb_sync_session, foreign):
    pass
"""


def test_a_scoped_fixture_opening_another_database_is_named_with_its_own_code(
    pytester: pytest.Pytester,
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_strict="true")
    pytester.makepyfile(test_foreign=FOREIGN)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rE")
    result.assert_outcomes(errors=2)  # at its set-up, and again at teardown
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_uses_it*",
            "*pytest-memdb (memdb_strict): the module-scoped fixture 'foreign' (set up for "
            "this test) opened the SQLite database '*real.db' through SQLAlchemy, which is not "
            "one of this test's memdb databases (it has none) nor a live layer's, at "
            "*test_foreign.py:* (foreign).*memdb_module.url or .sync_url*",
        ]
    )
    assert "contextlib" not in result.stdout.str()
    assert not (pytester.path / "real.db").exists()
