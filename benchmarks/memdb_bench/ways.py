"""Each way of giving a test its ``session``: a ``conftest.py`` and how pytest is started.

Every way runs the same generated suite (:mod:`memdb_bench.suites`); only the fixture
named ``session`` differs, so the difference between two ways' times is what their ways
of reaching a database cost. The conftests are written verbatim into each way's folder:
their text is part of what is measured, so change it only on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFTEST_NODB = '''\
import pytest


@pytest.fixture
def session():
    """No database at all: what pytest itself costs per test."""
    return None
'''

CONFTEST_MEMDB = """\
import pytest


@pytest.fixture
def session(memdb_session):
    return memdb_session
"""

CONFTEST_SEED = '''\
"""The seed's InMemoryDatabase as a per-test fixture: sqlite3 backup() of the disk file
into a uniquely named shared-cache memory database, kept alive by the sync connection."""

import itertools
import os
import sqlite3

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

FIXTURE = os.environ["BENCH_DB"]
_names = itertools.count()


@pytest.fixture
async def session():
    uri = f"file:seed-{os.getpid()}-{next(_names)}?mode=memory&cache=shared"
    keeper = sqlite3.connect(uri, uri=True, check_same_thread=False)
    source = sqlite3.connect(FIXTURE)
    source.backup(keeper)
    source.close()
    # StaticPool: what SQLAlchemy 2.0 picks for mode=memory (2.1 warns unless it is named)
    engine = create_async_engine(f"sqlite+aiosqlite:///{uri}&uri=true", poolclass=StaticPool)
    async with async_sessionmaker(engine, expire_on_commit=False)() as db_session:
        yield db_session
    await engine.dispose()
    keeper.close()
'''

CONFTEST_TEMPFILE = '''\
"""A copy of the fixture file per test in tmp_path, opened with aiosqlite."""

import os
import shutil

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

FIXTURE = os.environ["BENCH_DB"]


@pytest.fixture
async def session(tmp_path):
    path = tmp_path / "app.sqlite"
    shutil.copyfile(FIXTURE, path)
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    async with async_sessionmaker(engine, expire_on_commit=False)() as db_session:
        yield db_session
    await engine.dispose()
    path.unlink()  # pytest keeps every tmp_path of the run: 200 copies would pile up
'''

CONFTEST_FACTORIES = '''\
"""An empty in-memory database per test: metadata.create_all, then the fixture's rows
inserted again (Core executemany, the fastest way factories could do it)."""

import os
import sqlite3
from datetime import datetime

import pytest
from sqlalchemy import DateTime, insert
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from models import Base

FIXTURE = os.environ["BENCH_DB"]
_rows = {}


def fixture_rows():
    """The rows to insert, read once per session (factories would build them in code)."""
    if not _rows:
        source = sqlite3.connect(f"file:{FIXTURE}?mode=ro", uri=True)
        source.row_factory = sqlite3.Row
        for table in Base.metadata.sorted_tables:
            dates = [c.name for c in table.columns if isinstance(c.type, DateTime)]
            rows = [dict(row) for row in source.execute(f"SELECT * FROM {table.name}")]
            for row in rows:
                for name in dates:
                    row[name] = datetime.fromisoformat(row[name])
            _rows[table] = rows
        source.close()
    return _rows


@pytest.fixture
async def session():
    rows = fixture_rows()
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        for table, table_rows in rows.items():
            await conn.execute(insert(table), table_rows)
    async with async_sessionmaker(engine, expire_on_commit=False)() as db_session:
        yield db_session
    await engine.dispose()
'''

CONFTEST_SHARED = '''\
"""One disk file shared by every test, no isolation: writes persist (the floor)."""

import asyncio
import os

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

engine = create_async_engine(f"sqlite+aiosqlite:///{os.environ['BENCH_SHARED_DB']}")
Session = async_sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
async def session():
    async with Session() as db_session:
        yield db_session


def pytest_sessionfinish(session, exitstatus):
    asyncio.run(engine.dispose())
'''


@dataclass(frozen=True)
class Way:
    """One way of giving each test its ``session``."""

    key: str
    label: str
    conftest: str
    memdb_isolation: str | None = None  # run with pytest-memdb in this mode
    shared_file: bool = False  # gets a private copy of the fixture file per run
    read_only: bool = False  # the tests skip their write (and commit)

    def pytest_args(self, fixture: Path) -> list[str]:
        """pytest-memdb's options for its own modes; the other ways unload the plugin, so
        they do not pay for it (its cost when unused is measured on its own)."""
        if self.memdb_isolation is None:
            return ["-p", "no:memdb"]
        return [f"--memdb-file={fixture}", f"--memdb-isolation={self.memdb_isolation}"]


BASELINE = Way("nodb", "no database (baseline)", CONFTEST_NODB)
WAYS: tuple[Way, ...] = (
    Way("copy", "pytest-memdb copy", CONFTEST_MEMDB, memdb_isolation="copy"),
    Way("rollback", "pytest-memdb rollback", CONFTEST_MEMDB, memdb_isolation="rollback"),
    Way("session", "pytest-memdb session", CONFTEST_MEMDB, memdb_isolation="session"),
    Way(
        "copy-ro",
        "pytest-memdb copy, tests that only read",
        CONFTEST_MEMDB,
        memdb_isolation="copy",
        read_only=True,
    ),
    Way("seed", "seed: backup() to shared-cache memory", CONFTEST_SEED),
    Way("tempfile", "temp-file copy per test", CONFTEST_TEMPFILE),
    Way("factories", "create_all + re-insert rows", CONFTEST_FACTORIES),
    Way("shared", "one shared file, no isolation", CONFTEST_SHARED, shared_file=True),
)
ALL_WAYS = (*WAYS, BASELINE)
"""Every way, the baseline last: the order of the report's rows."""
FLOORS = {
    "copy": "session",
    "rollback": "session",
    "seed": "shared",
    "tempfile": "shared",
    "factories": "shared",
}
"""Each way's floor: the same way of reaching a database, without isolation."""
