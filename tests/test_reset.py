"""``memdb.reset()`` / ``await memdb.areset()``: every Hypothesis example from the template.

Real pytest runs of real ``@given`` tests on a real fixture file, in every isolation mode.
Each example writes a row, DDL and ``user_version``; the next example must see none of it.
The same suite without the reset must fail (so these tests can fail).
"""

from __future__ import annotations

import pytest

from tests.helpers import write_ini

pytestmark = pytest.mark.usefixtures("app_db")

EXAMPLES = """
    import os

    import pytest
    from hypothesis import HealthCheck, given, settings, strategies as st
    from sqlalchemy import text

    RESET = os.environ.get("MEMDB_TEST_RESET", "1") == "1"
    EXAMPLE = settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
        database=None,
    )
    NAMES = st.text(alphabet="abcdefghij", min_size=1, max_size=8)


    async def state(session):
        count = (await session.execute(text("SELECT count(*) FROM user"))).scalar_one()
        tables = (await session.execute(text(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
        ))).scalar_one()
        version = (await session.execute(text("PRAGMA user_version"))).scalar_one()
        return count, tables, version


    def sync_state(session):
        count = session.execute(text("SELECT count(*) FROM user")).scalar_one()
        tables = session.execute(text(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
        )).scalar_one()
        version = session.execute(text("PRAGMA user_version")).scalar_one()
        return count, tables, version


    @EXAMPLE
    @given(name=NAMES)
    async def test_1_async_examples(memdb, memdb_session, name):
        if RESET:
            await memdb.areset()
        assert await state(memdb_session) == (3, 1, 0)
        await memdb_session.execute(text("INSERT INTO user (name) VALUES (:n)"), {"n": name})
        await memdb_session.commit()
        await memdb_session.execute(text("CREATE TABLE IF NOT EXISTS extra (id INTEGER)"))
        await memdb_session.execute(text("PRAGMA user_version = 5"))
        await memdb_session.commit()
        async with memdb.session() as other:  # a second session of the test sees it too
            assert await state(other) == (4, 2, 5)


    @EXAMPLE
    @given(name=NAMES)
    def test_2_sync_examples(memdb, memdb_sync_session, name):
        if RESET:
            memdb.reset()
        assert sync_state(memdb_sync_session) == (3, 1, 0)
        memdb_sync_session.execute(text("INSERT INTO user (name) VALUES (:n)"), {"n": name})
        memdb_sync_session.execute(text("CREATE TABLE IF NOT EXISTS extra2 (id INTEGER)"))
        memdb_sync_session.commit()
        memdb_sync_session.execute(text("INSERT INTO user (name) VALUES ('pending')"))
        # left uncommitted: the reset must roll it back, not wait on it


    @EXAMPLE
    @given(name=NAMES)
    async def test_3_examples_in_an_app_session(memdb, name):
        # Sessions the test makes itself from memdb.sessionmaker and leaves open.
        if RESET:
            await memdb.areset()
        session = memdb.sessionmaker()
        assert await state(session) == (3, 1, 0)
        await session.execute(text("INSERT INTO user (name) VALUES (:n)"), {"n": name})
        await session.commit()
        await session.execute(text("INSERT INTO user (name) VALUES ('pending')"))


    async def test_4_the_next_test(memdb, memdb_session):
        if memdb.isolation != "session":
            assert await state(memdb_session) == (3, 1, 0)
"""


def _project(pytester: pytest.Pytester, isolation: str) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    pytester.makepyfile(test_examples=EXAMPLES)


