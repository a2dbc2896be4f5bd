"""The pytest plugin: options, marker, report header and fixtures.

Loaded by every pytest run where pytest-memdb is installed (entry point
``pytest11: memdb``), so it imports nothing heavy: SQLAlchemy and aiosqlite are
imported when the first memdb fixture is set up. Each fixture is a thin,
synchronous wrapper over :mod:`pytest_memdb.registry`; being synchronous, they
work under pytest-asyncio (any mode, any loop scope) and anyio alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pytest_memdb.config import ISOLATION_MODES, MARKER_ARGS, MemdbConfig
from pytest_memdb.errors import MemdbError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
    from sqlalchemy.orm import Session

    from pytest_memdb.janitor import MemdbHandle
    from pytest_memdb.registry import MemdbRegistry

settings_key = pytest.StashKey[MemdbConfig]()
registry_key = pytest.StashKey["MemdbRegistry"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memdb", "in-memory copies of a SQLite fixture file (pytest-memdb)")
    group.addoption(
        "--memdb-file",
        dest="memdb_file",
        metavar="PATH",
        help="SQLite fixture file to copy into memory (overrides the memdb_file ini option; "
        "a relative path is relative to the current directory).",
    )
    group.addoption(
        "--memdb-isolation",
        dest="memdb_isolation",
        metavar="MODE",
        help=f"How tests are kept apart: {', '.join(ISOLATION_MODES)} "
        "(overrides memdb_isolation; default copy).",
    )
    group.addoption(
        "--memdb-echo",
        dest="memdb_echo",
        action="store_true",
        default=False,
        help="Log every SQL statement of memdb engines (SQLAlchemy echo=True).",
    )
    parser.addini(
        "memdb_file",
        "SQLite fixture file copied into memory once per session; relative to the ini "
        "file's folder.",
        default="",
    )
    parser.addini(
        "memdb_isolation",
        "copy (a fresh copy per test, default), rollback (a transaction rolled back after "
        "each test) or session (one database for the session).",
        default="copy",
    )
    parser.addini("memdb_echo", "Log the SQL of memdb engines.", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"memdb({', '.join(f'{a}=...' for a in MARKER_ARGS)}): use another SQLite fixture "
        "file or isolation mode (copy, rollback, session) for this test.",
    )
    if config.option.help:  # --help must work even with a bad option value in the ini file
        return
    config.stash[settings_key] = MemdbConfig.from_pytest(config)


def pytest_report_header(config: pytest.Config) -> str | None:
    settings = config.stash.get(settings_key, None)
    if settings is None or settings.file is None:
        return None
    return f"memdb: file={settings.file} ({settings.file_origin}), isolation={settings.isolation}"


def _registry(config: pytest.Config) -> MemdbRegistry:
    """The session's registry, created (and SQLAlchemy imported) on first use."""
    registry = config.stash.get(registry_key, None)
    if registry is None:
        from pytest_memdb.registry import MemdbRegistry

        workerinput = getattr(config, "workerinput", {})
        registry = MemdbRegistry(config.stash[settings_key], workerinput.get("workerid", "main"))
        config.stash[registry_key] = registry
        config.add_cleanup(registry.close)
    return registry


@pytest.fixture
def memdb(request: pytest.FixtureRequest) -> Iterator[MemdbHandle]:
    """This test's in-memory copy of the fixture file: name, URLs, engines, sessions."""
    settings = request.config.stash[settings_key]
    try:
        handle = _registry(request.config).open(settings.target_for(request.node))
    except MemdbError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture
def memdb_url(memdb: MemdbHandle) -> str:
    """The ``sqlite+aiosqlite://`` URL of this test's database."""
    return memdb.url


@pytest.fixture
def memdb_engine(memdb: MemdbHandle) -> AsyncEngine:
    """An ``AsyncEngine`` on this test's database; disposed at teardown."""
    return memdb.engine


@pytest.fixture
def memdb_sessionmaker(memdb: MemdbHandle) -> async_sessionmaker[AsyncSession]:
    """An ``async_sessionmaker`` to hand to application code (FastAPI dependency overrides)."""
    return memdb.sessionmaker


@pytest.fixture
def memdb_session(memdb: MemdbHandle) -> Iterator[AsyncSession]:
    """An ``AsyncSession`` on this test's database, closed at teardown."""
    from pytest_memdb._loop import run_sync

    session = memdb.session()
    try:
        yield session
    finally:
        run_sync(session.close())


@pytest.fixture
def memdb_sync_session(memdb: MemdbHandle) -> Iterator[Session]:
    """A synchronous ``Session`` on the same database, for sync tests and set-up code."""
    with memdb.sync_sessionmaker() as session:
        yield session
