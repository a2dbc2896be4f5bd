"""Counting the SQL statements a test and its app run on a test database.

One listener on SQLAlchemy's ``Engine`` class sees every statement of every
engine, sync or async (an ``AsyncEngine`` runs on a sync one), including
engines the app built itself from ``memdb_url``. It is installed only while a
count is running, and keeps a statement when the engine's URL names the
database being counted. Imports SQLAlchemy: load lazily.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection

from pytest_memdb.core.statements import leading_verb

TRANSACTION_CONTROL = frozenset({"BEGIN", "SAVEPOINT", "RELEASE", "COMMIT", "ROLLBACK", "END"})
"""Not counted: they differ between isolation modes while the test's work does not."""


class CapturedQueries:
    """The statements run on one database while a ``count()`` block was open."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        return len(self.statements)

    def __len__(self) -> int:
        return len(self.statements)

    def listing(self) -> str:
        """The statements, numbered, one per line (as a failure message shows them)."""
        return "\n".join(f"{n}. {statement}" for n, statement in enumerate(self.statements, 1))

    def __repr__(self) -> str:
        return f"<CapturedQueries {self.count} on {self.database}>"


class QueryCounter:
    """``memdb_queries``: count, or cap, the statements run on one test's database."""

    def __init__(self, database: str) -> None:
        self.database = database

    @contextmanager
    def count(self) -> Iterator[CapturedQueries]:
        """``with memdb_queries.count() as q: ...``, then read ``q.count``, ``q.statements``."""
        captured = CapturedQueries(self.database)
        _start(captured)
        try:
            yield captured
        finally:
            _stop(captured)

    @contextmanager
    def assert_max(self, limit: int) -> Iterator[CapturedQueries]:
        """Fail the test when the block ran more than ``limit`` statements, listing them."""
        with self.count() as captured:
            yield captured
        if captured.count > limit:
            pytest.fail(
                f"Expected at most {limit} queries on the test database, but "
                f"{captured.count} were run:\n{captured.listing()}",
                pytrace=False,
            )


_lock = threading.Lock()
_active: list[CapturedQueries] = []


def _start(captured: CapturedQueries) -> None:
    with _lock:
        if not _active:
            event.listen(Engine, "before_cursor_execute", _record)
        _active.append(captured)


def _stop(captured: CapturedQueries) -> None:
    with _lock:
        _active.remove(captured)
        if not _active:
            event.remove(Engine, "before_cursor_execute", _record)


def _record(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> None:
    verb = leading_verb(statement)
    if not verb or verb in TRANSACTION_CONTROL:
        return
    url = str(conn.engine.url)
    name = conn.engine.url.database  # PostgreSQL: the database's own name
    for captured in list(_active):
        if f"/{captured.database}?" in url or name == captured.database:
            captured.statements.append(statement.strip())
