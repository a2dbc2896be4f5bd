"""Regression tests for the isolation escapes of issue 10, each a real inner test suite.

Every inner suite starts with a hostile test that gets something past the isolation (it
ends rollback mode's outer transaction, writes around it, leaves state on a pooled or
shared connection, cancels a statement mid-flight, leaks a lock, adds event listeners),
followed by tests that check what the NEXT test sees: the template's exact rows, tables
and ``PRAGMA user_version``, a connection in its default state, and a database it can
commit to. The outer tests check the inner outcomes.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import write_ini

pytestmark = pytest.mark.usefixtures("app_db")

CHECKS = """
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    BASE = ["ada", "brian", "grace"]
    TEMPLATE = {"names": BASE, "tables": ["user"], "user_version": 0}
    INSERT = text("INSERT INTO user (name, email) VALUES (:name, :email)")
    PROBE = "memdb_probe"
    # The state hostile tests leave on a connection, and what a fresh connection has.
    LEFT_STATE_SQL = [
        "ATTACH ':memory:' AS scratch",
        "ATTACH '{side}' AS side",
        "PRAGMA reverse_unordered_selects = 1",
        "PRAGMA case_sensitive_like = 1",
        "PRAGMA ignore_check_constraints = 1",
        "PRAGMA foreign_keys = ON",  # a no-op inside rollback mode's outer transaction
        "PRAGMA query_only = 1",  # last: it stops the writes above
    ]
    DEFAULT_STATE = {
        "reverse_unordered_selects": 0,
        "query_only": 0,
        "ignore_check_constraints": 0,
        "foreign_keys": 0,
        "like_ignores_case": 1,
        "databases": ["main"],
        "probe": "gone",
    }
    # Seconds of work, but finite: counting to 10**7 takes about 3 s here.
    SLOW = (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < {n}) "
        "SELECT count(*) FROM r"
    )


    def insert(session, name):
        # A coroutine for an AsyncSession, a result for a Session.
        return session.execute(INSERT, {"name": name, "email": f"{name}@example.com"})


    def left_state_sql(tmp_path):
        return [sql.format(side=tmp_path / "side.sqlite") for sql in LEFT_STATE_SQL]


    def template_state(session):
        # Sync; an AsyncSession runs it with ``await session.run_sync(template_state)``.
        def scalars(sql):
            return list(session.execute(text(sql)).scalars())

        return {
            "names": scalars("SELECT name FROM user ORDER BY id"),
            "tables": scalars("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"),
            "user_version": scalars("PRAGMA user_version")[0],
        }


    def connection_state(session):
        state = {
            pragma: session.execute(text(f"PRAGMA {pragma}")).scalar_one()
            for pragma in ("reverse_unordered_selects", "query_only", "ignore_check_constraints",
                           "foreign_keys")
        }
        # case_sensitive_like cannot be read back, only seen at work.
        state["like_ignores_case"] = session.execute(text("SELECT 'a' LIKE 'A'")).scalar_one()
        databases = session.execute(text("PRAGMA database_list")).all()
        state["databases"] = [row[1] for row in databases if row[1] != "temp"]
        try:
            session.execute(text(f"SELECT {PROBE}(1)"))
        except OperationalError as exc:
            state["probe"] = "gone" if "no such function" in str(exc) else str(exc)
        else:
            state["probe"] = "still registered"
        return state


    async def check_next(memdb, session, mode):
        # What every test after a hostile one must see, and be able to do.
        assert memdb.isolation == mode
        assert await session.run_sync(template_state) == TEMPLATE
        assert await session.run_sync(connection_state) == DEFAULT_STATE
        await insert(session, "next")
        await session.commit()
        assert (await session.run_sync(template_state))["names"] == [*BASE, "next"]


    def check_next_sync(memdb, session, mode):
        assert memdb.isolation == mode
        assert template_state(session) == TEMPLATE
        assert connection_state(session) == DEFAULT_STATE
        insert(session, "next-sync")
        session.commit()
        assert template_state(session)["names"] == [*BASE, "next-sync"]
