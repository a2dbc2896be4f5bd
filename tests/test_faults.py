"""Faults: a test that fails, errors in set-up, is skipped, times out or is interrupted.

Each faulty inner test commits a row, then leaves a write pending (uncommitted, its
session still open) when the fault strikes. The test after it must be isolated: no
pending write visible, the committed one gone (``copy``, ``rollback``) or kept
(``session``, by design), and a new write must commit at once (no lock left behind).
At the end of the run every thread and file descriptor the plugin opened is closed,
no ResourceWarning is printed, and the fixture file is byte-identical.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import digest, make_sqlite, write_ini

ISOLATIONS = ["copy", "rollback", "session"]

# Records the open descriptors and threads before the first test and after pytest-memdb's
# end-of-session clean-up (clean-ups run last-in first-out; ours is registered first).
CONFTEST = """
import json, os, threading


def fds():
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return found


def state():
    return {"fds": fds(), "threads": sorted(t.name for t in threading.enumerate())}


def pytest_configure(config):
    start = state()

    def report():
        end = state()
        with open("end-state.json", "w") as f:
            json.dump({"start": start, "end": end}, f)

    config.add_cleanup(report)
"""

FAULTS = """
import asyncio

import pytest
from sqlalchemy import text

INSERT = text("INSERT INTO user (name) VALUES (:name)")
NAMES = text("SELECT name FROM user ORDER BY id")


async def commit_then_leave_pending(memdb, label):
    # A session the test never closes: the fault strikes with its write still pending.
    session = memdb.session()
    await session.execute(INSERT, {"name": f"{label}-committed"})
    await session.commit()
    await session.execute(INSERT, {"name": f"{label}-pending"})
    return session


async def check_isolated(memdb, previous):
    session_mode = memdb.isolation == "session"
    async with memdb.session() as session:
        names = list((await session.execute(NAMES)).scalars())
        assert f"{previous}-pending" not in names, names
        assert (f"{previous}-committed" in names) is session_mode, names
        if not session_mode:
            assert names == ["ada", "brian", "grace"], names
        # No lock left behind: a write commits well within the 5 s busy timeout.
        await asyncio.wait_for(session.execute(INSERT, {"name": "check"}), timeout=30)
        await session.commit()


async def test_01_fails(memdb):
    pending = await commit_then_leave_pending(memdb, "failed")
    assert pending is None, "this test fails on purpose"


async def test_02_isolated_after_failure(memdb):
    await check_isolated(memdb, "failed")


@pytest.fixture
def broken_setup(memdb, memdb_sync_session):
    memdb_sync_session.execute(INSERT, {"name": "setup-committed"})
    memdb_sync_session.commit()
    memdb_sync_session.execute(INSERT, {"name": "setup-pending"})
    raise RuntimeError("this fixture breaks on purpose")


def test_03_setup_error(broken_setup):
    pass


async def test_04_isolated_after_setup_error(memdb):
    await check_isolated(memdb, "setup")


async def test_05_skipped(memdb):
    pending = await commit_then_leave_pending(memdb, "skipped")
    pytest.skip(f"skipped on purpose, mid-transaction in {pending}")


async def test_06_isolated_after_skip(memdb):
    await check_isolated(memdb, "skipped")


async def test_07_times_out(memdb):
    pending = await commit_then_leave_pending(memdb, "timeout")
    # A second writer waits on the first one's lock; the test gives up before SQLite does.
    # In a task of its own: since Python 3.12 wait_for runs a coroutine in the waiting task
    # itself, and rollback mode fails a write at once when the task holding the lock is the
    # one waiting (it could never end its transaction): no timeout to test then.
    async with memdb.session() as other:
        blocked = asyncio.ensure_future(other.execute(INSERT, {"name": "blocked"}))
        await asyncio.wait_for(blocked, timeout=0.2)
    await pending.close()


async def test_08_isolated_after_timeout(memdb):
    await check_isolated(memdb, "timeout")
"""

INTERRUPTED = """
from sqlalchemy import text


async def test_interrupted(memdb):
    session = memdb.session()
    await session.execute(text("INSERT INTO user (name) VALUES ('interrupted-pending')"))
    raise KeyboardInterrupt


def test_never_runs(memdb):
    raise AssertionError("the run was interrupted before this test")
"""

AFTER_INTERRUPT = """
from sqlalchemy import text


async def test_next_run_is_clean(memdb_session):
    names = list((await memdb_session.execute(text("SELECT name FROM user"))).scalars())
    assert names == ["ada", "brian", "grace"]
"""

RUN_ARGS = ("-p", "no:cacheprovider", "-p", "no:randomly", "-W", "error::ResourceWarning")


def held(fds: dict[str, str]) -> list[str]:
    captured = ("pipe:", "/dev/null", "/dev/pts", "/dev/tty")
    return sorted(
        target
        for fd, target in fds.items()
        if int(fd) > 2
        and not target.startswith(captured)
        and not target.endswith(("(deleted)", "/stdout", "/stderr"))
    )


def assert_clean_end(pytester: pytest.Pytester, result: pytest.RunResult) -> None:
    state = json.loads((pytester.path / "end-state.json").read_text())
    assert state["end"]["threads"] == state["start"]["threads"] == ["MainThread"], state
    # Files and sockets (pytest's own capture pipes and files aside, which an interrupted
    # run has already put back when clean-ups run).
    assert held(state["end"]["fds"]) == held(state["start"]["fds"]), state
    for output in (result.stdout, result.stderr):
        output.no_fnmatch_line("*ResourceWarning*")
        output.no_fnmatch_line("*Exception ignored*")
        output.no_fnmatch_line("*INTERNALERROR*")
        output.no_fnmatch_line("*is locked*")


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_failure_setup_error_skip_and_timeout_leave_the_next_test_isolated(
    pytester: pytest.Pytester, isolation: str
) -> None:
    source = make_sqlite(pytester.path / "data" / "app.sqlite")
    before = digest(source)
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_faults_inner=FAULTS)

    result = pytester.runpytest_subprocess(*RUN_ARGS, "-v", timeout=300)

    result.assert_outcomes(passed=4, failed=2, errors=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*test_01_fails FAILED*",
            "*test_02_isolated_after_failure PASSED*",
            "*test_03_setup_error ERROR*",
            "*test_04_isolated_after_setup_error PASSED*",
            "*test_05_skipped SKIPPED*",
            "*test_06_isolated_after_skip PASSED*",
            "*test_07_times_out FAILED*",
            "*test_08_isolated_after_timeout PASSED*",
        ]
    )
    result.stdout.fnmatch_lines(["*RuntimeError: this fixture breaks on purpose*"])
    result.stdout.fnmatch_lines(["*TimeoutError*"])
    assert_clean_end(pytester, result)
    assert digest(source) == before


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_keyboard_interrupt_tears_down_cleanly_and_the_next_run_is_isolated(
    pytester: pytest.Pytester, isolation: str
) -> None:
    source = make_sqlite(pytester.path / "data" / "app.sqlite")
    before = digest(source)
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_interrupted=INTERRUPTED)

    result = pytester.runpytest_subprocess(*RUN_ARGS, timeout=300)

    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
    result.stdout.no_fnmatch_line("*the run was interrupted before this test*")
    assert_clean_end(pytester, result)
    assert digest(source) == before

    (pytester.path / "test_interrupted.py").unlink()
    pytester.makepyfile(test_after=AFTER_INTERRUPT)
    again = pytester.runpytest_subprocess(*RUN_ARGS, timeout=300)
    again.assert_outcomes(passed=1)
    assert_clean_end(pytester, again)
    assert digest(source) == before
