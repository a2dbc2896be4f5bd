"""Create, fill and copy uniquely named in-memory SQLite databases.

Only the standard library's ``sqlite3`` is used here, so this module is cheap to
import. Databases use SQLite's ``memdb`` VFS with a name that starts with ``/``:
every connection in the process that opens the same name shares one database,
with SQLite's ordinary locking (a blocked writer waits for the busy timeout),
unlike the seed's ``cache=shared`` mode, which fails at once with
``database table is locked``. A database lives while at least one connection to
it is open, so each :class:`MemoryDatabase` keeps an *anchor* connection.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import sqlite3
import stat
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from pytest_memdb.errors import FixtureFileError

SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_PATH_LIMIT = 504
"""The longest full path SQLite's unix VFS opens, in bytes (measured: 504 opens, 505 does not)."""
_counter = itertools.count(1)


def unique_name(*parts: str) -> str:
    """A database name no other run, worker or instance in this process can pick.

    The random part keeps two runs (or two ``InMemoryDatabase`` instances set up
    from the same file) apart; the readable parts say whose it is when debugging.
    """
    safe = [_safe(part) for part in parts if part]
    return "-".join(["memdb", *safe, f"{os.getpid()}", secrets.token_hex(4), str(next(_counter))])


def _safe(part: str) -> str:
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_.") else "_" for ch in part)[:40]


def file_uri(path: Path, *, read_only: bool) -> str:
    """A ``file:`` URI for ``path`` that survives ``?``, ``#``, ``%`` and spaces in it.

    Unescaped, ``data/run #1/app.db`` would open (and create!) ``data/run `` instead.
    Quoted as bytes, so a name that is not valid UTF-8 (``os.fsdecode``'s surrogates) works.
    """
    mode = "?mode=ro" if read_only else ""
    return f"file:{quote(os.fsencode(path.resolve()))}{mode}"


_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


class _GaveUp(Exception):
    """A restore waited too long for a lock another connection took."""


class DatabaseInUse(Exception):
    """A database by that name is still open somewhere, so it is not free to be made anew."""


class MemoryDatabase:
    """One shared in-memory database, alive exactly as long as this object is open."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._closed = False
        self.anchor: sqlite3.Connection = sqlite3.connect(
            self.sqlite_uri, uri=True, check_same_thread=False
        )

    @property
    def sqlite_uri(self) -> str:
        """The URI ``sqlite3.connect(..., uri=True)`` takes to reach this database."""
        return f"file:/{self.name}?vfs=memdb"

    @property
    def async_url(self) -> str:
        """The SQLAlchemy URL for ``create_async_engine`` (aiosqlite)."""
        return f"sqlite+aiosqlite:///{self.sqlite_uri}&uri=true"

    @property
    def sync_url(self) -> str:
        """The SQLAlchemy URL for ``create_engine`` (the stdlib driver)."""
        return f"sqlite:///{self.sqlite_uri}&uri=true"

    def copy(self, name: str) -> MemoryDatabase:
        """A new database with this one's content, via SQLite's page-level backup.

        Raises :class:`DatabaseInUse` when a database called ``name`` still lives
        (some connection holds it open): copying over it could wait forever on that
        connection's lock, and would change data under it.
        """
        target = MemoryDatabase(name)
        try:
            if target.anchor.execute("PRAGMA page_count").fetchone()[0]:
                raise DatabaseInUse(name)
            self.anchor.backup(target.anchor)
        except BaseException:
            target.close()
            raise
        return target

    def prepare_for_restores(self) -> None:
        """Let :meth:`restore_from` overwrite this database in place, cheaply and never waiting.

        The anchor stops waiting for other connections' locks (a busy check answers at
        once) and stops journaling its own writes: a restore overwrites every page anyway,
        and a journal would double the memory it touches. A tiny page cache lets the
        backup hand pages straight on to the database (measured: 10 MB 2.8 -> 2.2 ms,
        100 MB 22 -> 19 ms per restore).
        """
        self.anchor.execute("PRAGMA busy_timeout = 0")
        self.anchor.execute("PRAGMA journal_mode = OFF")
        self.anchor.execute("PRAGMA cache_size = 10")

    def data_version(self) -> int | None:
        """SQLite's ``PRAGMA data_version`` as the anchor sees it, or None while another
        connection holds a write open.

        The value changes whenever any *other* connection (any driver, sync or async, any
        statement: rows, DDL, ``PRAGMA user_version``) committed to this database since
        the anchor last asked; the anchor's own writes (:meth:`restore_from`) leave it.
        """
        try:
            return int(self.anchor.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.OperationalError:
            return None

    def restore_from(self, source: MemoryDatabase, *, give_up_after: float = 5.0) -> bool:
        """Overwrite this database in place with ``source``'s content (page-level backup).

        Connections open on this database stay open and see the restored content (SQLite
        invalidates their page and schema caches). Returns False, changing nothing, when
        another connection holds a lock on it (an open read or write). Needs
        :meth:`prepare_for_restores` first.
        """
        try:
            self.anchor.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError:
            return False
        self.anchor.execute("COMMIT")
        return self._backup_over(source, give_up_after)

    def _backup_over(self, source: MemoryDatabase, give_up_after: float) -> bool:
        """The backup itself; False if a lock taken since the check outlasts ``give_up_after``.

        ``sqlite3``'s ``backup()`` retries a busy step forever, so a progress callback gives
        up instead. Nothing reaches the database before the backup holds its exclusive
        lock (page writes need it), so giving up before that leaves it as it was.
        """
        deadline: list[float] = []

        def progress(status: int, remaining: int, total: int) -> None:
            if status not in (_SQLITE_BUSY, _SQLITE_LOCKED):
                return
            if not deadline:
                deadline.append(time.monotonic() + give_up_after)
            elif time.monotonic() > deadline[0]:
                raise _GaveUp

        try:
            source.anchor.backup(self.anchor, progress=progress)
        except _GaveUp:
            return False
        return True

    def close(self) -> None:
        """Free the memory; connections still open elsewhere keep the database alive."""
        if not self._closed:
            self._closed = True
            self.anchor.close()

    def __repr__(self) -> str:
        return f"<MemoryDatabase {self.name}{' closed' if self._closed else ''}>"


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