@pytest.mark.parametrize("isolation", ["copy", "rollback", "session"])
def test_every_example_starts_from_the_template(
    pytester: pytest.Pytester, isolation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _project(pytester, isolation)
    monkeypatch.setenv("MEMDB_TEST_RESET", "1")
    result = pytester.runpytest_subprocess("-p", "hypothesispytest", timeout=300)
    result.assert_outcomes(passed=4)


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_without_the_reset_the_examples_share_one_database(
    pytester: pytest.Pytester, isolation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suite above can fail: without ``reset()`` the second example sees the first's row."""
    _project(pytester, isolation)
    monkeypatch.setenv("MEMDB_TEST_RESET", "0")
    result = pytester.runpytest_subprocess("-p", "hypothesispytest", timeout=300)
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 2, result.stdout.str()[-3000:]


HOSTILE = """
    import sqlite3

    import pytest
    from sqlalchemy import text


    @pytest.mark.memdb(isolation="rollback")
    async def test_1_commit_as_text_is_reported_at_the_reset(memdb, memdb_session):
        await memdb_session.execute(text("INSERT INTO user (name) VALUES ('escaped')"))
        await memdb_session.execute(text("COMMIT"))
        with pytest.raises(Exception, match="ended the plugin's outer transaction"):
            await memdb.areset()
        count = (await memdb_session.execute(text("SELECT count(*) FROM user"))).scalar_one()
        assert count == 3


    @pytest.mark.parametrize(
        "mode",
        [
            pytest.param(mode, marks=pytest.mark.memdb(isolation=mode))
            for mode in ("copy", "rollback")
        ],
    )
    def test_2_a_raw_connection_holding_a_write_is_named(memdb, mode):
        assert memdb.isolation == mode
        raw = sqlite3.connect(memdb.database.sqlite_uri, uri=True)
        raw.execute("INSERT INTO user (name) VALUES ('held')")
        try:
            with pytest.raises(Exception, match="could not restore .* raw sqlite3 connection"):
                with memdb.sync_session() as session:
                    session.execute(text("SELECT 1"))
                memdb.reset()
        finally:
            raw.rollback()
            raw.close()
        memdb.reset()


    async def test_3_the_next_test_sees_the_template(memdb_session):
        count = (await memdb_session.execute(text("SELECT count(*) FROM user"))).scalar_one()
        assert count == 3
"""


def test_a_reset_reports_escapes_and_names_leaked_locks(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(test_hostile=HOSTILE)
    result = pytester.runpytest_subprocess("-p", "hypothesispytest", timeout=300)
    result.assert_outcomes(passed=4)


COLLECTED = """
    import gc

    import pytest
    from sqlalchemy import text

    MODES = [
        pytest.param(mode, marks=pytest.mark.memdb(isolation=mode))
        for mode in ("copy", "rollback", "session")
    ]


    async def count(session):
        return (await session.execute(text("SELECT count(*) FROM user"))).scalar_one()


    @pytest.mark.parametrize("mode", MODES)
    async def test_1_reset_after_a_leaked_session_was_collected(memdb, mode):
        session = memdb.sessionmaker()  # the test's own, never closed
        await session.execute(text("INSERT INTO user (name) VALUES ('pending')"))
        del session
        gc.collect()  # SQLAlchemy lets go of its connection: the write stays pending
        await memdb.areset()
        async with memdb.session() as session:
            assert await count(session) == 3
            await session.execute(text("INSERT INTO user (name) VALUES ('after')"))
            await session.commit()


    @pytest.mark.parametrize("mode", MODES)
    async def test_2_a_leaked_session_collected_before_the_end(memdb, mode):
        session = memdb.sessionmaker()
        await session.execute(text("INSERT INTO user (name) VALUES ('pending')"))
        del session
        gc.collect()


    @pytest.mark.parametrize("mode", MODES)
    async def test_3_the_next_test(memdb, memdb_session, mode):
        assert await count(memdb_session) == (3 if mode != "session" else 4)
        await memdb_session.execute(text("INSERT INTO user (name) VALUES ('next')"))
        await memdb_session.commit()
"""


def test_a_leaked_session_the_garbage_collector_took_holds_no_lock(
    pytester: pytest.Pytester,
) -> None:
    """A session the test made itself and left with a write pending, collected before the
    reset or the test's end: SQLAlchemy 2.0 cannot terminate its aiosqlite connection and
    drops it, open, its write still pending (2.1 terminates it). The plugin closes it: the
    reset restores (it found the database locked, "could not restore"), the next test can
    write, and no connection is left for the collector to find unclosed."""
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(test_collected=COLLECTED)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-W",
        "error::pytest.PytestUnraisableExceptionWarning",  # a ResourceWarning in a __del__
        timeout=300,
    )
    result.assert_outcomes(passed=9)


COLLECTED_DURING_RENEWAL = """
    import gc

    import pytest
    from sqlalchemy import event, text

    MODES = [
        pytest.param(mode, marks=pytest.mark.memdb(isolation=mode))
        for mode in ("copy", "rollback", "session")
    ]


    async def count(session):
        return (await session.execute(text("SELECT count(*) FROM user"))).scalar_one()


    @pytest.mark.parametrize("mode", MODES)
    async def test_1_collected_while_the_reset_closes_the_connections(memdb, mode):
        # The collector runs when it will: here, while the reset closes the pool's
        # connections (the pool tells its "close" listeners first). A listener stands in
        # for that moment: the session becomes garbage there and allocations follow.
        garbage = []

        def collect_now(*args):
            garbage.clear()  # the leaked session is now unreachable (a reference cycle)
            gc.set_threshold(1)
            try:
                [[] for _ in range(1000)]  # an automatic collection, if one may run
            finally:
                gc.set_threshold(*THRESHOLDS)

        THRESHOLDS = gc.get_threshold()
        session = memdb.sessionmaker()  # the test's own, never closed
        await session.execute(text("INSERT INTO user (name) VALUES ('pending')"))
        await session.execute(text("PRAGMA cache_size = 123"))  # the connection is renewed
        garbage.extend([session, garbage])
        del session
        event.listen(memdb.engine.sync_engine, "close", collect_now)
        await memdb.areset()
        event.remove(memdb.engine.sync_engine, "close", collect_now)
        async with memdb.session() as session:
            assert await count(session) == 3


    @pytest.mark.parametrize("mode", MODES)
    async def test_2_the_next_test(memdb, memdb_session, mode):
        assert await count(memdb_session) == 3 or mode == "session"
        await memdb_session.execute(text("INSERT INTO user (name) VALUES ('next')"))
        await memdb_session.commit()
"""


def test_a_leaked_session_collected_while_a_reset_closes_connections(
    pytester: pytest.Pytester,
) -> None:
    """The garbage collector may finalize a leaked session's pooled connection at any
    allocation, also while a reset closes the pool's connections: SQLAlchemy's finalizer
    then detaches the very connection being closed, and its own check failed
    (``assert self.dbapi_connection is not None``: once in about 50 runs of the Hypothesis
    reset suite under load, in rollback mode). The plugin keeps automatic collection off
    while it closes connections."""
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(test_collected=COLLECTED_DURING_RENEWAL)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=6)