"""


ASYNC_NEXT = """
@pytest.mark.memdb(isolation="{mode}")
async def test_next_{n}_{mode}(memdb, memdb_session):
    await check_next(memdb, memdb_session, "{mode}")
"""

SYNC_NEXT = """
@pytest.mark.memdb(isolation="{mode}")
def test_next_{n}_{mode}_sync(memdb, memdb_sync_session):
    check_next_sync(memdb, memdb_sync_session, "{mode}")
"""


INNER_HEAD = """\
import asyncio
import sqlite3

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from memdb_checks import *
"""


def after(*modes: str, flavours: tuple[str, ...] = ("async",)) -> str:
    """The checking tests, run after the hostile one: one per mode and flavour, in order.

    Put the flavour the hostile test used first: in copy mode, a checking test's own
    ``PRAGMA`` reads make the plugin empty the pools, which would hide what a later
    checking test was meant to find on a pooled connection.
    """
    tests = []
    for n, mode in enumerate(modes, start=1):
        # A session-mode database would keep the first check's row: one check there.
        for flavour in flavours[:1] if mode == "session" else flavours:
            tests.append((SYNC_NEXT if flavour == "sync" else ASYNC_NEXT).format(n=n, mode=mode))
    return "\n".join(tests)


def inner(hostile: str, *modes: str, flavours: tuple[str, ...] = ("async",)) -> str:
    """An inner test module: the imports, the hostile test(s), then the checking tests."""
    return INNER_HEAD + hostile + after(*modes, flavours=flavours)


def make_project(pytester: pytest.Pytester, mode: str, body: str) -> int:
    """Write the inner project; returns how many inner tests it has."""
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=mode)
    pytester.makepyfile(memdb_checks=CHECKS, test_escape=body)
    # Readable failures from the shared checks too.
    pytester.makeconftest('import pytest\n\npytest.register_assert_rewrite("memdb_checks")\n')
    return len(re.findall(r"^(?:async )?def test_", body, re.MULTILINE))


def run(pytester: pytest.Pytester, *, subprocess: bool = False) -> pytest.RunResult:
    if subprocess:
        # Leaked locks and driver threads: a hang fails the test instead of the suite.
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    return pytester.runpytest()


def assert_no_lock_errors(result: pytest.RunResult) -> None:
    result.stdout.no_fnmatch_line("*database is locked*")
    result.stdout.no_fnmatch_line("*database table is locked*")


# --- 1. SQLite ends rollback mode's outer transaction by itself -----------------------------

ENDS_TRANSACTION = """

{def_} test_1_ends_the_outer_transaction(memdb, {fixture}):
    session = {fixture}
    {aw}insert(session, "committed")
    {aw}session.commit()
    {aw}insert(session, "pending")
    {escape}
    # From here on, nothing protects the template: these writes and commits must still
    # be undone (the working database is restored), and the test told so at teardown.
    {aw}insert(session, "after-escape")
    {aw}session.commit()
    {aw}session.execute(text("CREATE TABLE after_escape (id INTEGER)"))
    {aw}session.execute(text("PRAGMA user_version = 9"))
    {aw}session.commit()
