"""Rollback isolation on PostgreSQL (:mod:`pytest_memdb.postgresql.rollback`) on a real
server: each test below plays two of a suite's tests on one held session."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import sessionmaker

from pytest_memdb.postgresql.clones import ClonePool, Cluster
from pytest_memdb.postgresql.rollback import LockWaitTimeout, RollbackIsolation
from tests.pg_helpers import PgServer, pg_server


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with pg_server() as server:
        yield server


def _seed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE item (id serial PRIMARY KEY, name text UNIQUE)"))
        conn.execute(text("INSERT INTO item (name) VALUES ('seeded')"))


@pytest.fixture(scope="module")
def pool(pg: PgServer) -> Iterator[ClonePool]:
    cluster = Cluster(pg.url(), prefix="memdb_rb", run_id="rollback-tests")
    made = ClonePool(cluster, cluster.create_template(_seed))
    yield made
    made.close()
    cluster.close()


@pytest.fixture
def iso(pool: ClonePool) -> Iterator[RollbackIsolation]:
    made = RollbackIsolation(pool, lock_timeout_s=0.5)
    yield made
    made.close()


def _names(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(text("SELECT name FROM item ORDER BY id")))


def test_a_session_s_committed_row_is_gone_for_the_next_test(iso) -> None:
    Session = sessionmaker(iso.sync_engine)
    iso.begin_test()
    with Session() as session:
        session.execute(text("INSERT INTO item (name) VALUES ('test 1')"))
        session.commit()
    with Session() as session:  # committed: another session sees it
        assert session.scalars(text("SELECT name FROM item ORDER BY id")).all() == [
            "seeded",
            "test 1",
        ]
    verdict = iso.end_test()
    assert verdict.clean, verdict
    iso.begin_test()
    assert _names(iso.sync_engine) == ["seeded"]
    assert iso.end_test().clean
    assert iso.reclones == 0


def test_async_and_sync_engines_share_the_test_s_transaction_across_loops(iso) -> None:
    Session = async_sessionmaker(iso.async_engine)

    async def write(name: str) -> list[str]:
        async with Session() as session:
            await session.execute(text("INSERT INTO item (name) VALUES (:n)"), {"n": name})
            await session.commit()
        async with iso.async_engine.connect() as conn:
            return list(await conn.scalars(text("SELECT name FROM item ORDER BY id")))

    for test in ("one", "two"):  # each test on its own event loop, as pytest-asyncio does
        iso.begin_test()
        assert asyncio.run(write(test)) == ["seeded", test]
        assert _names(iso.sync_engine) == ["seeded", test]  # the same transaction
        assert iso.end_test().clean


def test_a_rolled_back_session_and_a_failed_statement_keep_the_test_going(iso) -> None:
    Session = sessionmaker(iso.sync_engine)
    iso.begin_test()
    with Session() as session:
        session.execute(text("INSERT INTO item (name) VALUES ('kept')"))
        session.commit()
        session.execute(text("INSERT INTO item (name) VALUES ('undone')"))
        session.rollback()
        with pytest.raises(IntegrityError):
            session.execute(text("INSERT INTO item (name) VALUES ('seeded')"))
        session.rollback()
        with pytest.raises(ProgrammingError):
            session.execute(text("SELECT no_such_column FROM item"))
        session.rollback()
        assert session.scalars(text("SELECT name FROM item ORDER BY id")).all() == [
            "seeded",
            "kept",
        ]
    assert iso.end_test().clean
    iso.begin_test()
    assert _names(iso.sync_engine) == ["seeded"]
    assert iso.end_test().clean


def test_commit_as_text_is_an_escape_and_the_next_test_sees_the_template(iso) -> None:
    iso.begin_test()
    with iso.sync_engine.connect() as conn:
        conn.execute(text("INSERT INTO item (name) VALUES ('escaped')"))
        conn.execute(text("COMMIT"))
        conn.execute(text("INSERT INTO item (name) VALUES ('contained')"))
        conn.rollback()  # the test's transactions are savepoints again
    assert _names(iso.sync_engine) == ["seeded", "escaped"]
    verdict = iso.end_test()
    assert verdict.escape == "the statement 'COMMIT' ended it"
    iso.begin_test()
    assert _names(iso.sync_engine) == ["seeded"]
    assert iso.end_test().clean
    assert iso.reclones == 1


def test_a_commit_behind_sqlalchemy_s_back_is_an_escape(iso) -> None:
    iso.begin_test()
    with iso.sync_engine.connect() as conn:
        conn.execute(text("INSERT INTO item (name) VALUES ('escaped')"))
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute("COMMIT")  # no SQLAlchemy event sees it
    verdict = iso.end_test()
    assert verdict.escape == "the outer transaction was ended behind SQLAlchemy's back"
    iso.begin_test()
    assert _names(iso.sync_engine) == ["seeded"]
    assert iso.end_test().clean


ESCAPES = {
    "SET": (
        "SET work_mem = '7MB'",
        "settings: work_mem = 7168",
        "SHOW work_mem",
    ),
    "SET SESSION CHARACTERISTICS": (
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "settings: default_transaction_isolation = serializable",
        "SHOW default_transaction_isolation",
    ),
    "LISTEN": (
        "LISTEN memdb_channel",
        "listening: LISTEN memdb_channel",
        "SELECT count(*) FROM pg_listening_channels()",
    ),
    "temp table": (
        "CREATE TEMP TABLE scratch (x int)",
        "temp tables: scratch",
        "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()",
    ),
    "prepared statement": (
        "PREPARE memdb_stmt AS SELECT 1",
        "prepared statements: memdb_stmt: PREPARE memdb_stmt AS SELECT 1",
        "SELECT count(*) FROM pg_prepared_statements",
    ),
    "advisory lock": (
        "SELECT pg_advisory_lock(42)",
        "advisory locks: advisory lock 0 42 ExclusiveLock",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
    ),
}


@pytest.mark.parametrize("kind", list(ESCAPES))
def test_session_state_left_after_commit_is_reported_and_cleared(iso, kind) -> None:
    statement, reported, probe = ESCAPES[kind]
    iso.begin_test()
    with iso.sync_engine.connect() as conn:
        before = conn.execute(text(probe)).scalar()
        conn.execute(text(statement))
        conn.execute(text("COMMIT"))  # a SET, LISTEN, temp table outlive the test only so
    verdict = iso.end_test()
    assert verdict.escape is not None
    assert reported in verdict.state
    iso.begin_test()
    with iso.sync_engine.connect() as conn:
        assert conn.execute(text(probe)).scalar() == before
    assert _names(iso.sync_engine) == ["seeded"]
    assert iso.end_test().clean


@pytest.mark.parametrize("kind", ["prepared statement", "advisory lock"])
def test_state_that_outlives_a_rollback_is_reported_without_a_commit(iso, kind) -> None:
    statement, reported, probe = ESCAPES[kind]
    iso.begin_test()
    with iso.sync_engine.connect() as conn:
        before = conn.execute(text(probe)).scalar()
        conn.execute(text(statement))
    verdict = iso.end_test()
    assert verdict.escape is None
    assert verdict.state == [reported]
    iso.begin_test()
    with iso.sync_engine.connect() as conn:
        assert conn.execute(text(probe)).scalar() == before
    assert iso.end_test().clean


def test_a_set_inside_the_test_goes_with_its_rollback(iso) -> None:
    iso.begin_test()
    with iso.sync_engine.connect() as conn:
        conn.execute(text("SET work_mem = '9MB'"))
        conn.execute(text("CREATE TEMP TABLE gone (x int)"))
        conn.execute(text("LISTEN gone"))
    assert iso.end_test().clean


def _let_others_in(iso: RollbackIsolation) -> None:
    """The working database refuses other connections; these tests open one anyway (as one
    that got in would), to check that the held session still names and ends it."""
    with iso.pool.cluster.admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{iso.database}" WITH ALLOW_CONNECTIONS true')


def test_the_working_database_refuses_other_connections(pg, iso) -> None:
    """A commit through a connection of the test's own would be outside the outer
    transaction and reach the next test: such a connection is refused at once."""
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        pg.connect(iso.database, application_name="own-engine")
    iso.begin_test()
    with iso.sync_engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM item")) == 1
    assert iso.end_test().clean


def test_a_leaked_connection_holding_a_lock_gives_a_bounded_clear_error(pg, iso) -> None:
    _let_others_in(iso)
    leaked = pg.connect(iso.database, application_name="leaky-test")
    try:
        leaked.execute("LOCK TABLE item IN ACCESS EXCLUSIVE MODE")  # and never committed
        iso.begin_test()
        with pytest.raises(LockWaitTimeout) as caught, iso.sync_engine.connect() as conn:
            conn.execute(text("INSERT INTO item (name) VALUES ('waits')"))
        assert isinstance(caught.value, OperationalError)
        message = str(caught.value)
        assert f"pid {leaked.info.backend_pid}" in message
        assert "leaky-test" in message
        assert "AccessExclusiveLock on item" in message
        assert "waited 0.5 s (lock_timeout)" in message
        verdict = iso.end_test()
        assert f"pid {leaked.info.backend_pid}" in verdict.others  # named, and ended
    finally:
        leaked.close()
    iso.begin_test()
    with iso.sync_engine.connect() as conn:
        conn.execute(text("INSERT INTO item (name) VALUES ('no wait')"))
    assert iso.end_test().clean


def test_a_connection_a_test_leaks_is_ended_before_the_next_test(pg, iso) -> None:
    _let_others_in(iso)
    iso.begin_test()
    leaked = pg.connect(iso.database, application_name="leaky-test")
    leaked.execute("SELECT * FROM item FOR UPDATE")
    verdict = iso.end_test()
    assert "leaky-test" in verdict.others
    with pytest.raises(psycopg.OperationalError):
        leaked.execute("SELECT 1")
    leaked.close()
    iso.begin_test()
    with iso.sync_engine.begin() as conn:
        conn.execute(text("UPDATE item SET name = 'free'"))
    assert iso.end_test().clean


def test_engines_survive_a_move_to_a_new_clone(iso) -> None:
    Session = async_sessionmaker(iso.async_engine)
    iso.begin_test()
    with iso.sync_engine.connect() as conn:
        conn.execute(text("COMMIT"))
    assert iso.end_test().escape is not None

    async def count() -> int:
        async with Session() as session:
            return len((await session.scalars(text("SELECT name FROM item"))).all())

    iso.begin_test()
    assert asyncio.run(count()) == 1
    assert iso.end_test().clean


def test_a_session_from_a_thread_joins_the_test(iso) -> None:
    iso.begin_test()
    done = threading.Event()

    def write() -> None:
        with iso.sync_engine.begin() as conn:
            conn.execute(text("INSERT INTO item (name) VALUES ('thread')"))
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    thread.join(30)
    assert done.is_set()
    assert _names(iso.sync_engine) == ["seeded", "thread"]
    assert iso.end_test().clean


def test_interleaved_readers_and_writers_undo_only_their_own_writes(iso) -> None:
    iso.begin_test()
    reader, writer = iso.sync_engine.connect(), iso.sync_engine.connect()
    assert reader.execute(text("SELECT count(*) FROM item")).scalar() == 1
    writer.execute(text("INSERT INTO item (name) VALUES ('kept')"))
    assert reader.execute(text("SELECT count(*) FROM item")).scalar() == 2
    reader.commit()  # a reader's savepoint below the writer's: not released under it
    writer.commit()
    reader.execute(text("SELECT 1"))
    writer.execute(text("INSERT INTO item (name) VALUES ('rolled back')"))
    reader.commit()
    writer.rollback()
    failing, other = iso.sync_engine.connect(), iso.sync_engine.connect()
    failing.execute(text("SELECT 1"))
    other.execute(text("INSERT INTO item (name) VALUES ('committed later')"))
    with pytest.raises(ProgrammingError):
        failing.execute(text("SELECT no_such_column FROM item"))
    failing.rollback()  # undoes its failed read only, not the other's write
    other.commit()
    third = iso.sync_engine.connect()
    third.execute(text("INSERT INTO item (name) VALUES ('undone')"))
    reader.execute(text("SELECT 1"))  # a reader's savepoint above the writer's
    third.rollback()
    reader.rollback()
    for conn in (reader, writer, failing, other, third):
        conn.close()
    assert _names(iso.sync_engine) == ["seeded", "kept", "committed later"]
    assert iso.end_test().clean


def test_two_writers_interleaved_on_one_thread_fail_at_once_saying_which(iso) -> None:
    iso.begin_test()
    first, second = iso.sync_engine.connect(), iso.sync_engine.connect()
    first.execute(text("INSERT INTO item (name) VALUES ('first')"))
    with pytest.raises(OperationalError, match=r"began a write transaction at .*test_pg_rollback"):
        second.execute(text("INSERT INTO item (name) VALUES ('second')"))
    first.commit()
    second.execute(text("INSERT INTO item (name) VALUES ('second')"))
    second.commit()
    first.close(), second.close()
    assert _names(iso.sync_engine) == ["seeded", "first", "second"]
    assert iso.end_test().clean


def test_concurrent_async_sessions_of_a_test_share_the_session_across_loops(iso) -> None:
    Session = async_sessionmaker(iso.async_engine)

    async def one(name: str, keep: bool) -> None:
        async with Session() as session:
            await session.execute(text("SELECT pg_sleep(0.01)"))  # the others start meanwhile
            await session.execute(text("INSERT INTO item (name) VALUES (:n)"), {"n": name})
            await (session.commit() if keep else session.rollback())

    async def failing_read() -> None:
        async with Session() as session:
            await asyncio.sleep(0)  # the others' first statements are in flight
            with pytest.raises(ProgrammingError):
                await session.execute(text("SELECT no_such_column FROM item"))
            await session.rollback()
            await session.execute(text("SELECT 1"))

    async def many(test: int) -> None:
        writers = (one(f"{test}-{i}", keep=i != 3) for i in range(5))
        await asyncio.gather(*writers, failing_read())

    for test in (1, 2):  # the second loop meets locks the first one's contention bound
        iso.begin_test()
        asyncio.run(many(test))
        assert sorted(_names(iso.sync_engine)) == sorted(
            ["seeded", *(f"{test}-{i}" for i in range(5) if i != 3)]
        )
        assert iso.end_test().clean


def test_a_failed_write_in_begin_nested_keeps_the_session_s_earlier_writes(iso) -> None:
    Session = sessionmaker(iso.sync_engine)
    iso.begin_test()
    with Session() as session:
        session.execute(text("INSERT INTO item (name) VALUES ('before')"))
        with pytest.raises(IntegrityError), session.begin_nested():  # get-or-create
            session.execute(text("INSERT INTO item (name) VALUES ('seeded')"))
        session.execute(text("INSERT INTO item (name) VALUES ('after')"))
        session.commit()
    assert _names(iso.sync_engine) == ["seeded", "before", "after"]
    assert iso.end_test().clean
