"""The pytest plugin: options, marker, hooks, report header and fixtures.

Loaded by every pytest run where pytest-memdb is installed (entry point
``pytest11: memdb``), so it imports nothing heavy: SQLAlchemy and aiosqlite are
imported when the first memdb fixture is set up. Each fixture is a thin,
synchronous wrapper over :mod:`pytest_memdb.registry`; being synchronous, they
work under pytest-asyncio (any mode, any loop scope) and anyio alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING

import pytest

from pytest_memdb import hooks
from pytest_memdb.config import ISOLATION_MODES, MARKER_ARGS, MemdbConfig, Target
from pytest_memdb.errors import MemdbError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
    from sqlalchemy.orm import Session

    from pytest_memdb.cache import QuickCheckCache, TemplateCache
    from pytest_memdb.janitor import MemdbHandle
    from pytest_memdb.queries import QueryCounter
    from pytest_memdb.registry import MemdbRegistry
    from pytest_memdb.strict import StrictGuard

settings_key = pytest.StashKey[MemdbConfig]()
registry_key = pytest.StashKey["MemdbRegistry"]()
strict_key = pytest.StashKey["StrictGuard"]()
open_handles_key = pytest.StashKey[list[tuple[str, "MemdbHandle"]]]()
"""The databases a test holds, by fixture name, for ``--memdb-keep-failed``."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memdb", "in-memory SQLite databases for tests (pytest-memdb)")
    group.addoption(
        "--memdb-file",
        dest="memdb_file",
        metavar="PATH",
        help="SQLite fixture file to copy into memory (overrides the memdb_file ini option; "
        "a relative path is relative to the current directory).",
    )
    group.addoption(
        "--memdb-metadata",
        dest="memdb_metadata",
        metavar="MODULE:NAME",
        help="DeclarativeBase subclass or MetaData whose tables the template gets "
        "(overrides memdb_metadata), e.g. myapp.models:Base.",
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
    group.addoption(
        "--memdb-keep-failed",
        dest="memdb_keep_failed",
        metavar="DIR",
        help="Write the database of each failing test to DIR/<test id>.sqlite, as it was "
        "at the failure.",
    )
    group.addoption(
        "--memdb-cache",
        dest="memdb_cache",
        action="store_true",
        default=False,
        help="Keep built templates in pytest's cache folder and reuse them across xdist "
        "workers and runs until an input changes (overrides memdb_cache).",
    )
    group.addoption(
        "--memdb-rebuild",
        dest="memdb_rebuild",
        action="store_true",
        default=False,
        help="Build every cached template again (once per run) and replace it in the cache.",
    )
    parser.addini(
        "memdb_file",
        "SQLite fixture file copied into memory once per session; relative to the ini "
        "file's folder.",
        default="",
    )
    parser.addini(
        "memdb_metadata",
        "package.module:Name of a DeclarativeBase subclass or MetaData, importable from the "
        "ini file's folder: its tables are created in the template (after memdb_file).",
        default="",
    )
    parser.addini(
        "memdb_load",
        "Seed steps run once on the template, in one transaction: .sql files (relative to "
        "the ini file's folder) or package.module:callable taking a sync Connection.",
        type="linelist",
        default=[],
    )
    parser.addini(
        "memdb_pragmas",
        "name=value SQLite pragmas set on every connection, one per line (e.g. foreign_keys=ON).",
        type="linelist",
        default=[],
    )
    parser.addini(
        "memdb_isolation",
        "copy (a fresh copy per test, default), rollback (a transaction rolled back after "
        "each test) or session (one database for the session).",
        default="copy",
    )
    parser.addini("memdb_echo", "Log the SQL of memdb engines.", type="bool", default=False)
    parser.addini(
        "memdb_bind",
        "package.module:attr of the app's Engine, AsyncEngine, sessionmaker, "
        "async_sessionmaker, scoped_session or async_scoped_session, one per line: pointed at "
        "each test's database while it runs, put back after.",
        type="linelist",
        default=[],
    )
    parser.addini(
        "memdb_session_class",
        "module:Class of an AsyncSession subclass for every async session the plugin makes "
        "(default: SQLModel's when memdb_metadata is SQLModel's, else AsyncSession).",
        default="",
    )
    parser.addini(
        "memdb_sync_session_class",
        "module:Class of a Session subclass for every sync session the plugin makes.",
        default="",
    )
    parser.addini(
        "memdb_alembic",
        "Path to an alembic.ini (relative to the ini file's folder): its migrations build the "
        "template, after memdb_file and before memdb_load (needs pytest-memdb[alembic]).",
        default="",
    )
    parser.addini(
        "memdb_alembic_revision",
        "The revision memdb_alembic migrates the template to (default head).",
        default="head",
    )
    parser.addini(
        "memdb_cache",
        "Keep built templates in pytest's cache folder, keyed by everything that built them: "
        "xdist workers build each once between them, later runs reuse it.",
        type="bool",
        default=False,
    )
    parser.addini(
        "memdb_strict",
        "Fail a test that opens, through SQLAlchemy, a SQLite database that is not one of its "
        "memdb databases (an engine a swap missed, the app's real file).",
        type="bool",
        default=False,
    )


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"memdb({', '.join(f'{a}=...' for a in MARKER_ARGS)}): build this test's memdb "
        "database from another fixture file, metadata or seed steps, or isolate it "
        "differently (copy, rollback, session).",
    )
    if config.option.help:  # --help must work even with a bad option value in the ini file
        return
    config.stash[settings_key] = MemdbConfig.from_pytest(config)


