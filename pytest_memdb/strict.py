"""``memdb_strict``: a test that opens a SQLite database that is not one of its own fails.

Imports SQLAlchemy: load lazily (only runs with ``memdb_strict = true`` import it). A swap
onto memdb misses an engine now and then (a module the README's ``memdb_bind`` did not
name, a ``create_engine`` inside a function): its tests then read and write the app's real
database file, or an empty one created beside it, and may still pass. One process-wide
``do_connect`` listener on SQLAlchemy's ``Engine`` class sees every connection any engine
is about to open (the plugin's own engines use creators and do not pass through it).
While a test runs, a SQLite connection to anything but that test's memdb databases is
refused before SQLite opens (or creates) the file, and the test fails at teardown too, so
an app that swallows the error cannot hide it.

Not seen: connections opened without SQLAlchemy (``sqlite3.connect``), and engines with a
``creator`` of their own.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

from sqlalchemy import Engine, event

from pytest_memdb.errors import MemdbError

_IGNORED_FRAMES = (
    "/sqlalchemy/",
    "/pytest_memdb/",
    "/asyncio/",
    "/aiosqlite/",
    "/greenlet/",
    "/_pytest/",
    "/pluggy/",
    "/pytest_asyncio/",
)
"""Frames never shown as where a connection was opened (the way there, not its cause)."""


def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {paths[key] for key in ("stdlib", "platstdlib") if paths.get(key)}
    found.update([os.path.realpath(path) for path in found])
    return tuple(os.path.join(os.path.normcase(path), "") for path in found)


_STDLIB = _stdlib_dirs()
"""Python's own modules (``contextlib``: ``with engine.begin()`` connects in its
``__enter__``; ``threading``, ``concurrent.futures``...), never the user's code."""

Names = Callable[[], Iterable[str]]


class StrictGuard:
    """Which SQLite databases the running test may open; what it opened besides them."""

    def __init__(self) -> None:
        self.allowed: set[str] | None = None
        """The running test's memdb database names; None between tests (nothing checked)."""
        self.violations: list[str] = []
        self._run_wide: dict[int, Names] = {}
        """Databases of the plugin's own allowed in every test while they live (a layer's:
        its scoped fixtures build engines from its URL), as callables naming them."""
        self._next = 0
        event.listen(Engine, "do_connect", self._do_connect)

    def begin(self) -> None:
        self.allowed, self.violations = set(), []

    def allow(self, name: str) -> None:
        if self.allowed is not None:
            self.allowed.add(name)

    def allow_for_run(self, names: Names) -> Callable[[], None]:
        """Allow, in every test, the databases ``names()`` names when a connection is made
        (a layer's, once it is laid: none before), until the function returned is called
        (when they are freed)."""
        key, self._next = self._next, self._next + 1
        self._run_wide[key] = names

        def forget() -> None:
            self._run_wide.pop(key, None)

        return forget

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing checked while the plugin builds a template (a migration's own database,
        a seed step reading another file): that is not the test's doing."""
        allowed, self.allowed = self.allowed, None
        try:
            yield
        finally:
            self.allowed = allowed

    def end(self) -> list[str]:
        """Stop checking; what the test opened that it should not have."""
        found, self.allowed, self.violations = self.violations, None, []
        return found

    def close(self) -> None:
        event.remove(Engine, "do_connect", self._do_connect)
        self._run_wide.clear()

    def _run_wide_names(self) -> set[str]:
        found: set[str] = set()
        for names in list(self._run_wide.values()):
            with contextlib.suppress(Exception):  # a database being freed: none
                found.update(names())
        return found

    def _do_connect(
        self, dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> None:
        if self.allowed is None or dialect.name != "sqlite":
            return
        database = str(cargs[0] if cargs else cparams.get("database", ""))
        if any(f"/{name}?" in database for name in self.allowed):
            return
        if self._run_wide and any(f"/{name}?" in database for name in self._run_wide_names()):
            return
        fixture = _fixture_running()
        own = ", ".join(sorted(self.allowed)) or "it has none"
        if fixture is None:
            who, whose = "this test", f"its memdb databases ({own})"
            advice = (
                "An engine the swap onto memdb missed? Name it (or the sessionmaker that uses "
                "it) in memdb_bind, or build it from memdb_url."
            )
        else:
            who, whose = fixture, f"this test's memdb databases ({own}) nor a live layer's"
            advice = (
                "An engine the swap onto memdb missed? Name it (or the sessionmaker that uses "
                "it) in memdb_bind; in a function-scoped fixture, build it from memdb_url; in "
                "a scoped fixture, from its layer's URL (memdb_module.url or .sync_url, "
                "memdb_class's, memdb_suite's)."
            )
        message = (
            f"pytest-memdb (memdb_strict): {who} opened the SQLite database "
            f"{database or ':memory:'!r} through SQLAlchemy, which is not one of {whose}, at "
            f"{_caller()}. {advice}"
        )
        self.violations.append(message)
        raise MemdbError(message)


def _user_code(filename: str) -> bool:
    path = filename.replace("\\", "/")
    if path.startswith("<frozen ") or any(part in path for part in _IGNORED_FRAMES):
        return False
    if "/site-packages/" in path or "/dist-packages/" in path:
        return True
    normal = os.path.normcase(filename)
    return not any(normal.startswith(stdlib) for stdlib in _STDLIB)


def _frames() -> Iterator[FrameType]:
    """The frames on the way to the connect, innermost first; through the greenlets that
    SQLAlchemy's asyncio layer runs its sync code in, out to the code that awaited it."""
    frame: FrameType | None = sys._getframe(1)
    greenlets = sys.modules.get("greenlet")
    current = greenlets.getcurrent() if greenlets is not None else None
    while True:
        while frame is not None:
            yield frame
            frame = frame.f_back
        current = getattr(current, "parent", None)
        if current is None:
            return
        frame = getattr(current, "gr_frame", None)


def _caller() -> str:
    """The first frame of the test's or the app's own code on the way to the connect (not
    SQLAlchemy's, the plugin's, pytest's or Python's own: ``contextlib``, ``threading``)."""
    for frame in _frames():
        code = frame.f_code
        if _user_code(code.co_filename):
            return f"{code.co_filename}:{frame.f_lineno} ({code.co_name})"
    return "an unknown place"


def _fixture_running() -> str | None:
    """The fixture being set up or torn down on the way to the connect, described (None:
    the test itself, or a thread of its, as far as can be told).

    Read from pytest's own frames (``pytest_fixture_setup(fixturedef, request)``,
    ``FixtureDef.finish``): nothing is recorded while fixtures run, so it costs nothing
    until a connection is refused."""
    for frame in _frames():
        code = frame.f_code
        path = code.co_filename.replace("\\", "/")
        if path.endswith("/_pytest/python.py") and code.co_name == "pytest_pyfunc_call":
            return None
        if path.endswith("/_pytest/fixtures.py"):
            if code.co_name == "pytest_fixture_setup":
                phase, definition = "set up for", frame.f_locals.get("fixturedef")
            elif code.co_name == "finish":
                phase, definition = "torn down after", frame.f_locals.get("self")
            else:
                phase, definition = "", None
            name = getattr(definition, "argname", None)
            if isinstance(name, str):
                scope = getattr(definition, "scope", "function")
                return f"the {scope}-scoped fixture {name!r} ({phase} this test)"
    return None
