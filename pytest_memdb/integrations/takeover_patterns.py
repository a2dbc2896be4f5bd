"""``memdb_takeover`` patterns: which SQLite URLs a suite's own engines are taken over for.

Standard library only: parsed at start-up (:mod:`pytest_memdb.core.config`), matched
when an engine connects (:mod:`pytest_memdb.integrations.takeover`). A pattern is written as
the suite writes its URL (``sqlite:///./test.db``, ``sqlite+aiosqlite:///*``), and compared
with what SQLAlchemy's SQLite dialects pass the driver: the file's absolute path (the
dialect makes it absolute when the engine is made), ``:memory:``, or a ``file:`` URI.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pytest_memdb.errors import MemdbError

MEMORY = ":memory:"
ANY = "*"
_URL = re.compile(r"^sqlite(?:\+(?P<driver>\w+))?://(?P<rest>.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class TakeoverPattern:
    """One ``memdb_takeover`` line."""

    text: str
    """As the user wrote it (shown in the report header and in messages)."""
    driver: str | None
    """The driver it names (``aiosqlite``), or None for ``sqlite://``: any driver (a file is
    the same file whether ``pysqlite`` or ``aiosqlite`` opens it)."""
    database: str
    """``:memory:``, ``*`` (any database) or a path, which may hold ``*``, ``?``, ``[...]``."""

    def matches(self, driver: str, database: str) -> bool:
        """Whether a connection of ``driver`` to ``database`` (as the dialect passes it to
        the driver) is one to take over."""
        if self.driver is not None and self.driver != driver.lower():
            return False
        if self.database == ANY:
            return True
        actual = normal_database(database)
        if self.database == MEMORY or actual == MEMORY:
            return actual == self.database
        return fnmatch.fnmatchcase(actual, normal_database(self.database))


def normal_database(database: str) -> str:
    """``:memory:``, or the absolute path of a file (a ``file:`` URI's path, its query left
    out; a relative path from the current folder, as SQLite opens it)."""
    if database in ("", MEMORY):
        return MEMORY
    if database.startswith("file:"):
        path, _, query = database[len("file:") :].partition("?")
        if path in ("", MEMORY) or "mode=memory" in query:
            return MEMORY
        database = path
    return os.path.abspath(database)


def parse_takeover(entries: Iterable[object], origin: str) -> tuple[TakeoverPattern, ...]:
    """SQLite URL patterns, one per line; anything else is a usage error naming the line."""
    found = []
    for raw in entries:
        entry = raw.strip() if isinstance(raw, str) else raw
        if entry == "" or (isinstance(entry, str) and entry.startswith("#")):
            continue
        match = _URL.match(entry) if isinstance(entry, str) else None
        rest = match.group("rest") if match else ""
        if match is None or not (rest == "" or rest.startswith("/")):
            raise MemdbError(
                f"pytest-memdb: {origin} got {raw!r}; it takes SQLite URLs as your code "
                "writes them, one per line, each maybe with * for any characters: "
                "sqlite:///./test.db, sqlite:////tmp/app.db, sqlite:// (in memory), "
                "sqlite+aiosqlite:///* (every file an aiosqlite engine opens)."
            )
        assert isinstance(entry, str)
        database = rest[1:].partition("?")[0] if rest else ""
        driver = match.group("driver")
        found.append(
            TakeoverPattern(
                entry,
                driver.lower() if driver else None,
                MEMORY if database in ("", MEMORY) else database,
            )
        )
    return tuple(found)
