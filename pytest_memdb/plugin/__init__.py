"""The pytest plugin: options, marker, hooks, report header and fixtures.

Loaded by every pytest run where pytest-memdb is installed (entry point
``pytest11: memdb``), so it imports nothing heavy: SQLAlchemy and aiosqlite are
imported when the first memdb fixture is set up. Each fixture is a thin,
synchronous wrapper over :mod:`pytest_memdb.core.registry`; being synchronous, they
work under pytest-asyncio (any mode, any loop scope) and anyio alike.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Collection, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_memdb.core.config import LAYER_FIXTURES, MARKER_ARGS, MemdbConfig, Target
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.errors import MemdbError, MemdbWarning
from pytest_memdb.messages import ASYNC_SESSION_IN_DEF_TEST
from pytest_memdb.plugin import hooks, mistakes
from pytest_memdb.plugin.nesting import announce, nested_in
from pytest_memdb.plugin.options import add_options

if TYPE_CHECKING:
    from _pytest.fixtures import SubRequest
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
    from sqlalchemy.orm import Session

    from pytest_memdb.core.janitor import MemdbHandle
    from pytest_memdb.core.layers import MemdbLayer, Writer
    from pytest_memdb.core.registry import MemdbRegistry
    from pytest_memdb.integrations.factory_binding import FactoryBinding, FactoryModules
    from pytest_memdb.integrations.queries import QueryCounter
    from pytest_memdb.integrations.strict import StrictGuard
    from pytest_memdb.integrations.takeover import Takeover

settings_key = pytest.StashKey[MemdbConfig]()
registry_key = pytest.StashKey["MemdbRegistry"]()
strict_key = pytest.StashKey["StrictGuard"]()
takeover_key = pytest.StashKey["Takeover"]()
nested_key = pytest.StashKey[str | None]()
"""The ini file of the pytest run this one was started from, when it reads the same one."""
open_handles_key = pytest.StashKey[list[tuple[str, "MemdbHandle"]]]()
"""The databases a test holds, by fixture name, for ``--memdb-keep-failed``."""
factory_modules_key = pytest.StashKey["FactoryModules"]()
current_item_key = pytest.StashKey[pytest.Item]()
"""The test being run: a layer set up for it is laid on the wider layers *it* asked for."""
stats_key = pytest.StashKey[MemdbStats]()
"""What the plugin did in the run, for the terminal summary (:mod:`pytest_memdb.core.stats`)."""
STATS_OUTPUT = "memdb_stats"
"""The key of a worker's counts in xdist's ``workeroutput``."""


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
    if settings.takeover:  # before collection: engines used at import are taken over too
        from pytest_memdb.integrations.takeover import Takeover

        config.stash[takeover_key] = Takeover(
            settings.takeover, settings.takeover_origin, lambda: _registry(config).outside()
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    """After the last session-scoped teardown, before the databases are freed (cleanups)."""
    takeover = _takeover(config)
    if takeover is not None:
        takeover.close()


def _takeover(config: pytest.Config) -> Takeover | None:
    """``memdb_takeover``'s listener (made at start-up), or None without the option."""
    return config.stash.get(takeover_key, None)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    settings = config.stash.get(settings_key, None)
    if settings is None:
        return None
    lines = [_sources(settings)]
    takeover = _takeover(config)
    if takeover is not None:
        lines.append(takeover.describe())
    nested = config.stash.get(nested_key, None)
    if nested is not None and settings.strict:
        lines.append(
            f"memdb: started by a test of another run of {nested}: memdb_strict applies here "
            "too (-o memdb_strict=false turns it off for this run)"
        )
    return [line for line in lines if line] or None


def _sources(settings: MemdbConfig) -> str:
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
        return ""
    return f"memdb: {', '.join(sources)}, isolation={settings.isolation}, {_restore(settings)}"


def _restore(settings: MemdbConfig) -> str:
    """Which restore copy and rollback use, as the issue asks the header to say."""
    if settings.restore == "backup":
        return "restore=backup (memdb_restore)"
    from pytest_memdb.sqlite import pages

    if pages.page_vfs() is None:
        return f"restore=backup (page restores not available: {pages.unavailable_reason})"
    return "restore=pages written (memdb-pages VFS)"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    settings = item.config.stash.get(settings_key, None)
    if settings is None:
        return
    item.config.stash[current_item_key] = item
    if settings.strict:
        _strict_guard(item.config).begin()
    _check_layers(item.config, "something between the last test and this one")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        yield
    finally:
        guard = item.config.stash.get(strict_key, None)
        opened = guard.end() if guard is not None else []
        if opened:
            raise pytest.fail.Exception("\n".join(opened), pytrace=False)
        _check_layers(item.config, f"the teardown of {item.nodeid}")


