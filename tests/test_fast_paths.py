"""The fast paths of ``copy`` mode keep tests apart.

Copy mode keeps one copy per fixture file, under one name, and between tests
restores it in place only when something was committed (``PRAGMA data_version``),
keeping pooled connections unless a statement left per-connection state on them.
Each inner run below has a test that changes the database or a connection in one
particular way, followed by tests that must see none of it; the inner conftest
reports how often the copy was reused untouched and how often it was restored, so
a fast path that is never taken fails too.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import aiosqlite
import pytest

from pytest_memdb.sqlite.memory import MemoryDatabase, unique_name
from tests.helpers import make_sqlite, write_ini

CONFTEST = """
import pytest

from pytest_memdb.plugin.state import registry_key


def pytest_sessionfinish(session):
    registry = session.config.stash.get(registry_key, None)
    slots = [t._working for t in registry._templates.values()] if registry else []
    restores = sum(slot.restores for slot in slots if slot)
    reuses = sum(slot.reuses for slot in slots if slot)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    reporter.write_line(f"FAST restores={restores} reuses={reuses}")
"""

CHECKS = """
import sqlite3

from sqlalchemy import text

PRISTINE = {"users": 3, "tables": "user", "user_version": 0}


def state_sql():
    return (
        "SELECT (SELECT count(*) FROM user), "
        "(SELECT group_concat(name) FROM (SELECT name FROM sqlite_master "
        "WHERE type = 'table' ORDER BY name)), "
        "(SELECT user_version FROM pragma_user_version)"
    )


def as_state(row):
    return {"users": row[0], "tables": row[1], "user_version": row[2]}


async def state(session):
    return as_state((await session.execute(text(state_sql()))).one())


def connection_state_sql():
    return (
        "SELECT (SELECT foreign_keys FROM pragma_foreign_keys), "
        "(SELECT count(*) FROM temp.sqlite_master), "
        "(SELECT group_concat(name) FROM pragma_database_list WHERE name != 'temp')"
    )


async def connection_state(session):
    return tuple((await session.execute(text(connection_state_sql()))).one())


CLEAN_CONNECTION = (0, 0, "main")
"""


def run(pytester: pytest.Pytester, tests: str, *args: str) -> pytest.RunResult:
    make_sqlite(pytester.path / "data" / "app.sqlite")
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation="copy")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(fast_checks=CHECKS, test_fast=tests)
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def counters(result: pytest.RunResult) -> dict[str, int]:
    line = next(line for line in result.outlines if line.startswith("FAST "))
    return {key: int(value) for key, value in (f.split("=") for f in line.split()[1:])}


# --- writes by every kind of connection are undone --------------------------------------

WRITERS = """
import asyncio
import sqlite3

import aiosqlite
from sqlalchemy import text

from fast_checks import PRISTINE, state

NAMES = []


async def test_01_reads_only(memdb, memdb_session):
    NAMES.append(memdb.name)
    assert await state(memdb_session) == PRISTINE


async def test_02_session_write(memdb, memdb_session):
    await memdb_session.execute(text("INSERT INTO user (name) VALUES ('session')"))
    await memdb_session.commit()
    assert (await state(memdb_session))["users"] == 4


async def test_03_pristine(memdb_session):
    assert await state(memdb_session) == PRISTINE


def test_04_sync_engine_write(memdb):
    with memdb.sync_engine.begin() as conn:
        conn.execute(text("DELETE FROM user"))


async def test_05_pristine(memdb_session):
    assert await state(memdb_session) == PRISTINE


def test_06_raw_sqlite3_write(memdb):
    raw = sqlite3.connect(memdb.database.sqlite_uri, uri=True)
    raw.execute("UPDATE user SET name = 'raw'")
    raw.commit()
    raw.close()


async def test_07_pristine(memdb_session):
    assert await state(memdb_session) == PRISTINE
    names = (await memdb_session.execute(text("SELECT group_concat(name) FROM user"))).scalar()
    assert "raw" not in names