def pytest_report_header(config: pytest.Config) -> str | None:
    settings = config.stash.get(settings_key, None)
    if settings is None:
        return None
    sources = []
    if settings.file is not None:
        sources.append(f"file={settings.file} ({settings.file_origin})")
    if settings.metadata is not None:
        sources.append(f"metadata={settings.metadata} ({settings.metadata_origin})")
    if settings.alembic is not None:
        sources.append(f"alembic={settings.alembic} ({settings.alembic_revision})")
    if settings.load:
        sources.append(f"{len(settings.load)} load step(s)")
    if not sources:
        return None
    return f"memdb: {', '.join(sources)}, isolation={settings.isolation}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    settings = item.config.stash.get(settings_key, None)
    if settings is not None and settings.strict:
        _strict_guard(item.config).begin()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        yield
    finally:
        guard = item.config.stash.get(strict_key, None)
        opened = guard.end() if guard is not None else []
        if opened:
            raise pytest.fail.Exception("\n".join(opened), pytrace=False)


def _strict_guard(config: pytest.Config) -> StrictGuard:
    guard = config.stash.get(strict_key, None)
    if guard is None:
        from pytest_memdb.strict import StrictGuard

        guard = StrictGuard()
        config.stash[strict_key] = guard
        config.add_cleanup(guard.close)
    return guard


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    settings = item.config.stash.get(settings_key, None)
    if settings is not None and settings.keep_failed is not None and report.failed:
        from pytest_memdb.keep_failed import keep_databases

        held = item.stash.get(open_handles_key, [])
        lines = keep_databases(held, settings.keep_failed, item)
        if lines:
            report.sections.append(("pytest-memdb: database kept", "\n".join(lines)))
    return report


def _registry(config: pytest.Config) -> MemdbRegistry:
    """The session's registry, created (and SQLAlchemy imported) on first use."""
    registry = config.stash.get(registry_key, None)
    if registry is None:
        from pytest_memdb.registry import MemdbRegistry
        from pytest_memdb.templates import hook_runner

        workerinput = getattr(config, "workerinput", {})
        settings = config.stash[settings_key]
        registry = MemdbRegistry(
            settings,
            workerinput.get("workerid", "main"),
            hook_runner(config.hook.pytest_memdb_template, config),
            cache=_template_cache(config, settings) if settings.cache else None,
            checked=_checked_files(config),
        )
        config.stash[registry_key] = registry
        from pytest_memdb._loop import close_private_loop

        config.add_cleanup(close_private_loop)  # cleanups run last-in first-out: after close
        config.add_cleanup(registry.close)
    return registry