def _check_layers(config: pytest.Config, who: str) -> None:
    """Every layer as its fixtures left it, at each boundary of every test (memdb or not):
    one ``PRAGMA data_version`` a layer; a layer written by anything else is put back, and
    the phase that did it fails (:mod:`pytest_memdb.core.layers`)."""
    registry = config.stash.get(registry_key, None)
    if registry is not None and registry.layers:
        problems = registry.layers.check(who)
        if problems:
            raise pytest.fail.Exception("\n".join(problems), pytrace=False)


class LayerBoundaries:
    """The hooks that watch layers, registered when the first layer is set up (a suite
    without layers pays nothing for them: a hook wrapper around every fixture's set-up
    costs about 1.5 us a fixture)."""

    name = "memdb-layer-boundaries"

    def __init__(self) -> None:
        self._set_up: dict[pytest.FixtureDef[object], Writer] = {}
        """Each scoped fixture as it was set up, its parameter included: pytest before 9
        tears a parametrized fixture moving on to its next parameter down with the request
        of that *next* parameter, so the request at teardown may name the wrong one."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        _check_layers(item.config, f"a fixture of {item.nodeid}")
        try:
            return (yield)
        finally:
            _check_layers(item.config, f"the test {item.nodeid}")

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[object], request: SubRequest
    ) -> Generator[None, object, object]:
        """Around the set-up of a scoped fixture (or one that asks for a layer): what it
        wrote to a layer of its own scope is checkpointed, anything else put back and
        reported; with ``memdb_factories``, the factories write through its layer."""
        registry = request.config.stash.get(registry_key, None)
        if registry is None or not registry.layers:
            return (yield)
        layer_names = _LAYER_NAMES.intersection(fixturedef.argnames)
        if fixturedef.scope == "function" and not layer_names:
            return (yield)
        writer = _writer(fixturedef, request)
        if fixturedef.scope != "function":
            self._set_up[fixturedef] = writer
        try:
            with (
                registry.layers.fixture(writer, fixturedef.scope) as watch,
                _factories_for_layer(request, layer_names),
            ):
                result = yield
        except MemdbError as exc:
            fixturedef.finish(request)  # set up again by the next test, not cached as good
            raise pytest.fail.Exception(str(exc), pytrace=False) from None
        item = request.config.stash.get(current_item_key, None)
        if watch.checkpointed and item is not None and item.stash.get(open_handles_key, []):
            watch.problems.append(
                f"pytest-memdb: the fixture {writer} wrote to a layer after the memdb of "
                f"{item.nodeid} was made (asked for with request.getfixturevalue after "
                "memdb): its rows are not in this test's database. Ask for it in the test's "
                "signature, or from a fixture the test asks for."
            )
        if watch.problems:
            fixturedef.finish(request)  # its rows were put back: set up again when asked
            raise pytest.fail.Exception("\n".join(watch.problems), pytrace=False)
        return result

    def pytest_fixture_post_finalizer(
        self, fixturedef: pytest.FixtureDef[object], request: SubRequest
    ) -> None:
        """A fixture torn down while its layer lives (a parametrized one moving on to its
        next parameter): its rows leave the layer. pytest before 9 calls this again for a
        fixture already torn down (no cached result then): nothing to do."""
        if fixturedef.scope == "function" or fixturedef.cached_result is None:
            return
        writer = self._set_up.pop(fixturedef, None)
        if writer is None:  # set up before the first layer was
            writer = _writer(fixturedef, request)
        registry = request.config.stash.get(registry_key, None)
        if registry is not None and registry.layers:
            registry.layers.finished(writer)


_LAYER_NAMES = frozenset(LAYER_FIXTURES.values())


def _writer(fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest) -> Writer:
    """Which fixture this is, as layers tell them apart (name, definition, parameter)."""
    from pytest_memdb.core.layers import Writer

    param = getattr(request, "param_index", None) if fixturedef.params is not None else None
    return Writer(fixturedef.argname, fixturedef.baseid, param)


def _asked(item: pytest.Item, names: Collection[str] | None = None) -> frozenset[Writer]:
    """The fixtures a test asked for (through its fixtures, or ``names``: those active now,
    ``request.getfixturevalue`` ones too), as :func:`_writer` names them: for a name
    overridden in a conftest or a module, the definitions actually used (the last, and each
    one that asks for its own name, the one before it)."""
    from pytest_memdb.core.layers import Writer

    info = getattr(item, "_fixtureinfo", None)
    definitions = getattr(info, "name2fixturedefs", {})
    manager = getattr(item.session, "_fixturemanager", None)
    indices = getattr(getattr(item, "callspec", None), "indices", {})
    found = set()
    for name in getattr(item, "fixturenames", ()) if names is None else names:
        known = definitions.get(name)
        if known is None and manager is not None:  # asked for with getfixturevalue
            known = manager.getfixturedefs(name, item)
        chain = list(known or ())
        while chain:
            used = chain.pop()
            param = indices.get(name) if used.params is not None else None
            found.add(Writer(name, used.baseid, param))
            if name not in used.argnames:
                break
    return frozenset(found)


@contextlib.contextmanager
def _factories_for_layer(
    request: pytest.FixtureRequest, layer_names: frozenset[str]
) -> Iterator[None]:
    """``memdb_factories``' factories, inside a fixture that writes a layer, write through
    that layer's sessions (committed when the fixture's set-up returns)."""
    modules = _factory_modules(request.config) if layer_names else None
    if modules is None:
        yield
        return
    from pytest_memdb.integrations.factory_binding import FactoryBinding

    name = next(name for name in reversed(LAYER_FIXTURES.values()) if name in layer_names)
    layer: MemdbLayer = request.getfixturevalue(name)
    binding, sessions = FactoryBinding.for_layer(layer)
    try:
        binding.bind(*modules.factories())
    except MemdbError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    try:
        yield
        sessions.commit()
    finally:
        sessions.close()
        binding.restore()


def _strict_guard(config: pytest.Config) -> StrictGuard:
    guard = config.stash.get(strict_key, None)
    if guard is None:
        from pytest_memdb.integrations.strict import StrictGuard

        guard = StrictGuard(nested=config.stash.get(nested_key, None))
        config.stash[strict_key] = guard
        config.add_cleanup(guard.close)
    return guard


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


def _registry(config: pytest.Config) -> MemdbRegistry:
    """The session's registry, created (and SQLAlchemy imported) on first use."""
    registry = config.stash.get(registry_key, None)
    if registry is None:
        from pytest_memdb.core.cache import quick_check_cache, template_cache
        from pytest_memdb.core.registry import MemdbRegistry
        from pytest_memdb.core.templates import hook_runner

        workerinput = getattr(config, "workerinput", {})
        settings = config.stash[settings_key]
        stats = config.stash[stats_key]
        stats.used = True
        registry = MemdbRegistry(
            settings,
            workerinput.get("workerid", "main"),
            hook_runner(config.hook.pytest_memdb_template, config),
            cache=template_cache(config, settings) if settings.cache else None,
            checked=quick_check_cache(config),
            stats=stats,
        )
        config.stash[registry_key] = registry
        from pytest_memdb.core._loop import close_private_loop

        config.add_cleanup(close_private_loop)  # cleanups run last-in first-out: after close
        config.add_cleanup(registry.close)
    return registry


