"""Regression tests for what a hostile run of the ``memdb_postgresql`` switch found.

Each test drives a real pytest run (``pytester``, in a subprocess) on a real PostgreSQL
server: the plugin's own throwaway one, started once for this module and handed to the
inner runs as ``--memdb-postgresql=URL`` (as ``tests/test_postgresql_switch.py`` does).
Each one failed on the code it was written against (commit 82051b2); the findings, with
reproductions and figures: ``/work/shared/pg-hostile-findings.md``.

The two hang tests bound their inner run (``timeout=``): a statement that waits on a row
lock nobody will release hung forever on that code; the bound is a wait limit for the
outer test, not a timing assertion (the expected behaviour is an error or a pass, at any
speed).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import APP_USER_MODELS, write_ini

pytestmark = pytest.mark.slow  # each a PostgreSQL-backed inner run of 5-10 s; CI runs them

# A bound on an inner run that may hang; far above SQLite's 5 s busy timeout, which is
# what the same mistake meets on the SQLite backend.
HANG_BOUND = 120


SEED = "INSERT INTO app_user (name) VALUES ('ada'), ('grace');\n"


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    url: str = pg_server.url("postgres", "psycopg")
    return url


def _project(pytester: pytest.Pytester, mode: str, tests: str, *, seed: bool = True) -> None:
    pytester.makepyfile(models=APP_USER_MODELS, test_it=tests)
    options = {"memdb_metadata": "models:Base", "memdb_isolation": mode, "pythonpath": "."}
    if seed:
        (pytester.path / "seed.sql").write_text(SEED)
        options["memdb_load"] = "seed.sql"
    write_ini(pytester, **options)


def _run(pytester: pytest.Pytester, pg_url: str, *args: str, timeout: float = 300) -> Any:
    return pytester.runpytest_subprocess(
        f"--memdb-postgresql={pg_url}", "-p", "no:randomly", "-v", *args, timeout=timeout
    )


OWN_CONNECTION_COMMITS = """
    import psycopg
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    COUNT = text("SELECT count(*) FROM app_user")


    async def test_1_commits_through_its_own_engine(memdb_url):
        engine = create_async_engine(memdb_url)  # an app engine made from memdb_url
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO app_user (name) VALUES ('own engine')"))
        await engine.dispose()


    def test_2_commits_through_a_raw_psycopg_connection(memdb):
        dsn = make_url(memdb.sync_url).set(drivername="postgresql")
        with psycopg.connect(dsn.render_as_string(hide_password=False)) as conn:
            conn.execute("INSERT INTO app_user (name) VALUES ('raw psycopg')")


    async def test_3_the_next_test_sees_the_template(memdb_session):
        names = (await memdb_session.scalars(text("SELECT name FROM app_user"))).all()
        assert sorted(names) == ["ada", "grace"]
"""


def test_rollback_a_commit_through_the_tests_own_connection_does_not_reach_the_next_test(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """README: "Whatever a test commits, through any connection, the next test starts
    from the template." In rollback mode on PostgreSQL, a commit through an engine built
    from ``memdb_url`` (disposed) or a raw psycopg connection (closed) stayed in the
    database for every later test, with no error and no warning. The writing tests may
    error (reported as an escape, like ``COMMIT`` as text); the next test must not see
    the rows."""
    _project(pytester, "rollback", OWN_CONNECTION_COMMITS)
    result = _run(pytester, pg_url)
    result.stdout.fnmatch_lines(["*test_3_the_next_test_sees_the_template PASSED*"])


RESET_THEN_MEMDB_URL = """
    from sqlalchemy import create_engine, text


    def test_reset_keeps_memdb_url_on_the_tests_database(memdb, memdb_sync_session):
        memdb.reset()
        memdb_sync_session.execute(text("INSERT INTO app_user (name) VALUES ('after reset')"))
        memdb_sync_session.commit()
        engine = create_engine(memdb.sync_url)  # built after the reset, from its URL
        try:
            with engine.connect() as conn:
                where = conn.scalar(text("SELECT current_database()"))
                count = conn.scalar(text("SELECT count(*) FROM app_user"))
        finally:
            engine.dispose()
        assert where == memdb_sync_session.scalar(text("SELECT current_database()"))
        assert count == 3