def test_08_raw_autocommit_ddl(memdb):
    raw = sqlite3.connect(memdb.database.sqlite_uri, uri=True, isolation_level=None)
    raw.execute("CREATE TABLE raw_ddl (id INTEGER)")
    raw.execute("PRAGMA user_version = 9")
    raw.close()


async def test_09_pristine(memdb_session):
    assert await state(memdb_session) == PRISTINE


async def test_10_aiosqlite_write(memdb):
    async with aiosqlite.connect(memdb.database.sqlite_uri, uri=True) as conn:
        await conn.execute("INSERT INTO user (name) VALUES ('aiosqlite')")
        await conn.commit()


async def test_11_pristine(memdb_session):
    assert await state(memdb_session) == PRISTINE


async def test_12_session_ddl(memdb_session):
    await memdb_session.execute(text("CREATE TABLE extra (id INTEGER)"))
    await memdb_session.execute(text("DROP INDEX ix_user_email"))
    await memdb_session.commit()


async def test_13_pristine(memdb, memdb_session):
    assert await state(memdb_session) == PRISTINE
    index = "SELECT count(*) FROM sqlite_master WHERE name = 'ix_user_email'"
    assert (await memdb_session.execute(text(index))).scalar() == 1


async def test_14_uncommitted_write_is_rolled_back(memdb_session):
    await memdb_session.execute(text("INSERT INTO user (name) VALUES ('never committed')"))


async def test_15_pristine_and_same_name(memdb, memdb_session):
    assert await state(memdb_session) == PRISTINE
    assert memdb.name == NAMES[0]


def test_16_sync_session_write(memdb_sync_session):
    memdb_sync_session.execute(text("INSERT INTO user (name) VALUES ('sync')"))
    memdb_sync_session.commit()


async def test_17_pristine(memdb_session):
    assert await state(memdb_session) == PRISTINE
"""


def test_writes_through_every_kind_of_connection_are_undone(pytester: pytest.Pytester) -> None:
    result = run(pytester, WRITERS)
    result.assert_outcomes(passed=17)
    # Writers: 02, 04, 06, 08, 10, 12, 16 (restored after each). Readers (and 14, whose
    # write was never committed) left the copy as they got it: 01, 03, 05, 07, 09, 11, 13,
    # 14, 15 and 17 needed no restore.
    assert counters(result) == {"restores": 7, "reuses": 10}


# --- per-connection state: PRAGMA, TEMP, ATTACH -----------------------------------------

CONNECTION_STATE = """
from sqlalchemy import text

from fast_checks import CLEAN_CONNECTION, PRISTINE, connection_state, state


async def test_1_clean(memdb_session):
    assert await connection_state(memdb_session) == CLEAN_CONNECTION


async def test_2_pragma(memdb_session):
    await memdb_session.execute(text("PRAGMA foreign_keys = ON"))
    assert (await connection_state(memdb_session))[0] == 1


async def test_3_clean(memdb_session):
    assert await connection_state(memdb_session) == CLEAN_CONNECTION
    assert await state(memdb_session) == PRISTINE


async def test_4_temp_table(memdb_session):
    await memdb_session.execute(text("CREATE TEMP TABLE scratch (id INTEGER)"))
    await memdb_session.execute(text("INSERT INTO scratch VALUES (1)"))
    await memdb_session.commit()


async def test_5_clean(memdb_session):
    assert await connection_state(memdb_session) == CLEAN_CONNECTION


async def test_6_attach(memdb_session):
    await memdb_session.execute(text("ATTACH DATABASE ':memory:' AS aux"))
    await memdb_session.commit()


async def test_7_clean(memdb_session):
    assert await connection_state(memdb_session) == CLEAN_CONNECTION


def test_8_sync_pragma_by_driver_sql(memdb):
    with memdb.sync_engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys = 1")
        conn.exec_driver_sql("CREATE TEMP TABLE t2 (id INTEGER)")