def open_database(
    request: pytest.FixtureRequest,
    fixture: str,
    target: Callable[[], Target],
    layer: MemdbLayer | None = None,
) -> Iterator[MemdbHandle]:
    """Set up one database fixture: configuration errors become a clean test error.

    The app objects the target binds (``memdb_bind``) point at the database for as long
    as the fixture lives. With a ``layer``, the database is a copy of it, and the test
    must not write to the layer itself.
    """
    problem = mistakes.anyio_backend_problem(request)
    if problem is not None:
        raise pytest.fail.Exception(problem, pytrace=False)
    guard = request.config.stash.get(strict_key, None)
    takeover = _takeover(request.config) if fixture == "memdb" else None
    try:
        wanted = target()
        registry = _registry(request.config)
        with (
            guard.paused() if guard is not None else contextlib.nullcontext(),
            takeover.paused() if takeover is not None else contextlib.nullcontext(),
        ):  # a build (migrations, seeds) may open others
            handle = registry.open(
                wanted,
                layer,
                asked=_asked(request.node, request.fixturenames),
                test=request.node.nodeid,
            )
    except MemdbError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    held = request.node.stash.setdefault(open_handles_key, [])
    held.append((fixture, handle))
    if guard is not None:
        guard.allow(handle.name)
    try:
        if takeover is not None:  # the suite's own engines connect to this database now
            for message in takeover.begin(handle.engines_handed):
                warnings.warn(MemdbWarning(message), stacklevel=1)
        if wanted.bind:
            binder = registry.binder(wanted.bind, wanted.bind_origin)
            try:
                named = binder.objects()  # as they are for this test
            except MemdbError as exc:
                raise pytest.fail.Exception(str(exc), pytrace=False) from None
            with binder.bound(handle, named):
                yield handle
        else:
            yield handle
    finally:
        held.remove((fixture, handle))
        try:
            if takeover is not None:
                takeover.end()  # its connections closed before the database is restored
        finally:
            try:
                handle.close()
            except MemdbError as exc:  # the test escaped its isolation: an error at teardown
                raise pytest.fail.Exception(str(exc), pytrace=False) from None