def _checked_files(config: pytest.Config) -> QuickCheckCache | None:
    """Fixture files known to pass ``quick_check``, in pytest's cache (None without one)."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return None
    from pytest_memdb.cache import QuickCheckCache

    return QuickCheckCache(cache)


def _template_cache(config: pytest.Config, settings: MemdbConfig) -> TemplateCache | None:
    """The run's :class:`TemplateCache`, or None (with a warning) without pytest's cache."""
    from pytest_memdb.cache import TemplateCache

    cache = getattr(config, "cache", None)
    if cache is None:
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                "pytest-memdb: memdb_cache needs pytest's cache (it is off: -p no:cacheprovider); "
                "templates are built as without it."
            ),
            stacklevel=2,
        )
        return None
    workerinput = getattr(config, "workerinput", {})
    import uuid

    return TemplateCache(
        cache.mkdir("pytest-memdb"),
        run_id=workerinput.get("testrunuid") or uuid.uuid4().hex,
        rebuild=settings.rebuild,
        base_dir=settings.base_dir,
        pragmas=settings.pragmas,
        hook_functions=[
            impl.function for impl in config.hook.pytest_memdb_template.get_hookimpls()
        ],
    )


def open_database(
    request: pytest.FixtureRequest, fixture: str, target: Callable[[], Target]
) -> Iterator[MemdbHandle]:
    """Set up one database fixture: configuration errors become a clean test error.

    The app objects the target binds (``memdb_bind``) point at the database for as long
    as the fixture lives.
    """
    guard = request.config.stash.get(strict_key, None)
    try:
        wanted = target()
        registry = _registry(request.config)
        with guard.paused() if guard is not None else contextlib.nullcontext():
            handle = registry.open(wanted)  # a build (migrations, seeds) may open others
    except MemdbError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    held = request.node.stash.setdefault(open_handles_key, [])
    held.append((fixture, handle))
    if guard is not None:
        guard.allow(handle.name)
    try:
        if wanted.bind:
            binder = registry.binder(wanted.bind, wanted.bind_origin)
            try:
                binder.objects()
            except MemdbError as exc:
                raise pytest.fail.Exception(str(exc), pytrace=False) from None
            with binder.bound(handle):
                yield handle
        else:
            yield handle
    finally:
        held.remove((fixture, handle))
        try:
            handle.close()
        except MemdbError as exc:  # the test escaped its isolation: an error at its teardown
            raise pytest.fail.Exception(str(exc), pytrace=False) from None


@pytest.fixture(autouse=True)
def _memdb_bind(request: pytest.FixtureRequest) -> None:
    """With ``memdb_bind`` (or a marker's ``bind=``), every test gets ``memdb``, so the app's
    objects never reach the app's own database, even in tests that do not ask for it."""
    settings = request.config.stash.get(settings_key, None)
    if settings is None:
        return
    marker = request.node.get_closest_marker("memdb")
    if settings.bind or (marker is not None and marker.kwargs.get("bind")):
        request.getfixturevalue("memdb")


@pytest.fixture
def memdb(request: pytest.FixtureRequest) -> Iterator[MemdbHandle]:
    """This test's in-memory database: name, URLs, engines, sessions."""
    settings = request.config.stash[settings_key]
    yield from open_database(request, "memdb", lambda: settings.target_for(request.node))


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


@pytest.fixture
def memdb_queries(memdb: MemdbHandle) -> QueryCounter:
    """Count (``.count()``) or cap (``.assert_max(n)``) the statements run on ``memdb``."""
    return memdb.queries