"""

ESCAPES = {
    "ROLLBACK": '{aw}session.execute(text("ROLLBACK"))',
    "COMMIT": '{aw}session.execute(text("COMMIT"))',
    "END": '{aw}session.execute(text("END"))',
    # On a conflict, OR ROLLBACK rolls the whole transaction back, not just the statement.
    "INSERT OR ROLLBACK": (
        "with pytest.raises(IntegrityError):\n"
        "        {aw}session.execute(\n"
        "            text(\"INSERT OR ROLLBACK INTO user (id, name) VALUES (1, 'clash')\")\n"
        "        )"
    ),
    # RAISE(ROLLBACK) in a trigger does the same, from inside the schema.
    "trigger": (
        '{aw}session.execute(text("CREATE TRIGGER no_boom BEFORE INSERT ON user '
        "WHEN NEW.name = 'boom' BEGIN SELECT RAISE(ROLLBACK, 'no boom'); END\"))\n"
        "    with pytest.raises(IntegrityError):\n"
        '        {aw}insert(session, "boom")'
    ),
}


@pytest.mark.parametrize(
    ("flavour", "escape"),
    [
        ("async", "ROLLBACK"),
        ("async", "COMMIT"),
        ("async", "INSERT OR ROLLBACK"),
        ("async", "trigger"),
        ("sync", "ROLLBACK"),
        ("sync", "END"),
        ("sync", "INSERT OR ROLLBACK"),
    ],
)
def test_sql_that_ends_the_outer_transaction_is_an_error_and_is_undone(
    pytester: pytest.Pytester, flavour: str, escape: str
) -> None:
    words = (
        {"def_": "async def", "fixture": "memdb_session", "aw": "await "}
        if flavour == "async"
        else {"def_": "def", "fixture": "memdb_sync_session", "aw": ""}
    )
    other = "sync" if flavour == "async" else "async"
    hostile = ENDS_TRANSACTION.format(escape=ESCAPES[escape].format(**words), **words)
    tests = make_project(
        pytester,
        "rollback",
        inner(hostile, "rollback", "copy", "session", flavours=(flavour, other)),
    )
    result = run(pytester)
    # The hostile test's own call passes; its teardown is an error; the rest pass.
    result.assert_outcomes(passed=tests, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_1_ends_the_outer_transaction*"])
    errors = result.stdout.str().split("ERROR at teardown", 1)[1]
    assert re.search(r"pytest-memdb:.*outer transaction.*restored", errors, re.DOTALL), errors


# --- 2. an app's own engine on memdb_url, in rollback mode --------------------------------

APP_ENGINE_COMMITS = """

async def test_1_app_engine_commits(memdb, memdb_url):
    # The app builds its own engine: it is outside the test's transaction, so its commits
    # are real; they must land in the working database (restored after), never the template.
    engine = create_async_engine(memdb_url)
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO user (name) VALUES ('app')"))
        await conn.execute(text("CREATE TABLE app_extra (id INTEGER)"))
        await conn.execute(text("PRAGMA user_version = 5"))
    await engine.dispose()
    sync = create_engine(memdb.sync_url)
    with sync.begin() as conn:
        conn.execute(text("INSERT INTO user (name) VALUES ('app-sync')"))
    sync.dispose()
"""


def test_app_engines_on_memdb_url_in_rollback_mode_are_undone_without_error(
    pytester: pytest.Pytester,
) -> None:
    tests = make_project(
        pytester, "rollback", inner(APP_ENGINE_COMMITS, "rollback", "copy", "session")
    )
    result = run(pytester)
    result.assert_outcomes(passed=tests)


# --- 3. per-connection state left on a connection -----------------------------------------

LEFT_STATE = {
    # Through the session's SQL: rollback mode's one shared connection keeps it all.
    "sql": """

async def test_1_leaves_connection_state(memdb_session, tmp_path):
    for sql in left_state_sql(tmp_path):
        await memdb_session.execute(text(sql))
    assert (await memdb_session.run_sync(connection_state))["reverse_unordered_selects"] == 1
""",
    # Behind SQLAlchemy's back, on the aiosqlite driver connection: nothing the plugin
    # sees in the statements it runs, yet a pooled (copy) or shared (rollback) connection
    # would carry it into the next test.
    "driver": """

async def test_1_leaves_connection_state(memdb_session, tmp_path):
    conn = await memdb_session.connection()
    driver = (await conn.get_raw_connection()).driver_connection  # aiosqlite.Connection
    await driver.create_function(PROBE, 1, lambda x: x)
    for sql in left_state_sql(tmp_path):
        await driver.execute(sql)
    cursor = await driver.execute(f"SELECT {PROBE}(1), 'a' LIKE 'A'")
    assert await cursor.fetchone() == (1, 0)
""",
    # The same on the sync session's sqlite3 connection.
    "sync-driver": """

