"""The pytest plugin: options, marker, hooks, report header and fixtures.

Loaded by every pytest run where pytest-memdb is installed (entry point
``pytest11: memdb``), so it imports nothing heavy: SQLAlchemy and aiosqlite are
imported when the first memdb fixture is set up. Each fixture is a thin,
synchronous wrapper over :mod:`pytest_memdb.core.registry`; being synchronous, they
work under pytest-asyncio (any mode, any loop scope) and anyio alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_memdb.core.config import MARKER_ARGS, MemdbConfig
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.errors import MemdbError
from pytest_memdb.messages import ASYNC_SESSION_IN_DEF_TEST
from pytest_memdb.options import add_options
from pytest_memdb.plugin import hooks, mistakes, postgresql, state
from pytest_memdb.plugin.boundaries import check_layers
from pytest_memdb.plugin.collection import find_mistakes, first_function_scoped
from pytest_memdb.plugin.nesting import announce, nested_in
from pytest_memdb.plugin.opening import innermost_layer, open_database, open_layer
from pytest_memdb.plugin.report import sources
from pytest_memdb.plugin.state import (
    STATS_OUTPUT,
    current_item_key,
    nested_key,
    open_handles_key,
    settings_key,
    stats_key,
    strict_key,
    takeover_key,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
    from sqlalchemy.orm import Session

    from pytest_memdb.core.janitor import MemdbHandle
    from pytest_memdb.core.layers import MemdbLayer
    from pytest_memdb.integrations.factory_binding import FactoryBinding
    from pytest_memdb.integrations.queries import QueryCounter


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


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
    settings = config.stash[settings_key] = MemdbConfig.from_pytest(config)
    config.stash[stats_key] = MemdbStats()
    if not hasattr(config, "workerinput"):  # an xdist worker is part of its controller's run
        config.stash[nested_key] = nested_in(config.inipath)
        config.add_cleanup(announce(config.inipath))
    postgresql.configure(config, settings)  # the server before anything asks for it
    if settings.takeover:  # before collection: engines used at import are taken over too
        from pytest_memdb.integrations.takeover import Takeover

        config.stash[takeover_key] = Takeover(
            settings.takeover, settings.takeover_origin, lambda: state.takeover_scratch(config)
        )


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: a worker runs on the controller's PostgreSQL server (``memdb_postgresql``)."""
    postgresql.configure_node(node.config, node)


