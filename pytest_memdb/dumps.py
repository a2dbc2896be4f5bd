"""``--memdb-keep-failed``: a failing test's database, written out as a SQLite file.

Standard library only. The image is taken before the test's teardown, so it is
the database as the test left it.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_memdb.memory import MemoryDatabase

if TYPE_CHECKING:
    from pytest_memdb.janitor import MemdbHandle

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
MAX_STEM = 120


def dump_path(directory: Path, nodeid: str, fixture: str) -> Path:
    """``DIR/<sanitized test id>.sqlite`` (plus ``-<fixture>`` for a factory's database)."""
    stem = _UNSAFE.sub("_", nodeid).strip("_.") or "test"
    if fixture != "memdb":
        stem = f"{stem}-{_UNSAFE.sub('_', fixture)}"
    if len(stem) > MAX_STEM:  # keep file names legal; the hash keeps them apart
        digest = hashlib.sha1(stem.encode()).hexdigest()[:10]
        stem = f"{stem[: MAX_STEM - 11]}-{digest}"
    return directory / f"{stem}.sqlite"


def save_committed(database: MemoryDatabase, path: Path) -> Path:
    """Write the database's last committed state to ``path`` as a SQLite file.

    A new connection reads it: an open write transaction elsewhere (a session the
    test left uncommitted) does not block a reader.
    """
    reader = sqlite3.connect(database.sqlite_uri, uri=True, timeout=1.0)
    try:
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
    (Python 3.11+) copies the image at once, ``iterdump()`` rebuilds it elsewhere.
    """
    serialize = getattr(connection, "serialize", None)
    with _writing(path) as partial:
        if serialize is not None:
            partial.write_bytes(serialize())
        else:  # Python 3.10
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


def keep_databases(
    held: Sequence[tuple[str, MemdbHandle]], directory: Path, item: pytest.Item
) -> list[str]:
    """Write each database a failing test holds; one report line per database."""
    lines = []
    for fixture, handle in held:
        path = dump_path(directory, item.nodeid, fixture)
        try:
            handle.save(path)
        except (OSError, sqlite3.Error) as exc:
            lines.append(f"{fixture}: could not write the database to {path}: {exc}")
        else:
            lines.append(f"{fixture}: the database as the test left it is in {path}")
    return lines