def test_1_leaves_connection_state(memdb_sync_session, tmp_path):
    dbapi = memdb_sync_session.connection().connection.dbapi_connection
    dbapi.create_function(PROBE, 1, lambda x: x)
    for sql in left_state_sql(tmp_path):
        dbapi.execute(sql)
    assert dbapi.execute(f"SELECT {PROBE}(1), 'a' LIKE 'A'").fetchone() == (1, 0)
""",
    # Only SQL, run on the driver connection: no engine event sees it (the connections
    # watch their own statements; an engine listener would not).
    "driver-sql": """

async def test_1_leaves_connection_state(memdb_session, tmp_path):
    conn = await memdb_session.connection()
    driver = (await conn.get_raw_connection()).driver_connection  # aiosqlite.Connection
    for sql in left_state_sql(tmp_path):
        await driver.execute(sql)
    cursor = await driver.execute("SELECT 'a' LIKE 'A'")
    assert await cursor.fetchone() == (0,)
""",
    "sync-driver-sql": """

def test_1_leaves_connection_state(memdb_sync_session, tmp_path):
    dbapi = memdb_sync_session.connection().connection.dbapi_connection
    cursor = dbapi.cursor()
    for sql in left_state_sql(tmp_path):
        cursor.execute(sql)
    assert dbapi.execute("SELECT 'a' LIKE 'A'").fetchone() == (0,)
""",
}


@pytest.mark.parametrize(
    ("mode", "route"),
    [
        ("rollback", "sql"),
        ("rollback", "driver"),
        ("rollback", "sync-driver"),
        # copy mode: SQL through the session is already caught by the statement watch (the
        # pools are emptied); only state set on the driver connection gets past it.
        ("copy", "driver"),
        ("copy", "sync-driver"),
        ("copy", "driver-sql"),
        ("copy", "sync-driver-sql"),
    ],
)
def test_connection_state_never_reaches_the_next_test(
    pytester: pytest.Pytester, mode: str, route: str
) -> None:
    others = ("copy", "session") if mode == "rollback" else ("rollback",)
    flavours = ("sync", "async") if route.startswith("sync-") else ("async", "sync")
    tests = make_project(pytester, mode, inner(LEFT_STATE[route], mode, *others, flavours=flavours))
    result = run(pytester)
    result.assert_outcomes(passed=tests)


# --- 4. a cancelled statement -------------------------------------------------------------

CANCELLED = """

async def test_1_cancels_a_slow_query(memdb_session):
    # wait_for cancels the await, but the driver's thread is still running the query on
    # its connection: the next test must not meet it.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(memdb_session.execute(text(SLOW.format(n={n}))), 0.05)
"""


def test_a_cancelled_statement_leaves_no_trace(pytester: pytest.Pytester) -> None:
    # Rollback mode only: in copy mode the old code already passes (the cancelled query's
    # own connection finishes it and the hostile test's teardown waits for that; the
    # difference is only time, which these tests do not measure).
    hostile = CANCELLED.format(n=10**7)
    tests = make_project(pytester, "rollback", inner(hostile, "rollback", "copy", "session"))
    result = run(pytester, subprocess=True)
    result.assert_outcomes(passed=tests)
    assert_no_lock_errors(result)


# --- 5. a pending write an app engine leaked, in rollback mode ----------------------------

LEAKS = """

LEAKED = []  # drivers and connections to stop at the very end
KEPT = []  # what keeps the lock held: engines, connections, unfinished results


@pytest.fixture(scope="module", autouse=True)
def stop_leaked_drivers():
    # The leak must outlive its test; this only stops aiosqlite's (non-daemon) threads at
    # the end, so the inner process can exit.
    yield
    for driver in LEAKED:
        if isinstance(driver, sqlite3.Connection):
            driver.close()
        elif hasattr(driver, "stop"):  # aiosqlite 0.22.1 and later, from any thread
            driver.stop()
        else:  # aiosqlite 0.22.0: no stop(), and close() is a coroutine to run to its end
            asyncio.run(driver.close())
"""

PENDING_WRITE = (
    LEAKS
    + """