def open_layer(request: pytest.FixtureRequest, scope: str) -> Iterator[MemdbLayer]:
    """Set up one scope's layer (``memdb_suite``, ``memdb_module``, ``memdb_class``).

    It is laid on the nearest wider layer that the test it is set up for asked for
    (through its fixtures), else on the template: a module whose tests never ask for
    ``memdb_suite`` gets none of its rows, whichever tests ran before.
    """
    settings = request.config.stash[settings_key]
    node = request.node
    item = request.config.stash.get(current_item_key, None)
    asked = getattr(item, "fixturenames", ()) if item is not None else ()
    scopes = list(LAYER_FIXTURES)
    wider = [LAYER_FIXTURES[s] for s in scopes[: scopes.index(scope)]]
    parent_name = next((name for name in reversed(wider) if name in asked), None)
    parent: MemdbLayer | None = (
        request.getfixturevalue(parent_name) if parent_name is not None else None
    )
    registry = _registry(request.config)
    plugins = request.config.pluginmanager
    if not plugins.has_plugin(LayerBoundaries.name):
        plugins.register(LayerBoundaries(), LayerBoundaries.name)

    def laying() -> tuple[Collection[Writer], str]:  # asked at the layer's first use
        now = request.config.stash.get(current_item_key, None)
        if now is None:
            return (), "a test"
        return _asked(now), now.nodeid

    try:
        layer = registry.layer(
            lambda: settings.target_for(node), scope, getattr(node, "name", scope), parent, laying
        )
    except MemdbError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    guard = request.config.stash.get(strict_key, None)
    forget: Callable[[], None] | None = None
    if guard is not None:  # the layer's database is the plugin's own: its fixtures use its URL
        forget = guard.allow_for_run(lambda: (layer.name,) if layer.laid else ())
    try:
        yield layer
    finally:
        if forget is not None:
            forget()
        registry.close_layer(layer)


def _innermost_layer(request: pytest.FixtureRequest) -> MemdbLayer | None:
    """The layer of the narrowest scope this test asked for (through its fixtures), if any."""
    names = request.fixturenames
    for name in reversed(LAYER_FIXTURES.values()):
        if name in names:
            found: MemdbLayer = request.getfixturevalue(name)
            return found
    return None


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
            at = _first_function_scoped(item, names)
            item.fixturenames = [*names[:at], *missing, *names[at:]]  # type: ignore[attr-defined]
    _find_mistakes(config, items)


def _find_mistakes(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Async tests that use memdb and that no plugin runs
    (:mod:`pytest_memdb.plugin.mistakes`): their failure says what to set."""
    unrun: dict[str, list[str]] = {}
    for item in items:
        if mistakes.unrun_async(item):
            fixtures = mistakes.memdb_fixtures(item)
            if fixtures:
                unrun[item.nodeid] = fixtures
    plugins = config.pluginmanager
    if unrun and not plugins.has_plugin(mistakes.AsyncTestsNotRun.name):
        plugins.register(mistakes.AsyncTestsNotRun(unrun), mistakes.AsyncTestsNotRun.name)


def _first_function_scoped(item: pytest.Item, names: list[str]) -> int:
    """Where the function-scoped fixtures of ``item`` begin (pytest sorts them last)."""
    info = getattr(item, "_fixtureinfo", None)
    definitions = getattr(info, "name2fixturedefs", {})
    for index, name in enumerate(names):
        found = definitions.get(name)
        if found and found[-1].scope == "function":
            return index
    return len(names)


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
        modules = _factory_modules(request.config)
        if modules is not None:
            try:
                binding.bind(*modules.factories())
            except MemdbError as exc:
                raise pytest.fail.Exception(str(exc), pytrace=False) from None
        yield binding
    finally:
        binding.restore()


def _factory_modules(config: pytest.Config) -> FactoryModules | None:
    """The ``memdb_factories`` modules of the run, imported at their first use."""
    settings = config.stash[settings_key]
    if not settings.factories:
        return None
    modules = config.stash.get(factory_modules_key, None)
    if modules is None:
        from pytest_memdb.integrations.factory_binding import FactoryModules

        modules = FactoryModules(settings.factories, settings.factories_origin, settings.base_dir)
        config.stash[factory_modules_key] = modules
    return modules


@pytest.fixture
def memdb(request: pytest.FixtureRequest) -> Iterator[MemdbHandle]:
    """This test's in-memory database: name, URLs, engines, sessions; a copy of the template,
    or of the data the test's scoped fixtures added through a layer (``memdb_module``...)."""
    settings = request.config.stash[settings_key]
    layer = _innermost_layer(request)
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