def test_9_sync_clean(memdb):
    with memdb.sync_engine.connect() as conn:
        sql = conn.exec_driver_sql
        assert tuple(sql("SELECT * FROM pragma_foreign_keys").one()) == (0,)
        assert sql("SELECT count(*) FROM temp.sqlite_master").scalar() == 0


async def test_10_reads_only(memdb_session):
    assert await state(memdb_session) == PRISTINE


async def test_11_reads_only(memdb_session):
    assert await connection_state(memdb_session) == CLEAN_CONNECTION
"""


def test_pragma_temp_table_and_attach_do_not_reach_the_next_test(
    pytester: pytest.Pytester,
) -> None:
    result = run(pytester, CONNECTION_STATE)
    result.assert_outcomes(passed=11)
    # 2, 4, 6 and 8 left state on a connection but committed nothing to the database: the
    # pools were emptied, the database itself was never restored, and every test after
    # the first got it as it was.
    assert counters(result) == {"restores": 0, "reuses": 11}


# --- connections an earlier test leaked -------------------------------------------------

LEAKS = """
import sqlite3

from sqlalchemy import text

from fast_checks import PRISTINE, state

LEAKED = {}


async def test_1_leaks_an_open_write(memdb, memdb_session):
    LEAKED["name"] = memdb.name
    leak = sqlite3.connect(memdb.database.sqlite_uri, uri=True, check_same_thread=False)
    leak.execute("INSERT INTO user (name) VALUES ('leaked write')")
    LEAKED["writer"] = leak


async def test_2_goes_around_it(memdb, memdb_session):
    assert memdb.name != LEAKED["name"]
    assert await state(memdb_session) == PRISTINE
    LEAKED["writer"].close()
    LEAKED["second"] = memdb.name


async def test_3_on_the_new_working_database(memdb, memdb_session):
    # The first one was left to the leak for good: the new one serves from now on.
    assert memdb.name == LEAKED["second"]
    assert await state(memdb_session) == PRISTINE
    await memdb_session.execute(text("INSERT INTO user (name) VALUES ('committed')"))
    await memdb_session.commit()
    reader = sqlite3.connect(memdb.database.sqlite_uri, uri=True, check_same_thread=False)
    reader.isolation_level = None
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM user").fetchone()  # holds a read open
    LEAKED["reader"] = reader


async def test_4_goes_around_an_open_read(memdb, memdb_session):
    assert memdb.name not in (LEAKED["name"], LEAKED["second"])
    assert await state(memdb_session) == PRISTINE
    LEAKED["reader"].close()
    LEAKED["third"] = memdb.name


async def test_5_keeps_it_and_restores_it(memdb, memdb_session):
    assert memdb.name == LEAKED["third"]
    assert await state(memdb_session) == PRISTINE