async def test_1_app_engine_leaves_a_write_pending(memdb_url):
    engine = create_async_engine(memdb_url)
    conn = await engine.connect()
    await conn.execute(text("INSERT INTO user (name) VALUES ('pending')"))  # never committed
    LEAKED.append((await conn.get_raw_connection()).driver_connection)
    KEPT.append((engine, conn))  # else the garbage collector ends the write
"""
)


def test_a_pending_write_leaked_by_an_app_engine_in_rollback_mode(
    pytester: pytest.Pytester,
) -> None:
    # copy first: it must neither hang on the lock nor see the pending row.
    tests = make_project(pytester, "rollback", inner(PENDING_WRITE, "copy", "rollback", "session"))
    result = run(pytester, subprocess=True)
    result.assert_outcomes(passed=tests)
    assert_no_lock_errors(result)


@pytest.mark.slow
def test_a_pending_write_leaked_in_session_mode_is_a_clear_error_not_a_hang(
    pytester: pytest.Pytester,
) -> None:
    # The session database's content must carry over, and memdb lets no one read past a
    # pending write: the next session test errors, naming why; copy and rollback tests
    # (another working database) are not touched by it.
    body = inner(PENDING_WRITE, "session", "copy", "rollback")
    tests = make_project(pytester, "session", body)
    result = run(pytester, subprocess=True)
    result.assert_outcomes(passed=tests - 1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*pytest-memdb: a connection an earlier session-mode test left open holds an "
            "uncommitted write on the session database*"
        ]
    )


# --- 6. a read left open on a connection of the test's own ---------------------------------

OPEN_READ = {
    "stream": """

async def test_1_leaves_a_stream_open(memdb_url):
    engine = create_async_engine(memdb_url)
    conn = await engine.connect()
    result = await conn.stream(text("SELECT name FROM user ORDER BY id"))
    assert (await result.fetchone())[0] == "ada"  # cut short: the read stays open
    LEAKED.append((await conn.get_raw_connection()).driver_connection)
    KEPT.append((engine, conn, result))
""",
    "sqlite3": """

def test_1_leaves_a_cursor_open(memdb):
    leak = sqlite3.connect(memdb.database.sqlite_uri, uri=True, check_same_thread=False)
    cursor = leak.execute("SELECT name FROM user ORDER BY id")
    assert cursor.fetchone()[0] == "ada"  # never exhausted: the read stays open
    LEAKED.append(leak)
    KEPT.append(cursor)
""",
}


@pytest.mark.parametrize("how", ["stream", "sqlite3"])
# session too: its one database would stay locked for every later session-mode test.
# (Not rollback: there the old code already passes, the test's writes being savepoints.)
@pytest.mark.parametrize("mode", ["copy", "session"])
def test_an_open_read_leaked_does_not_lock_the_next_test(
    pytester: pytest.Pytester, mode: str, how: str
) -> None:
    other = "session" if mode == "copy" else "copy"
    tests = make_project(pytester, mode, inner(LEAKS + OPEN_READ[how], mode, other))
    result = run(pytester, subprocess=True)
    result.assert_outcomes(passed=tests)
    assert_no_lock_errors(result)


# --- 7. event listeners a test adds --------------------------------------------------------

LISTENERS = """

FIRED = []


def record(where):
    def listener(*args, **kwargs):
        FIRED.append(where)

    return listener


def boom(*args, **kwargs):
    raise RuntimeError("a listener of an earlier test fired")


async def test_1_adds_listeners(memdb, memdb_engine, memdb_session, memdb_sync_session):
    # (SQLAlchemy refuses listeners on the AsyncEngine itself: they go on its sync_engine.)
    event.listen(memdb_engine.sync_engine, "before_cursor_execute", record("async engine"))
    event.listen(memdb_engine.sync_engine.pool, "checkout", record("async pool"))
    event.listen(memdb.sync_engine, "before_cursor_execute", record("sync engine"))
    event.listen(memdb.sync_engine.pool, "checkout", record("sync pool"))
    await memdb_session.execute(text("SELECT 1"))
    memdb_sync_session.execute(text("SELECT 1"))
    assert sorted(set(FIRED)) == ["async engine", "async pool", "sync engine", "sync pool"]
    # Added last, so only a later test could trip on these.
    event.listen(memdb_engine.sync_engine, "before_cursor_execute", boom)
    event.listen(memdb.sync_engine, "before_cursor_execute", boom)


