"""Driver connections reused across tests: test 1 changes the ``sqlite3`` or ``aiosqlite``
connection it was handed (its row or text factory, its transaction handling, the database
behind it, or closes it); test 2, plain and unrelated, must get a connection that behaves
as a fresh one on the template.

Real inner pytest runs on a real fixture file (three users), in ``copy`` and ``rollback``,
through the sync and the async path.
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.boundaries import WIDE, outcomes, tail
from tests.helpers import write_ini

pytestmark = pytest.mark.usefixtures("app_db")

HEAD = """
import sqlite3

from sqlalchemy import text

USERS = [("ada", "ada@example.com"), ("brian", "brian@example.com"),
         ("grace", "grace@example.com")]
ROWS = "SELECT name, email FROM user ORDER BY id"


def other_database():
    # The bytes of another SQLite database, with a table ``foo`` and no ``user``.
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE foo (x)")
    connection.execute("INSERT INTO foo VALUES (1)")
    connection.commit()
    data = connection.serialize()
    connection.close()
    return data


def plain_rows(rows):
    rows = [tuple(row) for row in rows]
    assert all(type(value) is str for row in rows for value in row), rows
    return rows
"""

SYNC_CHANGES = {
    "row_factory": "driver.row_factory = lambda cursor, row: 'X'",
    "text_factory": "driver.text_factory = bytes",
    "isolation_level": "driver.isolation_level = None",
    "deserialize": "driver.deserialize(other_database())",
}

ASYNC_CHANGES = {
    "row_factory": "aio.row_factory = lambda cursor, row: 'X'",
    "text_factory": "aio.text_factory = bytes",
    "isolation_level": "aio.isolation_level = None",
    "deserialize": "await aio._execute(aio._conn.deserialize, other_database())",
    "close": "await aio.close()",
}

SYNC_SUITE = """
def test_1_changes_its_driver_connection(memdb_sync_session):
    assert plain_rows(memdb_sync_session.execute(text(ROWS)).all()) == USERS
    driver = memdb_sync_session.connection().connection.driver_connection
    {change}


def test_2_plain(memdb_sync_session):
    session = memdb_sync_session
    assert plain_rows(session.execute(text(ROWS)).all()) == USERS
    tables = session.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))
    assert tables.scalars().all() == ["user"]
    driver = session.connection().connection.driver_connection
    assert plain_rows(driver.execute(ROWS).fetchall()) == USERS
    session.execute(text("INSERT INTO user (name) VALUES ('rolled back')"))
    session.rollback()
    assert session.execute(text("SELECT count(*) FROM user")).scalar_one() == 3
    assert plain_rows(session.execute(text(ROWS)).all()) == USERS
"""

ASYNC_SUITE = """
async def raw(session):
    return (await (await session.connection()).get_raw_connection()).driver_connection


async def test_1_changes_its_driver_connection(memdb_session):
    assert plain_rows((await memdb_session.execute(text(ROWS))).all()) == USERS
    aio = await raw(memdb_session)
    {change}


async def test_2_plain(memdb_session):
    session = memdb_session
    assert plain_rows((await session.execute(text(ROWS))).all()) == USERS
    tables = await session.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))
    assert tables.scalars().all() == ["user"]
    aio = await raw(session)
    async with aio.execute(ROWS) as cursor:
        assert plain_rows(await cursor.fetchall()) == USERS
    await session.execute(text("INSERT INTO user (name) VALUES ('rolled back')"))
    await session.rollback()
    assert (await session.execute(text("SELECT count(*) FROM user"))).scalar_one() == 3
    assert plain_rows((await session.execute(text(ROWS))).all()) == USERS
