"""Loading a user's SQLite fixture file into a new in-memory database, read-only.

Standard library only. Everything here guards the user's file: it is opened read-only
through a percent-encoded URI and stays byte-identical; anything SQLite would accept
silently but wrongly (a missing or empty file, a folder, a torn WAL) is an error that
names the path and the option it came from.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
from pathlib import Path

from pytest_memdb.errors import FixtureFileError
from pytest_memdb.memory import MemoryDatabase, file_uri

SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_PATH_LIMIT = 504
"""The longest full path SQLite's unix VFS opens, in bytes (measured: 504 opens, 505 does not)."""


def load_file(path: Path, name: str, *, origin: str) -> MemoryDatabase:
    """Copy the SQLite file at ``path`` into a new in-memory database called ``name``.

    The file is opened read-only through a percent-encoded URI and never written.
    A WAL-mode file is first copied, with its ``-wal``, into a private folder where
    SQLite folds the WAL's rows in, so they are in the copy too; so is a file whose
    path is too long for SQLite to open. ``origin`` names the option the path came
    from, for error messages.
    """
    header = check_fixture_file(path, origin=origin)
    # Format version 2 (WAL) at byte 18 (write) or 19 (read; SQLite goes by this one).
    if 2 in header[18:20] or len(os.fsencode(path.resolve())) > SQLITE_PATH_LIMIT:
        with tempfile.TemporaryDirectory(prefix="pytest-memdb-") as scratch:
            readable = _checkpointed_copy(path, Path(scratch), origin=origin)
            return _load(readable, name, path=path, origin=origin)
    return _load(path, name, path=path, origin=origin)


def _checkpointed_copy(path: Path, scratch: Path, *, origin: str) -> Path:
    """A private copy of a WAL-mode file, its ``-wal`` rows folded in, in rollback-journal mode.

    Opening the user's WAL file, even read-only, leaves a ``-shm`` file beside it;
    and a backup of a WAL database keeps the WAL header bytes, which a ``memdb``
    database cannot honour ("unable to open database file" on its first read).
    """
    copy = scratch / "fixture.sqlite"
    shutil.copyfile(path, copy)
    wal = Path(f"{path}-wal")
    if wal.exists():
        shutil.copyfile(wal, f"{copy}-wal")
    try:
        conn = sqlite3.connect(copy)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
        finally:
            conn.close()
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        problem = f"it is not a usable SQLite database ({_text(exc)})"
        raise _file_error(path, origin, problem) from None
    return copy


def _load(readable: Path, name: str, *, path: Path, origin: str) -> MemoryDatabase:
    try:
        source = sqlite3.connect(file_uri(readable, read_only=True), uri=True)
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise _file_error(path, origin, f"SQLite cannot open it ({_text(exc)})") from None
    try:
        try:
            source.execute("SELECT count(*) FROM sqlite_master").fetchone()
            # Read the (read-only) file through a memory map: the backup copies each page
            # once instead of reading it into a page cache first.
            source.execute(f"PRAGMA mmap_size = {max(readable.stat().st_size, 1)}")
        except (sqlite3.Error, UnicodeDecodeError, OSError) as exc:
            problem = f"it is not a usable SQLite database ({_text(exc)})"
            raise _file_error(path, origin, problem) from None
        database = MemoryDatabase(name)
        try:
            source.backup(database.anchor)
            problems = [row[0] for row in database.anchor.execute("PRAGMA quick_check")]
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            database.close()
            raise _file_error(path, origin, f"it is corrupt ({_text(exc)})") from None
        if problems != ["ok"]:
            database.close()
            shown = "; ".join(str(p) for p in problems[:5])
            raise _file_error(path, origin, f"it is corrupt (PRAGMA quick_check: {shown})")
        return database
    finally:
        source.close()


def check_fixture_file(path: Path, *, origin: str) -> bytes:
    """Reject what SQLite would silently accept (a missing or empty file) or garble.

    Returns the file's 100-byte header (shorter if the file is).
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise _file_error(path, origin, "it does not exist") from None
    except OSError as exc:
        raise _file_error(path, origin, f"it cannot be inspected ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise _file_error(path, origin, "it is a folder, not a SQLite file")
    try:
        with path.open("rb") as handle:
            header = handle.read(100)
    except OSError as exc:
        raise _file_error(path, origin, f"it cannot be read ({exc.strerror})") from None
    if info.st_size == 0:
        raise _file_error(path, origin, "it is empty (0 bytes), not a SQLite database")
    if not header.startswith(SQLITE_HEADER):
        raise _file_error(
            path, origin, f"it is not a SQLite database (its first bytes are {header[:16]!r})"
        )
    # SQLite itself reads only the low byte of this 4-byte number: 256 would pass as 0.
    schema_format = int.from_bytes(header[44:48], "big")
    if schema_format > 4:
        raise _file_error(
            path,
            origin,
            f"it is in an unsupported file format (schema format {schema_format} in its "
            f"header; SQLite {sqlite3.sqlite_version} reads formats 1 to 4)",
        )
    return header


def _text(exc: Exception) -> str:
    """SQLite's message; one quoting damaged schema text may not be UTF-8 (``sqlite3`` fails)."""
    if isinstance(exc, UnicodeDecodeError) and isinstance(exc.object, bytes):
        return exc.object.decode("utf-8", "replace")
    return str(exc)


def _file_error(path: Path, origin: str, problem: str) -> FixtureFileError:
    return FixtureFileError(
        f"pytest-memdb: the fixture file {str(path)!r} (from {origin}): {problem}."
    )