async def test_2_listeners_are_gone(memdb, memdb_session, memdb_sync_session):
    FIRED.clear()
    async with memdb.session() as other:
        await other.execute(text("SELECT 1"))
    await memdb_session.execute(text("SELECT count(*) FROM user"))
    memdb_sync_session.execute(text("SELECT count(*) FROM user"))
    assert FIRED == []
"""


@pytest.mark.parametrize("mode", ["copy", "rollback", "session"])
def test_listeners_a_test_adds_are_gone_after_it(pytester: pytest.Pytester, mode: str) -> None:
    tests = make_project(pytester, mode, inner(LISTENERS, mode))
    result = run(pytester)
    result.assert_outcomes(passed=tests)


CONNECT_LISTENER = """

# Plain reads only: in copy mode a PRAGMA would make the plugin empty the pools, and the
# test after these would get new connections anyway.
async def test_1_ordinary(memdb_session):
    rows = await memdb_session.execute(text("SELECT name FROM user ORDER BY id"))
    assert list(rows.scalars()) == BASE


def test_2_ordinary_sync(memdb_sync_session):
    rows = memdb_sync_session.execute(text("SELECT name FROM user ORDER BY id"))
    assert list(rows.scalars()) == BASE


async def test_3_connect_listener_registers_a_function(memdb, memdb_session, memdb_sync_session):
    # The usual way to give SQLite a function: a connect listener. The connections this
    # test uses must be connected after it was added, as on a fresh engine, even though
    # earlier tests already used (and pooled) connections.
    def add_probe(dbapi_connection, record):
        dbapi_connection.create_function(PROBE, 1, lambda x: 2 * x)

    event.listen(memdb.engine.sync_engine, "connect", add_probe)
    event.listen(memdb.sync_engine, "connect", add_probe)
    assert (await memdb_session.execute(text(f"SELECT {PROBE}(21)"))).scalar_one() == 42
    assert memdb_sync_session.execute(text(f"SELECT {PROBE}(21)")).scalar_one() == 42
"""


@pytest.mark.parametrize("mode", ["copy", "rollback", "session"])
def test_a_connect_listener_fires_for_the_test_that_added_it(
    pytester: pytest.Pytester, mode: str
) -> None:
    # The checking test after it also proves the listener and its function are gone.
    tests = make_project(pytester, mode, inner(CONNECT_LISTENER, mode))
    result = run(pytester)
    result.assert_outcomes(passed=tests)


# --- beyond the list: engine options a test changes, the anchor closed ---------------

ENGINE_STATE = """

def test_1_changes_the_engines(memdb, memdb_engine):
    memdb_engine.sync_engine.update_execution_options(isolation_level="AUTOCOMMIT")
    memdb.sync_engine.update_execution_options(isolation_level="AUTOCOMMIT")
    memdb_engine.sync_engine.echo = True
    memdb.sync_engine.echo = True


def test_2_closes_the_anchor_of_its_database(memdb):
    memdb.database.close()  # reaching into internals: the plugin must still recover
"""


@pytest.mark.parametrize("mode", ["copy", "rollback"])
def test_engine_options_and_a_closed_anchor_do_not_reach_the_next_test(
    pytester: pytest.Pytester, mode: str
) -> None:
    checks = """

def test_3_engines_as_made(memdb, memdb_engine):
    for engine in (memdb_engine.sync_engine, memdb.sync_engine):
        assert engine.get_execution_options() == {}
        assert engine.echo is False
"""
    tests = make_project(pytester, mode, inner(ENGINE_STATE + checks, mode, "copy", "rollback"))
    result = run(pytester)
    result.assert_outcomes(passed=tests)


SESSIONMAKER_STATE = """
from sqlalchemy import event