"""


def test_leaked_connections_never_hang_or_leak_into_the_next_test(
    pytester: pytest.Pytester,
) -> None:
    make_sqlite(pytester.path / "data" / "app.sqlite")
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation="copy")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(fast_checks=CHECKS, test_fast=LEAKS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=5)


# --- the database primitives the fast paths rest on --------------------------------------


@pytest.mark.parametrize(
    ("statement", "stateful"),
    [
        ("PRAGMA foreign_keys = ON", True),
        ("  pragma journal_mode", True),
        ("-- set up\n/* twice */ PRAGMA foreign_keys = 1", True),
        ("ATTACH DATABASE ':memory:' AS aux", True),
        ("detach aux", True),
        ("CREATE TEMP TABLE t (id INTEGER)", True),
        ("create temporary view v as select 1", True),
        ("DROP TABLE user", True),
        ("SELECT * FROM user", False),
        ("INSERT INTO user (name) VALUES ('x')", False),
        ("-- PRAGMA in a comment only\nSELECT 1", False),
        ("", False),
    ],
)
def test_statements_that_leave_connection_state_are_recognised(
    statement: str, stateful: bool
) -> None:
    from pytest_memdb.sqlite.engines import leaves_connection_state

    assert leaves_connection_state(statement) is stateful


def _template(tmp_path_factory: pytest.TempPathFactory) -> MemoryDatabase:
    from pytest_memdb.sqlite.loading import load_file

    path = make_sqlite(tmp_path_factory.mktemp("fast") / "app.sqlite")
    return load_file(path, unique_name("test", "fast"), origin="test")


def test_data_version_moves_on_commits_of_any_other_connection(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    template = _template(tmp_path_factory)
    copy = template.copy(unique_name("test", "fast", "copy"))
    copy.prepare_for_restores()
    try:
        seen = [copy.data_version()]

        def moved() -> bool:
            seen.append(copy.data_version())
            return seen[-1] != seen[-2]

        other = sqlite3.connect(copy.sqlite_uri, uri=True, isolation_level=None)
        other.execute("SELECT count(*) FROM user").fetchone()
        assert not moved(), "a read is not a change"
        other.execute("INSERT INTO user (name) VALUES ('x')")
        assert moved()
        other.execute("CREATE TABLE t (id INTEGER)")
        assert moved()
        other.execute("PRAGMA user_version = 3")
        assert moved()
        other.execute("BEGIN")
        other.execute("INSERT INTO user (name) VALUES ('open')")
        assert copy.data_version() is None, "an open write must be reported, not waited for"
        other.execute("ROLLBACK")
        other.close()
        assert seen[-1] is not None

        async def through_aiosqlite() -> None:
            async with aiosqlite.connect(copy.sqlite_uri, uri=True) as conn:
                await conn.execute("DELETE FROM user")
                await conn.commit()

        thread = threading.Thread(target=lambda: asyncio.run(through_aiosqlite()))
        thread.start()
        thread.join()
        assert moved()
        assert copy.restore_from(template)
        after = copy.data_version()
        assert after == copy.data_version(), "the anchor's own restore does not count"
    finally:
        copy.close()
        template.close()


def test_restore_in_place_is_seen_by_open_connections_and_refuses_a_held_lock(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    template = _template(tmp_path_factory)
    copy = template.copy(unique_name("test", "fast", "copy"))
    copy.prepare_for_restores()
    other = sqlite3.connect(copy.sqlite_uri, uri=True, isolation_level=None)
    try:
        other.execute("CREATE TABLE extra (id INTEGER)")
        other.execute("DELETE FROM user")
        assert copy.restore_from(template)
        assert other.execute("SELECT count(*) FROM user").fetchone() == (3,)
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            other.execute("SELECT * FROM extra")
        other.execute("DELETE FROM user")
        other.execute("BEGIN")
        other.execute("SELECT count(*) FROM user").fetchone()
        assert not copy.restore_from(template), "a held read lock must make it give up"
        other.execute("COMMIT")
        assert copy.restore_from(template)
        assert other.execute("SELECT count(*) FROM user").fetchone() == (3,)
    finally:
        other.close()
        copy.close()
        template.close()


def test_a_lock_taken_after_the_check_makes_the_restore_give_up_not_hang(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    template = _template(tmp_path_factory)
    copy = template.copy(unique_name("test", "fast", "copy"))
    copy.prepare_for_restores()
    other = sqlite3.connect(copy.sqlite_uri, uri=True, isolation_level=None)
    try:
        other.execute("DELETE FROM user WHERE id = 1")
        other.execute("BEGIN")
        other.execute("SELECT count(*) FROM user").fetchone()  # a read lock, held
        # The step after the lock check: without giving up, sqlite3 would retry forever.
        assert not copy.fill_from(template, give_up_after=0.05)
        assert other.execute("SELECT count(*) FROM user").fetchone() == (2,)
        other.execute("COMMIT")
        assert copy.restore_from(template)
        assert other.execute("SELECT count(*) FROM user").fetchone() == (3,)
    finally:
        other.close()
        copy.close()
        template.close()