"""

HAS_DESERIALIZE = hasattr(sqlite3.Connection, "deserialize")  # Python 3.11 and later

CASES = [
    pytest.param(path, change, id=f"{path}-{change}")
    for path, changes in (("sync", SYNC_CHANGES), ("async", ASYNC_CHANGES))
    for change in changes
    if change != "deserialize" or HAS_DESERIALIZE
]


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
@pytest.mark.parametrize(("path", "change"), CASES)
def test_a_driver_connection_test_1_changed_does_not_reach_test_2(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    isolation: str,
    path: str,
    change: str,
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    statement = (SYNC_CHANGES if path == "sync" else ASYNC_CHANGES)[change]
    suite = (SYNC_SUITE if path == "sync" else ASYNC_SUITE).format(change=statement)
    pytester.makepyfile(test_driver=HEAD + suite)
    for key, value in WIDE.items():
        monkeypatch.setenv(key, value)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-rA", timeout=300)
    seen = outcomes(result)
    assert seen.get("test_2_plain") == ["PASSED"], tail(result)
    # Test 1's own outcome is not the point: in rollback mode, a driver change that ends
    # the outer transaction (isolation_level = None commits) is reported as an escape.
    assert "test_1_changes_its_driver_connection" in seen, tail(result)


# -- work that outlives its test -------------------------------------------------------

LATE_TASK = """
import asyncio

from sqlalchemy import text

LATE = {}


async def write_late(maker, gate):
    await gate.wait()
    try:
        async with maker() as session:
            await session.execute(text("INSERT INTO user (name) VALUES ('late')"))
            await session.commit()
    except Exception as exc:
        LATE["error"] = exc
    else:
        LATE["error"] = None


async def test_1_starts_a_task_and_returns(memdb_sessionmaker):
    gate = asyncio.Event()
    task = asyncio.get_running_loop().create_task(write_late(memdb_sessionmaker, gate))
    LATE.update(gate=gate, task=task)


async def test_2_next(memdb_session):
    LATE["gate"].set()
    await LATE["task"]  # test 1's task runs now, inside this test
    count = await memdb_session.execute(text("SELECT count(*) FROM user"))
    assert count.scalar_one() == 3


def test_3_the_late_write_failed():
    assert "pytest-memdb" in str(LATE["error"]), repr(LATE["error"])
"""

LATE_THREAD = """
import threading

from sqlalchemy import text

LATE = {}


def write_late(maker, gate):
    gate.wait(timeout=60)
    try:
        with maker() as session:
            session.execute(text("INSERT INTO user (name) VALUES ('late')"))
            session.commit()
    except Exception as exc:
        LATE["error"] = exc
    else:
        LATE["error"] = None


def test_1_starts_a_thread_and_returns(memdb):
    gate = threading.Event()
    thread = threading.Thread(target=write_late, args=(memdb.sync_sessionmaker, gate))
    thread.start()
    LATE.update(gate=gate, thread=thread)


def test_2_next(memdb_sync_session):
    LATE["gate"].set()
    LATE["thread"].join(timeout=60)  # test 1's thread writes now, inside this test
    assert not LATE["thread"].is_alive()
    count = memdb_sync_session.execute(text("SELECT count(*) FROM user")).scalar_one()
    assert count == 3


def test_3_the_late_write_failed():
    assert "pytest-memdb" in str(LATE["error"]), repr(LATE["error"])
"""


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
@pytest.mark.parametrize("worker", ["task", "thread"])
def test_a_write_after_its_test_ended_fails_and_reaches_no_later_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, isolation: str, worker: str
) -> None:
    """5: test 1 leaves an asyncio task (one event loop for the session) or a thread that
    writes through its sessionmaker later, during test 2: test 2 must not see the row,
    and the late write must fail with a pytest-memdb error."""
    write_ini(
        pytester,
        memdb_file="data/app.sqlite",
        memdb_isolation=isolation,
        asyncio_default_fixture_loop_scope="session",
        asyncio_default_test_loop_scope="session",
    )
    pytester.makepyfile(test_late=LATE_TASK if worker == "task" else LATE_THREAD)
    for key, value in WIDE.items():
        monkeypatch.setenv(key, value)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-rA", timeout=300)
    seen = outcomes(result)
    assert seen.get("test_2_next") == ["PASSED"], tail(result)
    assert seen.get("test_3_the_late_write_failed") == ["PASSED"], tail(result)
    result.assert_outcomes(passed=3)