def test_1_changes_the_sessionmakers(memdb):
    def refuse(session):
        raise RuntimeError("a listener of an earlier test fired")

    event.listen(memdb.sync_sessionmaker, "before_commit", refuse)
    memdb.sync_sessionmaker.configure(autoflush=False, info={"left": "by test 1"})
    memdb.sessionmaker.configure(autoflush=False)


def test_2_sessionmakers_as_made(memdb, memdb_sync_session):
    assert memdb.sync_sessionmaker.kw.get("autoflush", True) is True
    assert "left" not in memdb.sync_sessionmaker.kw.get("info", {})
    assert memdb.sessionmaker.kw.get("autoflush", True) is True
    memdb_sync_session.execute(INSERT, {"name": "x", "email": "x@example.com"})
    memdb_sync_session.commit()  # the listener would raise
"""


@pytest.mark.parametrize("mode", ["copy", "rollback", "session"])
def test_sessionmakers_a_test_changed_are_made_anew(pytester: pytest.Pytester, mode: str) -> None:
    # Sync sessionmakers are reused from test to test (making one costs 128 us); one that
    # a test configured or listened on must not be.
    tests = make_project(pytester, mode, INNER_HEAD + SESSIONMAKER_STATE)
    run(pytester).assert_outcomes(passed=tests)


def test_the_template_is_private_and_a_write_to_it_is_caught(tmp_path: Path) -> None:
    # No connection but the plugin's anchor reaches a template: opening its name gets an
    # empty database of one's own. And should the plugin's own code ever write it, the test
    # that was running is failed, naming the template.
    from pytest_memdb.core.config import MemdbConfig, Target
    from pytest_memdb.errors import MemdbError
    from tests.helpers import make_sqlite, sqlite_registry, sqlite_template

    path = make_sqlite(tmp_path / "app.sqlite")
    registry = sqlite_registry(MemdbConfig(path, "test", "copy", False, tmp_path))
    try:
        target = Target(path, "test", "copy")
        handle = registry.open(target)
        template = sqlite_template(registry, target).database
        for uri in (template.sqlite_uri, f"file:/{template.name}?vfs=memdb"):
            outsider = sqlite3.connect(uri, uri=True)
            assert outsider.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
            outsider.close()
        handle.close()
        handle = registry.open(target)
        template.anchor.execute("INSERT INTO user (name) VALUES ('written')")
        template.anchor.commit()
        with pytest.raises(MemdbError, match="was written after it was built"):
            handle.close()
    finally:
        registry.close()


# --- a connect cancelled half-way -----------------------------------------------------------


def test_a_connect_cancelled_half_way_closes_the_connection_it_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A test's ``asyncio.wait_for`` around its first query can cancel the engine's connect
    after aiosqlite's worker made the ``sqlite3`` connection: it must be closed, not left
    for the garbage collector (which Python 3.13 reports as a ResourceWarning)."""
    import asyncio
    import threading

    import pytest_memdb.sqlite.engines as engines
    from pytest_memdb.sqlite.memory import MemoryDatabase, unique_name

    made: list[sqlite3.Connection] = []
    workers: list[threading.Thread] = []
    connect = engines.connect

    def recording_connect(uri: str) -> sqlite3.Connection:
        workers.append(threading.current_thread())
        made.append(connect(uri))
        return made[-1]

    monkeypatch.setattr(engines, "connect", recording_connect)
    database = MemoryDatabase(unique_name("escapes", "cancel"))

    async def cancel_the_connect() -> None:
        task = asyncio.ensure_future(engines.open_aio(database.sqlite_uri))
        await asyncio.sleep(0)  # the connect is queued on aiosqlite's worker thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(500):  # aiosqlite 0.22.1 lets the worker connect after the cancel
            if workers:
                break
            await asyncio.sleep(0.01)
        assert len(workers) == 1, "aiosqlite's worker made no connection"
        await asyncio.to_thread(workers[0].join, 5)  # it stops right after (loop still open)
        assert not workers[0].is_alive()

    try:
        asyncio.run(cancel_the_connect())
        with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
            made[0].execute("SELECT 1")
    finally:
        for connection in made:
            connection.close()
        database.close()
