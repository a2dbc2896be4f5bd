"""A read blocked by a pending write says what happened and the way out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import write_ini


@pytest.mark.slow  # waits the 5 s busy timeout by design
@pytest.mark.parametrize("isolation", ["copy", "session"])
def test_database_is_locked_explains_itself(
    pytester: pytest.Pytester, app_db: Path, isolation: str
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy import text
        from sqlalchemy.exc import OperationalError

        async def test_read_past_a_pending_write(memdb_session, memdb_sessionmaker):
            await memdb_session.execute(text("INSERT INTO user (name) VALUES ('pending')"))
            async with memdb_sessionmaker() as app_session:  # as the app would
                with pytest.raises(OperationalError) as caught:
                    await app_session.execute(text("SELECT count(*) FROM user"))
            print("ERROR", str(caught.value).replace("\\n", " "))
            await memdb_session.rollback()
        """
    )

    result = pytester.runpytest("-s", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR (pytest-memdb: another connection to this in-memory database holds an "
            "uncommitted write.*or use memdb_isolation = rollback, where reads never wait.) "
            "(sqlite3.OperationalError) database is locked*"
        ]
    )


# --- rollback mode: a write transaction another connection of the test keeps open ----------

HOLDING_FIXTURES = """
import pytest
from sqlalchemy import text


@pytest.fixture
def schema(memdb):
    with memdb.sync_engine.begin() as conn:
        conn.execute(text("CREATE TABLE extra (id INTEGER PRIMARY KEY)"))  # HOLDER
        yield


@pytest.fixture
async def async_schema(memdb):
    async with memdb.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE extra (id INTEGER PRIMARY KEY)"))  # HOLDER
        yield
"""

HOLDING_TESTS = """
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
import pytest


async def test_async_write_under_a_sync_fixture(schema, memdb_session):
    await memdb_session.execute(text("INSERT INTO user (name) VALUES ('x')"))


def test_sync_write_under_a_sync_fixture(schema, memdb_sync_session):
    memdb_sync_session.execute(text("INSERT INTO user (name) VALUES ('x')"))


async def test_async_write_under_an_async_fixture(async_schema, memdb_session):
    await memdb_session.execute(text("INSERT INTO user (name) VALUES ('x')"))


def test_sync_write_under_an_async_fixture(async_schema, memdb_sync_session):
    memdb_sync_session.execute(text("INSERT INTO user (name) VALUES ('x')"))


async def test_reads_still_work(schema, memdb_session):
    assert (await memdb_session.execute(text("SELECT count(*) FROM extra"))).scalar() == 0
"""


def test_a_fixture_holding_a_write_open_fails_the_tests_writes_at_once_and_is_named(
    pytester: pytest.Pytester, app_db: Path
) -> None:
    """A fixture that yields inside ``engine.begin()`` after its DDL keeps the test's write
    lock: every write of the test through another connection could only wait for it to
    time out (5 s each, before). The first one fails at once, naming the engine and the
    fixture's line that began the write."""
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation="rollback")
    pytester.makeconftest(HOLDING_FIXTURES)
    pytester.makepyfile(test_holding=HOLDING_TESTS)
    conftest = pytester.path / "conftest.py"
    lines = conftest.read_text().splitlines()
    sync_line = next(i for i, line in enumerate(lines, 1) if "HOLDER" in line)
    async_line = next(i for i, line in enumerate(lines, 1) if i > sync_line and "HOLDER" in line)

    result = pytester.runpytest("-p", "no:cacheprovider", "--tb=line")

    result.assert_outcomes(failed=4, passed=1)
    # --tb=line: one "path:line: error" line a failure (pytest 9 adds the "E   " lines).
    located = re.compile(r"^\S+:\d+: sqlalchemy\.exc\.OperationalError: \(sqlite3\.Operational")
    errors = [line for line in result.stdout.lines if located.match(line)]
    output = "\n".join(errors)
    assert len(errors) == 4, result.stdout.str()
    assert output.count("gave up at once") == 4, output  # nothing waited for a timeout
    sync_holder = (
        f"a connection of the test's sync engine began a write transaction at "
        f"{conftest}:{sync_line} (schema) and has not ended it"
    )
    async_holder = (
        f"a connection of the test's async engine began a write transaction at "
        f"{conftest}:{async_line} (async_schema) and has not ended it"
    )
    assert output.count(sync_holder) == 2, output
    assert output.count(async_holder) == 2, output


THREAD_TESTS = """
import threading

from sqlalchemy import text


def writer(memdb, wrote, finish):
    with memdb.sync_engine.connect() as conn:
        conn.execute(text("INSERT INTO user (name) VALUES ('from a thread')"))
        wrote.set()
        finish.wait(30)
        conn.commit()


def test_a_write_waits_for_another_threads_transaction(memdb, memdb_sync_session):
    wrote, finish = threading.Event(), threading.Event()
    thread = threading.Thread(target=writer, args=(memdb, wrote, finish))
    thread.start()
    assert wrote.wait(30)
    threading.Timer(0.2, finish.set).start()  # it ends its transaction while we wait
    memdb_sync_session.execute(text("INSERT INTO user (name) VALUES ('from the test')"))
    memdb_sync_session.commit()
    thread.join(30)
    assert memdb_sync_session.execute(text("SELECT count(*) FROM user")).scalar() == 5


def test_the_timeout_names_the_other_threads_connection(memdb, memdb_sync_session, monkeypatch):
    import pytest
    from sqlalchemy.exc import OperationalError

    import pytest_memdb.sqlite.connections

    monkeypatch.setattr(pytest_memdb.sqlite.connections, "BUSY_TIMEOUT_S", 0.2)
    wrote, finish = threading.Event(), threading.Event()
    thread = threading.Thread(target=writer, args=(memdb, wrote, finish))
    thread.start()
    assert wrote.wait(30)
    try:
        with pytest.raises(OperationalError) as caught:
            memdb_sync_session.execute(text("INSERT INTO user (name) VALUES ('from the test')"))
    finally:
        finish.set()
        thread.join(30)
    print("ERROR", " ".join(str(caught.value).split()))
"""


def test_a_write_still_waits_for_a_transaction_another_thread_can_end(
    pytester: pytest.Pytester, app_db: Path
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation="rollback")
    pytester.makepyfile(test_threads=THREAD_TESTS)
    writer_line = next(
        i for i, line in enumerate(THREAD_TESTS.splitlines(), 0) if "('from a thread')" in line
    )

    result = pytester.runpytest("-s", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR (sqlite3.OperationalError) database is locked: another connection of this "
            "test kept an uncommitted "
            "write open for 0.2 s: a connection of the test's sync engine began a write "
            f"transaction at *test_threads.py:{writer_line} (writer) and has not ended it*"
        ]
    )
