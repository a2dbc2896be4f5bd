"""``memdb.reset()`` with the app's bound sessionmakers and the test's own listeners, and
two defaults: a script using ``InMemoryDatabase`` exits, and a sync test that forgets
``await`` on ``memdb_session`` is told to use ``memdb_sync_session``.

Real inner pytest runs (and a real script in a subprocess) on a real fixture file.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.boundaries import WIDE, outcomes, tail
from tests.helpers import make_sqlite, write_ini

APP = """
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

engine = create_async_engine("sqlite+aiosqlite:///app-never-opened.db")
Session = async_sessionmaker(engine, expire_on_commit=False)
sync_engine = create_engine("sqlite:///app-never-opened-sync.db")
SyncSession = sessionmaker(sync_engine, expire_on_commit=False)
"""

BIND = "\n    app:Session\n    app:SyncSession"


def _project(pytester: pytest.Pytester, isolation: str, suite: str) -> None:
    write_ini(
        pytester,
        memdb_file="data/app.sqlite",
        memdb_isolation=isolation,
        memdb_bind=BIND,
        pythonpath=".",
    )
    pytester.makepyfile(app=APP, test_suite=suite)


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.RunResult:
    for key, value in WIDE.items():
        monkeypatch.setenv(key, value)
    return pytester.runpytest_subprocess("-p", "hypothesispytest", "-rA", timeout=300)


EXAMPLES = """
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import text

import app

EXAMPLE = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
COUNT = text("SELECT count(*) FROM user")
INSERT = text("INSERT INTO user (name) VALUES (:name)")


@EXAMPLE
@given(name=st.sampled_from(["a", "b", "c"]))
async def test_1_async_examples(memdb, memdb_engine, name):
    await memdb.areset()
    async with app.Session() as session:
        assert (await session.execute(COUNT)).scalar_one() == 3
        await session.execute(INSERT, {"name": name})
        await session.commit()
    async with memdb_engine.connect() as connection:
        assert (await connection.execute(COUNT)).scalar_one() == 4
        # per-connection state the example leaves behind
        await connection.exec_driver_sql("PRAGMA reverse_unordered_selects = 1")
        raw = await connection.get_raw_connection()
        await raw.driver_connection.create_function("probe", 1, lambda x: x)


@EXAMPLE
@given(name=st.sampled_from(["a", "b", "c"]))
def test_2_sync_examples(memdb, name):
    memdb.reset()
    with app.SyncSession() as session:
        assert session.execute(COUNT).scalar_one() == 3
        session.execute(INSERT, {"name": name})
        session.commit()
    with memdb.sync_engine.connect() as connection:
        assert connection.execute(COUNT).scalar_one() == 4
        connection.exec_driver_sql("PRAGMA reverse_unordered_selects = 1")
        connection.connection.driver_connection.create_function("probe", 1, lambda x: x)


async def test_3_next(memdb_session):
    assert (await memdb_session.execute(COUNT)).scalar_one() == 3
"""


@pytest.mark.usefixtures("app_db")
def test_every_example_works_after_one_left_connection_state_in_rollback_mode(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4a: Hypothesis examples, each reset, using the app's bound sessionmaker and
    ``memdb_engine`` (or ``memdb.sync_engine``), each leaving a PRAGMA and a function on
    the connection: no example finds a closed database."""
    _project(pytester, "rollback", EXAMPLES)
    result = _run(pytester, monkeypatch)
    seen = outcomes(result)
    assert seen.get("test_1_async_examples") == ["PASSED"], tail(result)
    assert seen.get("test_2_sync_examples") == ["PASSED"], tail(result)
    result.assert_outcomes(passed=3)


LISTENER = """
from sqlalchemy import event, text

import app

FIRED = []


def listener(conn, cursor, statement, parameters, context, executemany):
    FIRED.append(statement)


async def run_both(memdb):
    async with memdb.session() as session:
        await session.execute(text("SELECT 1 AS through_memdb"))
    async with app.Session() as session:
        await session.execute(text("SELECT 2 AS through_the_app"))


def fired(marker):
    return [statement for statement in FIRED if marker in statement]


async def test_1_a_listener_survives_the_reset(memdb, memdb_engine):
    event.listen(memdb_engine.sync_engine, "before_cursor_execute", listener)
    {reset}
    assert memdb.engine is memdb_engine
    FIRED.clear()
    await run_both(memdb)
    assert fired("through_memdb"), FIRED
    assert fired("through_the_app"), FIRED


async def test_2_next_does_not_fire_it(memdb, memdb_engine):
    FIRED.clear()
    await run_both(memdb)
    assert FIRED == []
"""


@pytest.mark.usefixtures("app_db")
@pytest.mark.parametrize("reset", ["memdb.reset()", "await memdb.areset()"])
def test_a_reset_keeps_the_tests_engine_and_its_listeners_in_copy_mode(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, reset: str
) -> None:
    """4b: after a reset, ``memdb.engine is memdb_engine``; a listener the test added
    before it fires for memdb's sessions and the bound app's; the next test never fires it."""
    _project(pytester, "copy", LISTENER.format(reset=reset))
    result = _run(pytester, monkeypatch)
    seen = outcomes(result)
    assert seen.get("test_1_a_listener_survives_the_reset") == ["PASSED"], tail(result)
    assert seen.get("test_2_next_does_not_fire_it") == ["PASSED"], tail(result)
    result.assert_outcomes(passed=2)


SCRIPT = """
import asyncio
import sys

from sqlalchemy import text

from pytest_memdb import InMemoryDatabase

db = InMemoryDatabase({mode})
db.setup(sys.argv[1])


async def main():
    async with db.get_sessionmaker()() as session:
        return (await session.execute(text("SELECT count(*) FROM user"))).scalar_one()


print("users:", asyncio.run(main()), flush=True)
# no db.close(): the interpreter must still exit
"""


@pytest.mark.parametrize("mode", ["", "mode='mmap'"])
def test_a_script_using_the_runtime_class_exits(tmp_path: Path, mode: str) -> None:
    """6a: set up, query, no explicit close: the script prints and exits with 0."""
    source = make_sqlite(tmp_path / "app.sqlite")
    script = tmp_path / "serve.py"
    script.write_text(textwrap.dedent(SCRIPT.format(mode=mode)))
    try:
        done = subprocess.run(
            [sys.executable, str(script), str(source)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the script printed {exc.stdout!r} but did not exit within 60 s")
    assert done.stdout == "users: 3\n", done.stderr
    assert done.returncode == 0, done.stderr


NO_AWAIT = """
from sqlalchemy import text


def test_1_forgets_await(memdb_session):
    memdb_session.execute(text("select 1"))
"""


@pytest.mark.usefixtures("app_db")
def test_a_sync_test_using_the_async_session_is_told_about_the_sync_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6b: a plain ``def`` test calls ``memdb_session.execute(...)`` without ``await``:
    it fails or errors, and the output names ``memdb_sync_session``."""
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(test_no_await=NO_AWAIT)
    result = _run(pytester, monkeypatch)
    seen = outcomes(result).get("test_1_forgets_await", [])
    assert {"FAILED", "ERROR"} & set(seen), tail(result)
    assert "memdb_sync_session" in result.stdout.str(), tail(result)
