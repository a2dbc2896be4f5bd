"""A script that never closes what the plugin made still exits, as with plain SQLAlchemy.

SQLAlchemy's aiosqlite dialect makes each connection's worker thread a daemon, so a pooled
connection left open at exit does not keep the interpreter waiting for that thread. It does
so only for the connections it opens itself, not for those of an ``async_creator`` (ours):
there, the thread is ours to make a daemon. Without that, the README's use of
``InMemoryDatabase`` (set up, query, no ``close()``) printed its result and never exited.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pytest_memdb
from tests.helpers import USERS, make_sqlite

EXIT_TIMEOUT_S = 60.0
"""The bound on one script's run (it takes well under a second when it exits)."""

WATCHDOG_S = 45.0
"""The script dumps every thread's stack and exits on its own after this: the failure then
shows the thread it waited for."""

PROLOGUE = f"""\
import asyncio, faulthandler, sys
faulthandler.dump_traceback_later({WATCHDOG_S}, exit=True)
from sqlalchemy import text
"""

RUNTIME_SCRIPT = """\
from pytest_memdb import InMemoryDatabase

db = InMemoryDatabase(mode=sys.argv[2])
db.setup(sys.argv[1])

async def main():
    async with db.get_session() as session:
        print((await session.execute(text("SELECT count(*) FROM user"))).scalar())

asyncio.run(main())
"""

TEST_ENGINES_SCRIPT = """\
from pathlib import Path
from pytest_memdb.sqlite.engines import EnginePair
from pytest_memdb.sqlite.loading import load_file
from pytest_memdb.sqlite.memory import unique_name
from pytest_memdb.sqlite.savepoints import SharedConnection

database = load_file(Path(sys.argv[1]), unique_name("exit", "test"), origin="test")
pair = EnginePair(database, echo=False)
shared = SharedConnection(database, echo=False)

async def main():
    for engine in (pair.async_engine, shared.async_engine):
        async with engine.connect() as conn:
            print((await conn.execute(text("SELECT count(*) FROM user"))).scalar())

asyncio.run(main())
"""


def run_script(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new interpreter on the ``pytest_memdb`` these tests import."""
    path = tmp_path / "script.py"
    path.write_text(PROLOGUE + textwrap.dedent(script))
    root = str(Path(pytest_memdb.__file__).resolve().parent.parent)
    paths = [root, os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    try:
        return subprocess.run(
            [sys.executable, str(path), *args],
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT_S,
            env=env,
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
        pytest.fail(f"the script did not exit within {EXIT_TIMEOUT_S:.0f} s: {exc.output!r}")


@pytest.mark.parametrize("mode", ["memory", "mmap"])
def test_script_that_never_closes_the_runtime_exits(tmp_path: Path, mode: str) -> None:
    source = make_sqlite(tmp_path / "data" / "app.sqlite")
    done = run_script(tmp_path, RUNTIME_SCRIPT, str(source), mode)
    assert (done.returncode, done.stdout) == (0, f"{len(USERS)}\n"), done.stderr


def test_script_that_never_disposes_the_test_engines_exits(tmp_path: Path) -> None:
    source = make_sqlite(tmp_path / "data" / "app.sqlite")
    done = run_script(tmp_path, TEST_ENGINES_SCRIPT, str(source))
    assert (done.returncode, done.stdout) == (0, f"{len(USERS)}\n" * 2), done.stderr
