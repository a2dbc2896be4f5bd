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
import traceback
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, event

from pytest_memdb.errors import MemdbError

_IGNORED_FRAMES = ("/sqlalchemy/", "/pytest_memdb/", "/asyncio/", "/aiosqlite/", "/greenlet/")


class StrictGuard:
    """Which SQLite databases the running test may open; what it opened besides them."""

    def __init__(self) -> None:
        self.allowed: set[str] | None = None
        """The running test's memdb database names; None between tests (nothing checked)."""
        self.violations: list[str] = []
        event.listen(Engine, "do_connect", self._do_connect)

    def begin(self) -> None:
        self.allowed, self.violations = set(), []

    def allow(self, name: str) -> None:
        if self.allowed is not None:
            self.allowed.add(name)

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

    def _do_connect(
        self, dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> None:
        if self.allowed is None or dialect.name != "sqlite":
            return
        database = str(cargs[0] if cargs else cparams.get("database", ""))
        if any(f"/{name}?" in database for name in self.allowed):
            return
        message = (
            f"pytest-memdb (memdb_strict): this test opened the SQLite database "
            f"{database or ':memory:'!r} through SQLAlchemy, which is not one of its memdb "
            f"databases ({', '.join(sorted(self.allowed)) or 'it has none'}), at "
            f"{_caller()}. An engine the swap onto memdb missed? Name it (or the "
            "sessionmaker that uses it) in memdb_bind, or build it from memdb_url."
        )
        self.violations.append(message)
        raise MemdbError(message)


def _caller() -> str:
    """The first frame of the test's or the app's own code on the way to the connect."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not any(part in frame.filename.replace("\\", "/") for part in _IGNORED_FRAMES):
            return f"{frame.filename}:{frame.lineno} ({frame.name})"
    return "an unknown place"
