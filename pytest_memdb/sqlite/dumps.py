"""Writing a live test database out as a SQLite file, without waiting on its locks.

Standard library only. The image is taken before the test's teardown, so it is
the database as the test left it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pytest_memdb.sqlite.memory import MemoryDatabase

LOCK_WAIT_S = 1.0
"""How long a dump waits for a write another connection of the test is finishing."""


def save_committed(database: MemoryDatabase, path: Path) -> Path:
    """Write the database's last committed state to ``path`` as a SQLite file.

    A new connection reads it inside a read transaction it opens first, waiting at
    most :data:`LOCK_WAIT_S`: SQLite's ``memdb`` lets no reader in while another
    connection holds a pending write (a session the test left uncommitted), and
    ``backup()`` itself would retry such a lock forever. That case raises
    ``sqlite3.OperationalError`` saying so, and the report shows it instead of a path.
    """
    reader = sqlite3.connect(
        database.sqlite_uri, uri=True, timeout=LOCK_WAIT_S, isolation_level=None
    )
    try:
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            raise sqlite3.OperationalError(
                f"{exc}: a connection of the test holds an uncommitted write, and SQLite "
                "lets no one read past it (commit or roll back before the test fails; "
                "rollback isolation dumps pending writes too)"
            ) from None
        with _writing(path) as partial:
            target = sqlite3.connect(partial)
            try:
                reader.backup(target)
            finally:
                target.close()
    finally:
        reader.close()
    return path


def save_connection_view(connection: sqlite3.Connection, path: Path) -> Path:
    """Write what ``connection`` sees, its open transaction included, to ``path``.

    ``backup()`` from a connection inside a write transaction waits forever on its
    own lock and ``VACUUM INTO`` refuses to run in a transaction; ``serialize()``
    copies the image at once; ``iterdump()`` rebuilds it elsewhere where this Python's SQLite
    has no serialize API (``sqlite3.Connection.serialize`` is missing then).
    """
    serialize = getattr(connection, "serialize", None)
    with _writing(path) as partial:
        if serialize is not None:
            partial.write_bytes(serialize())
        else:  # a SQLite built without the serialize API
            target = sqlite3.connect(partial, isolation_level=None)
            try:
                target.executescript("\n".join(connection.iterdump()))
            finally:
                target.close()
    return path


@contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """A scratch path next to ``path``, moved over it when complete (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