"""


@pytest.mark.parametrize("mode", ["copy", "session"])
def test_after_a_reset_memdb_url_names_the_database_the_sessions_use(
    pytester: pytest.Pytester, pg_url: str, mode: str
) -> None:
    """In copy and session mode a reset moved the plugin's sessions to a new clone, but
    ``memdb.url`` / ``memdb.sync_url`` (``memdb_url``) still named the old database: an
    engine built from them, even after the reset, read and wrote another database than
    ``memdb_session`` (the app engine of a Hypothesis test with ``memdb.reset()``)."""
    _project(pytester, mode, RESET_THEN_MEMDB_URL)
    result = _run(pytester, pg_url)
    result.assert_outcomes(passed=1)


SEQUENCES = """
    from sqlalchemy import select

    from models import User


    async def test_1_adds_a_user(memdb_session):
        user = User(name="first")
        memdb_session.add(user)
        await memdb_session.commit()
        assert user.id == 1


    async def test_2_the_next_test_gets_id_1_again(memdb_session):
        user = User(name="second")
        memdb_session.add(user)
        await memdb_session.commit()
        assert user.id == 1


    async def test_3_after_a_reset_id_1_again(memdb, memdb_session):
        for example in range(2):
            await memdb.areset()
            user = User(name=f"example {example}")
            memdb_session.add(user)
            await memdb_session.commit()
            assert user.id == 1, example
"""


def test_rollback_sequences_start_from_the_template(pytester: pytest.Pytester, pg_url: str) -> None:
    """Sequences are not transactional in PostgreSQL: in rollback mode the next test's
    (and the next Hypothesis example's, after ``areset()``) ``INSERT`` got id 2, 3, ...,
    where copy mode and every SQLite mode give id 1 again. A suite that passes on SQLite
    (``/books/1``, ``assert user.id == 1``) failed by the switch alone."""
    _project(pytester, "rollback", SEQUENCES, seed=False)
    result = _run(pytester, pg_url)
    result.assert_outcomes(passed=3)


OWN_UNCOMMITTED_WRITE = """
    from sqlalchemy import text


    async def test_app_writes_a_row_the_test_has_not_committed(memdb_session, memdb_sessionmaker):
        await memdb_session.execute(text("UPDATE app_user SET name = 'test' WHERE name = 'ada'"))
        async with memdb_sessionmaker() as app:  # the app's session, as an override hands it
            await app.execute(text("UPDATE app_user SET name = 'app' WHERE name = 'ada'"))
            await app.commit()
"""

LEAKED_LOCK = """
    from sqlalchemy import create_engine, text

    KEPT = []


    def test_1_leaks_a_row_lock(memdb):
        conn = create_engine(memdb.sync_url).connect()
        conn.execute(text("SELECT * FROM app_user WHERE name = 'ada' FOR UPDATE"))
        KEPT.append(conn)  # never closed: a leaked connection


    def test_2_updates_that_row(memdb_sync_session):
        memdb_sync_session.execute(text("UPDATE app_user SET name = 'x' WHERE name = 'ada'"))
        memdb_sync_session.commit()
"""


@pytest.mark.parametrize(
    ("mode", "tests", "count"),
    [("copy", OWN_UNCOMMITTED_WRITE, 1), ("session", LEAKED_LOCK, 2)],
    ids=["copy-own-uncommitted-write", "session-leaked-lock"],
)
def test_a_write_waiting_on_a_row_lock_nobody_releases_does_not_hang(
    pytester: pytest.Pytester, pg_url: str, mode: str, tests: str, count: int
) -> None:
    """On SQLite the first case is the documented ``database is locked`` error after the
    5 s busy timeout (errors.md); on PostgreSQL both hung forever: the app's ``UPDATE``
    waited on the test's own uncommitted write (copy), and a later test's ``UPDATE`` on a
    row lock a leaked connection of an earlier test held (session). The run must end,
    with an error naming the wait or with the lock gone; on the old code the bound below
    expires (``Pytester.TimeoutExpired``)."""
    _project(pytester, mode, tests)
    result = _run(pytester, pg_url, timeout=HANG_BOUND)
    outcomes = result.parseoutcomes()
    assert sum(outcomes.get(key, 0) for key in ("passed", "failed", "errors")) >= count
    if outcomes.get("failed"):  # the wait is named with who holds the lock, as in rollback
        result.stdout.fnmatch_lines(["*waited 10 s (lock_timeout)*holding locks there: pid *"])


KEEP_FAILED = """
    def test_1_fails(memdb_sync_session):
        assert False, "a failing test"


    def test_2_runs_after_it(memdb_sync_session):
        pass
"""


def test_keep_failed_on_postgresql_does_not_abort_the_run(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """With the switch, the first failing test raised an INTERNALERROR from
    ``pytest_runtest_makereport`` that ended the whole run (exit 3, no test reported).
    Expected: the failing test's database is kept (a ``.sql`` file, by pg_dump), and the
    run goes on."""
    _project(pytester, "copy", KEEP_FAILED)
    result = _run(pytester, pg_url, f"--memdb-keep-failed={pytester.path / 'kept'}")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1, failed=1)
    assert [p.name for p in (pytester.path / "kept").iterdir()] == ["test_it.py_test_1_fails.sql"]


def test_a_role_without_createdb_is_named_at_start_up(
    pytester: pytest.Pytester, pg_server: Any, pg_url: str
) -> None:
    """A server URL whose role may not create databases made every test error with a
    psycopg ``InsufficientPrivilege`` traceback (``CREATE DATABASE "memdb_..._tpl_N"``),
    the template tried again for each test; the message names neither the option nor what
    to do (``ALTER ROLE ... CREATEDB``)."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(pg_url).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS memdb_no_createdb")
        conn.execute("CREATE ROLE memdb_no_createdb LOGIN NOCREATEDB")
    try:
        limited = make_url(pg_url).set(username="memdb_no_createdb")
        _project(pytester, "copy", "def test_it(memdb_sync_session):\n    pass\n")
        result = _run(pytester, limited.render_as_string(hide_password=False))
        text = result.stdout.str() + result.stderr.str()
        assert "CREATEDB" in text
        assert "memdb-postgresql" in text or "memdb_postgresql" in text
    finally:
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as c:
            c.execute("DROP ROLE IF EXISTS memdb_no_createdb")


