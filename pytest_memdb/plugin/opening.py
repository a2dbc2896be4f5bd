"""Setting up a test's database and a scope's layer: what every memdb fixture does.

A configuration error becomes a clean test error (``pytest.fail``), never a traceback
into the plugin.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Collection, Iterator
from functools import partial
from typing import TYPE_CHECKING

import pytest

from pytest_memdb.core.config import LAYER_FIXTURES, Target
from pytest_memdb.errors import MemdbError, MemdbWarning
from pytest_memdb.plugin import mistakes, state
from pytest_memdb.plugin.boundaries import LayerBoundaries, asked_fixtures
from pytest_memdb.plugin.state import current_item_key, open_handles_key, settings_key, strict_key

if TYPE_CHECKING:
    from pytest_memdb.core.janitor import MemdbHandle
    from pytest_memdb.core.layers import MemdbLayer, Writer
    from pytest_memdb.integrations.takeover import Takeover


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
    takeover = state.takeover(request.config) if fixture == "memdb" else None
    try:
        wanted = target()
        registry = state.registry(request.config)
        with (
            guard.paused() if guard is not None else contextlib.nullcontext(),
            takeover.paused() if takeover is not None else contextlib.nullcontext(),
        ):  # a build (migrations, seeds) may open others
            handle = registry.open(
                wanted,
                layer,
                asked=asked_fixtures(request.node, request.fixturenames),
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
            _take_over(takeover, handle.engines_handed)
            handle.around_reset(takeover.end, partial(_take_over, takeover))  # as at the end
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
    registry = state.registry(request.config)
    plugins = request.config.pluginmanager
    if not plugins.has_plugin(LayerBoundaries.name):
        plugins.register(LayerBoundaries(), LayerBoundaries.name)

    def laying() -> tuple[Collection[Writer], str]:  # asked at the layer's first use
        now = request.config.stash.get(current_item_key, None)
        if now is None:
            return (), "a test"
        return asked_fixtures(now), now.nodeid

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


def innermost_layer(request: pytest.FixtureRequest) -> MemdbLayer | None:
    """The layer of the narrowest scope this test asked for (through its fixtures), if any."""
    names = request.fixturenames
    for name in reversed(LAYER_FIXTURES.values()):
        if name in names:
            found: MemdbLayer = request.getfixturevalue(name)
            return found
    return None


def _take_over(takeover: Takeover, engines: object) -> None:
    """The suite's own engines connect to ``engines``' database from now on."""
    for message in takeover.begin(engines):
        warnings.warn(MemdbWarning(message), stacklevel=2)
