"""Layers checked at every boundary of every test: the hooks that watch what fixtures write.

Registered when the first layer is set up (:func:`pytest_memdb.plugin.opening.open_layer`);
:func:`check_layers` also runs from the plugin's own set-up and teardown hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Generator, Iterator
from typing import TYPE_CHECKING

import pytest

from pytest_memdb.core.config import LAYER_FIXTURES
from pytest_memdb.errors import MemdbError
from pytest_memdb.plugin.state import (
    current_item_key,
    factory_modules,
    open_handles_key,
    registry_key,
)

if TYPE_CHECKING:
    from _pytest.fixtures import SubRequest

    from pytest_memdb.core.layers import MemdbLayer, Writer


def check_layers(config: pytest.Config, who: str) -> None:
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
        check_layers(item.config, f"a fixture of {item.nodeid}")
        try:
            return (yield)
        finally:
            check_layers(item.config, f"the test {item.nodeid}")

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
        writer = writer_of(fixturedef, request)
        if fixturedef.scope != "function":
            self._set_up[fixturedef] = writer
        try:
            with (
                registry.layers.fixture(writer, fixturedef.scope) as watch,
                factories_for_layer(request, layer_names),
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
            writer = writer_of(fixturedef, request)
        registry = request.config.stash.get(registry_key, None)
        if registry is not None and registry.layers:
            registry.layers.finished(writer)


_LAYER_NAMES = frozenset(LAYER_FIXTURES.values())


def writer_of(fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest) -> Writer:
    """Which fixture this is, as layers tell them apart (name, definition, parameter)."""
    from pytest_memdb.core.layers import Writer

    param = getattr(request, "param_index", None) if fixturedef.params is not None else None
    return Writer(fixturedef.argname, fixturedef.baseid, param)


def asked_fixtures(item: pytest.Item, names: Collection[str] | None = None) -> frozenset[Writer]:
    """The fixtures a test asked for (through its fixtures, or ``names``: those active now,
    ``request.getfixturevalue`` ones too), as :func:`writer_of` names them: for a name
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
def factories_for_layer(
    request: pytest.FixtureRequest, layer_names: frozenset[str]
) -> Iterator[None]:
    """``memdb_factories``' factories, inside a fixture that writes a layer, write through
    that layer's sessions (committed when the fixture's set-up returns)."""
    modules = factory_modules(request.config) if layer_names else None
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