def test_the_header_of_rollback_mode_says_rollback(pytester: pytest.Pytester, pg_url: str) -> None:
    """The report header of a rollback run said ``restore=a new clone of the template
    (PostgreSQL)``, which is copy mode's way; rollback mode rolls back an outer
    transaction."""
    _project(pytester, "rollback", "def test_it(memdb_sync_session):\n    pass\n")
    result = _run(pytester, pg_url)
    [header] = [line for line in result.outlines if "isolation=rollback" in line]
    assert "new clone" not in header, header


SESSION_STATE = """
    from sqlalchemy import text

    KEPT = []


    def test_1_leaves_state_on_its_connections(memdb, memdb_sync_session):
        memdb_sync_session.execute(text("SET search_path = pg_catalog"))
        memdb_sync_session.execute(text("SET lock_timeout = 0"))
        memdb_sync_session.execute(text("CREATE TEMP TABLE scratch (a int)"))
        memdb_sync_session.execute(text("PREPARE pp AS SELECT 1"))
        memdb_sync_session.commit()
        held = memdb.sync_engine.connect()  # the plugin's own engine, never closed
        held.execute(text("UPDATE public.app_user SET name = 'held' WHERE name = 'ada'"))
        KEPT.append(held)


    def test_2_next_session_test_starts_clean(memdb, memdb_sync_session):
        s = memdb_sync_session
        assert s.execute(text("SHOW search_path")).scalar() == '"$user", public'
        assert s.execute(text("SHOW lock_timeout")).scalar() == "10s"
        assert s.execute(text("SELECT count(*) FROM app_user")).scalar() == 2
        s.execute(text("PREPARE pp AS SELECT 1"))  # no DuplicatePreparedStatement
        s.execute(text("UPDATE app_user SET name = 'mine' WHERE name = 'ada'"))  # no lock wait
        s.commit()
"""


def test_session_mode_gives_the_next_test_clean_connections(
    pytester: pytest.Pytester, pg_url: str
) -> None:
    """Session mode shares one database, not the connections' state: settings (a
    ``search_path`` that hid the tables, ``lock_timeout = 0`` that made a lock wait hang),
    temp tables and prepared statements a test left on pooled connections reached the next
    test, and a connection of the plugin's own engine left in a transaction kept its row
    lock (hostile pass, after the engines began pooling between tests)."""
    _project(pytester, "session", SESSION_STATE)
    result = _run(pytester, pg_url, timeout=HANG_BOUND)
    result.assert_outcomes(passed=2)
