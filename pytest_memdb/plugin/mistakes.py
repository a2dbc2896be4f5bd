"""Mistakes a new user makes around the memdb fixtures, caught where pytest would report
something else, and explained (the texts are in :mod:`pytest_memdb.messages`).

* An ``async def`` test that uses memdb and that no async plugin runs (pytest-asyncio in
  its default strict mode, no marker): pytest fails it with "async def functions are not
  natively supported ... install a suitable plugin", though pytest-asyncio is installed.
  Such tests are found at collection (:func:`unrun_async`); only when there are any, a
  hook wrapper around their call replaces exactly that failure
  (:class:`AsyncTestsNotRun`): a test that another plugin runs is never touched.
* A fixture of a wider scope that asks for a function-scoped memdb fixture
  (``memdb_session`` in a session fixture): pytest's bare ``ScopeMismatch`` at the set-up
  of the tests that need it. When a test's set-up fails so, the fixtures' definitions say
  whether it is that (:func:`explain_scope_mismatch`), and the test's report shows an
  error that points at the layer of the fixture's scope instead.
* A test on anyio's trio backend: aiosqlite runs on asyncio only, and the first query
  fails with "There is no current event loop". Checked when a memdb database is set up
  for a test that has ``anyio_backend`` (:func:`anyio_backend_problem`).

Cheap to import (no SQLAlchemy).
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Generator, Mapping, Sequence
from typing import Any

import pytest

from pytest_memdb.core.config import LAYER_FIXTURES
from pytest_memdb.messages import ASYNC_TEST_NOT_RUN, ASYNCIO_ONLY, SCOPE_MISMATCH

PYTEST_ASYNC_FAILURE = "async def functions are not natively supported"
"""How pytest's failure of an async test that no plugin ran begins (pytest 8 and 9)."""
PYTEST_SCOPE_MISMATCH = "ScopeMismatch: "
"""How pytest's failure of a fixture that asks for one of a narrower scope begins."""
SCOPES = ("session", "package", "module", "class", "function")
"""pytest's scopes, widest first."""

FixtureDefs = Mapping[str, Sequence[Any]]


def _definitions(item: pytest.Item) -> FixtureDefs:
    info = getattr(item, "_fixtureinfo", None)
    found: FixtureDefs = getattr(info, "name2fixturedefs", {})
    return found


def _is_memdb(fixturedef: Any) -> bool:
    """Whether a fixture is one of pytest-memdb's (its own, or made by ``memdb_factory``)."""
    return str(getattr(fixturedef.func, "__module__", "")).startswith("pytest_memdb.")


def memdb_fixtures(item: pytest.Item) -> list[str]:
    """The memdb fixtures ``item`` uses: those it asks for itself first, else all."""
    definitions = _definitions(item)
    used = [
        name
        for name in getattr(item, "fixturenames", ())
        if definitions.get(name) and _is_memdb(definitions[name][-1])
    ]
    info = getattr(item, "_fixtureinfo", None)
    own = [name for name in used if name in getattr(info, "argnames", ())]
    return own or used


def unrun_async(item: pytest.Item) -> bool:
    """Whether ``item`` is an ``async def`` test that neither pytest-asyncio (it makes its
    tests items of its own classes) nor anyio's plugin (its tests have ``anyio_backend``)
    will run."""
    function = getattr(item, "obj", None)
    if not (inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)):
        return False
    if type(item).__module__.startswith("pytest_asyncio"):
        return False
    return "anyio_backend" not in getattr(item, "fixturenames", ())


class AsyncTestsNotRun:
    """Registered when the run has async tests that use memdb and that no plugin will run:
    pytest's failure of such a test says what to set instead."""

    name = "memdb-async-tests-not-run"

    def __init__(self, tests: Mapping[str, Collection[str]]) -> None:
        self._tests = tests
        """The fixtures each such test uses, by node id."""

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, object, object]:
        try:
            return (yield)
        except pytest.fail.Exception as exc:
            fixtures = self._tests.get(pyfuncitem.nodeid)
            if fixtures is None or not str(exc.msg).startswith(PYTEST_ASYNC_FAILURE):
                raise
            message = ASYNC_TEST_NOT_RUN(test=pyfuncitem.nodeid, fixtures=", ".join(fixtures))
            raise pytest.fail.Exception(message, pytrace=False) from None


def explain_scope_mismatch(item: pytest.Item, error: BaseException) -> str | None:
    """The explanation of ``error``, the failure of ``item``'s set-up, when it is pytest's
    ``ScopeMismatch`` on a memdb fixture (None for anything else). Looked at only when a
    set-up failed: checking every test at collection cost about 20 us a test."""
    if not isinstance(error, pytest.fail.Exception):
        return None
    if not str(error.msg).startswith(PYTEST_SCOPE_MISMATCH):
        return None
    return scope_mismatch(item)


def scope_mismatch(item: pytest.Item) -> str | None:
    """What is wrong when a fixture ``item`` needs is of a wider scope than a memdb fixture
    it asks for (None when nothing is): a fixture asked for with ``getfixturevalue`` is not
    seen."""
    definitions = _definitions(item)
    for name in getattr(item, "fixturenames", ()):
        chain = definitions.get(name)
        if not chain:
            continue
        fixturedef = chain[-1]
        if fixturedef.scope == "function" or _is_memdb(fixturedef):
            continue
        problem = _asks_narrower(fixturedef, definitions)
        if problem is not None:
            return problem
    return None


def _asks_narrower(fixturedef: Any, definitions: FixtureDefs) -> str | None:
    scope = fixturedef.scope
    for name in fixturedef.argnames:
        chain = definitions.get(name)
        if not chain or name == fixturedef.argname:
            continue
        wanted = chain[-1]
        if not _is_memdb(wanted) or SCOPES.index(wanted.scope) <= SCOPES.index(scope):
            continue
        layer_scope = scope if scope in LAYER_FIXTURES else "module"  # no package layer
        return SCOPE_MISMATCH(
            scope=scope,
            fixture=fixturedef.argname,
            wanted=name,
            wanted_scope=wanted.scope,
            layer_scope=layer_scope,
            layer=LAYER_FIXTURES[layer_scope],
        )
    return None


def anyio_backend_problem(request: pytest.FixtureRequest) -> str | None:
    """Why the test of ``request`` cannot use memdb: it runs on an anyio backend other
    than asyncio (None when it does not). The test's own list of fixture names is read (the
    request's is a copy made on each call), where anyio's plugin puts ``anyio_backend``."""
    if "anyio_backend" not in getattr(request.node, "fixturenames", ()):
        return None
    backend = request.getfixturevalue("anyio_backend")
    name = backend[0] if isinstance(backend, (tuple, list)) and backend else backend
    if name == "asyncio":
        return None
    return ASYNCIO_ONLY(test=request.node.nodeid, backend=name)