def pytest_unconfigure(config: pytest.Config) -> None:
    """After the last session-scoped teardown, before the databases are freed (cleanups)."""
    takeover = state.takeover(config)
    if takeover is not None:
        takeover.close()


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    settings = config.stash.get(settings_key, None)
    if settings is None:
        return None
    lines = [sources(settings), postgresql.header(config)]
    takeover = state.takeover(config)
    if takeover is not None:
        lines.append(takeover.describe())
    nested = config.stash.get(nested_key, None)
    if nested is not None and settings.strict:
        lines.append(
            f"memdb: started by a test of another run of {nested}: memdb_strict applies here "
            "too (-o memdb_strict=false turns it off for this run)"
        )
    return [line for line in lines if line] or None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    settings = item.config.stash.get(settings_key, None)
    if settings is None:
        return
    item.config.stash[current_item_key] = item
    if settings.strict:
        state.strict_guard(item.config).begin()
    check_layers(item.config, "something between the last test and this one")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        yield
    finally:
        guard = item.config.stash.get(strict_key, None)
        opened = guard.end() if guard is not None else []
        if opened:
            raise pytest.fail.Exception("\n".join(opened), pytrace=False)
        check_layers(item.config, f"the teardown of {item.nodeid}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    if call.when == "setup" and call.excinfo is not None:
        _explain_setup_failure(item, call)
    report = yield
    settings = item.config.stash.get(settings_key, None)
    if settings is not None and settings.keep_failed is not None and report.failed:
        from pytest_memdb.plugin.keep_failed import keep_databases

        held = item.stash.get(open_handles_key, [])
        lines = keep_databases(held, settings.keep_failed, item)
        if lines:
            report.sections.append(("pytest-memdb: database kept", "\n".join(lines)))
    return report


def _explain_setup_failure(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """pytest's ``ScopeMismatch`` on a memdb fixture, reported as an explanation instead
    (:func:`pytest_memdb.plugin.mistakes.explain_scope_mismatch`)."""
    assert call.excinfo is not None
    problem = mistakes.explain_scope_mismatch(item, call.excinfo.value)
    if problem is not None:
        explained = pytest.fail.Exception(problem, pytrace=False)
        call.excinfo = pytest.ExceptionInfo.from_exception(
            explained.with_traceback(call.excinfo.tb)
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker sends what it counted to the controller."""
    stats = session.config.stash.get(stats_key, None)
    output = getattr(session.config, "workeroutput", None)
    if stats is not None and stats.used and output is not None:
        output[STATS_OUTPUT] = stats.counts()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The xdist controller adds up what each worker counted."""
    counts = getattr(node, "workeroutput", {}).get(STATS_OUTPUT)
    stats = node.config.stash.get(stats_key, None)
    if counts is not None and stats is not None:
        stats.add(counts)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """What the plugin did, when a memdb fixture was used: one line, a count a line with
    ``-v`` (nothing with ``-qq``)."""
    stats = config.stash.get(stats_key, None)
    verbosity = config.get_verbosity()
    if stats is None or not stats.used or hasattr(config, "workerinput") or verbosity < -1:
        return
    if verbosity > 0:
        terminalreporter.write_sep("-", "pytest-memdb")
        for line in stats.lines():
            terminalreporter.write_line(line)
    else:
        terminalreporter.write_line(stats.line())


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``memdb_bind`` (or a marker's ``bind=``), every test gets ``memdb``, so the app's
    objects never reach the app's own database, even in tests that do not ask for it; with
    ``memdb_factories``, every test gets ``memdb_factories``, so the modules' factories write
    through the test's session. With ``memdb_takeover``, every test gets ``memdb`` too, moved
    first even where the test asks for it (after a fixture that connects through a
    taken-over engine, that fixture would reach the scratch database, not the test's).

    Added to those tests' fixtures here, as the first of their function-scoped ones (where an
    autouse fixture would set them up), rather than by autouse fixtures: one cost every test
    of the suite, memdb or not, about 30 us.
    """
    settings = config.stash.get(settings_key, None)
    if settings is None:
        return
    for item in items:
        names = getattr(item, "fixturenames", None)
        if not isinstance(names, list):
            continue
        wanted = []
        marker = item.get_closest_marker("memdb")
        if settings.bind or settings.takeover or (marker is not None and marker.kwargs.get("bind")):
            wanted.append("memdb")
        if settings.factories:
            wanted.append("memdb_factories")
        if settings.takeover and "memdb" in names:
            names = [name for name in names if name != "memdb"]  # first, as below
        missing = [name for name in wanted if name not in names]
        if missing:
            at = first_function_scoped(item, names)
            item.fixturenames = [*names[:at], *missing, *names[at:]]  # type: ignore[attr-defined]
    find_mistakes(config, items)


@pytest.fixture
def memdb_factories(request: pytest.FixtureRequest, memdb: MemdbHandle) -> Iterator[FactoryBinding]:
    """factory_boy / polyfactory factories writing through this test's session: those of the
    ``memdb_factories`` modules, and any passed to ``.bind(...)``; put back at teardown."""
    from pytest_memdb.integrations.factory_binding import FactoryBinding, session_kind

    binding = FactoryBinding(
        session_kind(request.fixturenames),
        sync_session=lambda: request.getfixturevalue("memdb_sync_session"),
        async_session=lambda: request.getfixturevalue("memdb_session"),
    )
    try:
        modules = state.factory_modules(request.config)
        if modules is not None:
            try:
                binding.bind(*modules.factories())
            except MemdbError as exc:
                raise pytest.fail.Exception(str(exc), pytrace=False) from None
        yield binding
    finally:
        binding.restore()


@pytest.fixture
def memdb(request: pytest.FixtureRequest) -> Iterator[MemdbHandle]:
    """This test's in-memory database: name, URLs, engines, sessions; a copy of the template,
    or of the data the test's scoped fixtures added through a layer (``memdb_module``...)."""
    settings = request.config.stash[settings_key]
    layer = innermost_layer(request)
    yield from open_database(request, "memdb", lambda: settings.target_for(request.node), layer)


@pytest.fixture(scope="session")
def memdb_suite(request: pytest.FixtureRequest) -> Iterator[MemdbLayer]:
    """Data for every test of the run (per xdist worker): write it from a session-scoped
    fixture (``memdb_session`` is the test's ``AsyncSession``, hence the name)."""
    yield from open_layer(request, "session")


@pytest.fixture(scope="module")
def memdb_module(request: pytest.FixtureRequest) -> Iterator[MemdbLayer]:
    """Data for the tests of one module: write it from a module-scoped fixture; each test
    of the module that asks for that fixture starts from the template plus it (plus
    ``memdb_suite``'s rows, when the test asks for those too)."""
    yield from open_layer(request, "module")


@pytest.fixture(scope="class")
def memdb_class(request: pytest.FixtureRequest) -> Iterator[MemdbLayer]:
    """Data for the tests of one class (Django's ``setUpTestData``), on top of the wider
    layers the test asks for."""
    yield from open_layer(request, "class")


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
def memdb_session(request: pytest.FixtureRequest, memdb: MemdbHandle) -> Iterator[AsyncSession]:
    """An ``AsyncSession`` on this test's database, closed at teardown."""
    from pytest_memdb.core._loop import run_sync

    if _plain_def_asking(request, "memdb_session"):
        raise pytest.fail.Exception(
            ASYNC_SESSION_IN_DEF_TEST(test=request.node.nodeid), pytrace=False
        )

    session = memdb.session()
    try:
        yield session
    finally:
        run_sync(session.close())


def _plain_def_asking(request: pytest.FixtureRequest, name: str) -> bool:
    """Whether the test itself (not a fixture of it) asks for ``name`` and is a plain def
    (a Hypothesis test's own function is its ``inner_test``)."""
    function = getattr(request.node, "function", None)
    inner = getattr(getattr(function, "hypothesis", None), "inner_test", function)
    if inner is None or inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner):
        return False
    code = getattr(inner, "__code__", None)
    return code is not None and name in code.co_varnames[: code.co_argcount]


@pytest.fixture
def memdb_sync_session(memdb: MemdbHandle) -> Iterator[Session]:
    """A synchronous ``Session`` on the same database, for sync tests and set-up code."""
    with memdb.sync_session() as session:
        yield session


@pytest.fixture
def memdb_queries(memdb: MemdbHandle) -> QueryCounter:
    """Count (``.count()``) or cap (``.assert_max(n)``) the statements run on ``memdb``."""
    return memdb.queries
