"""Loading a user's SQLite fixture file into a new in-memory database, read-only.

Standard library only. Everything here guards the user's file: it is opened read-only
through a percent-encoded URI and stays byte-identical; anything SQLite would accept
silently but wrongly (a missing or empty file, a folder, a FIFO or device, a torn WAL)
is an error that names the path and the option it came from.

Symlinks are resolved (the whole chain, folders too) before anything else, so a WAL-mode
file's ``-wal`` and ``-shm`` are looked for beside the real file, where SQLite keeps them.

How a WAL-mode file is read as one consistent state, while another process may be
writing it (measured with SQLite 3.40.1 on Linux):

* Copying the main file and its ``-wal`` with plain reads (what this module did before)
  reads them at different moments: against a writer committing in a loop with
  checkpoints, about 1 load in 25 was rejected as "database disk image is malformed"
  although the file never was.
* Opening the real file with ``mode=ro`` under SQLite's own read transaction is exact,
  but when no ``-shm`` exists it creates one beside the user's file and leaves it there
  after closing. With ``mode=ro&readonly_shm=1`` SQLite never creates or writes the
  ``-shm``: with an existing one (a live writer's, or one left by a crashed process) it
  reads correctly (300 of 300 snapshots consistent against that writer; the ``-shm``,
  ``-wal`` and main file byte-identical afterwards); with none it refuses ("unable to
  open database file"). It also cannot reach a path longer than SQLite's limit.
* So: with a ``-shm`` beside the real file, someone may have the database open, and it is
  read through SQLite (``mode=ro&readonly_shm=1``, one read transaction, one backup
  step). Without one, nobody has it open in WAL mode, and a plain copy is taken and then
  verified: both files' stat (inode, size, mtime, ctime) before and after the copy and
  their content read a second time must all agree, else the copy is taken again (a
  writer that started meanwhile has made a ``-shm``, so the next attempt goes through
  SQLite). What two agreeing reads cannot rule out is a change undone byte for byte
  between them; a torn copy needs a checkpoint or a WAL reset in between, which leaves
  other bytes (salts, pages, sizes). After ``_ATTEMPTS`` tries the error names the path.
  Against a writer that also closes and reopens the file now and then (its ``-wal`` and
  ``-shm`` go away), 276 of 300 loads went through SQLite, 24 through a verified copy,
  5 copies were taken again because the file changed meanwhile; all 300 were committed
  states, where the old copy produced one that passed quick_check with 4810 rows in one
  table and 4841 in the other.

A file in rollback-journal mode whose writer crashed (or was killed) mid-transaction has
a *hot* ``-journal`` beside it: the pages as they were committed, while the file itself
may already hold part of the unfinished write (measured: a crash in an ``UPDATE`` of 3000
rows left 2882 of them changed in the file). SQLite rolls such a journal back on the next
open, which a read-only open cannot do ("attempt to write a readonly database"). Then the
file and its journal are copied (held still, as a WAL file's are) into a private folder,
SQLite rolls the journal back there, and the committed state is loaded from that copy,
with a :class:`~pytest_memdb.errors.MemdbWarning` that names both files. The user's two
files are only read. A file copied anyway (a WAL file, a path too long) brings its
``-journal`` along: without it, the copy would hold the unfinished write.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import tempfile
import time
import warnings
from pathlib import Path
from typing import Protocol

from pytest_memdb.errors import FixtureFileError, MemdbWarning
from pytest_memdb.messages import FIXTURE_FILE, HOT_JOURNAL
from pytest_memdb.sqlite.memory import MemoryDatabase, file_uri

SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_PATH_LIMIT = 504
"""The longest full path SQLite's unix VFS opens, in bytes (measured: 504 opens, 505 does not)."""

_ATTEMPTS = 40
"""How often a WAL-mode file is read before it counts as never holding still."""

_CHUNK = 1 << 20

_READONLY_ROLLBACK = 776
"""SQLITE_READONLY_ROLLBACK: a hot journal must be rolled back, and the open is read-only."""

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class CheckedFiles(Protocol):
    """Files whose ``PRAGMA quick_check`` passed before, by identity (pytest's cache)."""

    def __contains__(self, identity: object) -> bool: ...

    def add(self, identity: tuple[object, ...]) -> None: ...


def file_identity(path: Path) -> tuple[object, ...]:
    """What changes when the file (or its ``-wal``) does: path, size, times, inode."""
    identity: list[object] = []
    for each in (Path(os.path.realpath(path)), Path(f"{os.path.realpath(path)}-wal")):
        try:
            info = each.stat()
        except OSError:
            identity.append(None)
            continue
        identity.append([str(each), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino])
    return tuple(identity)


def load_file(
    path: Path,
    name: str,
    *,
    origin: str,
    shared: bool = True,
    checked: CheckedFiles | None = None,
) -> MemoryDatabase:
    """Copy the SQLite file at ``path`` into a new in-memory database called ``name``.

    The file is opened read-only through a percent-encoded URI and never written.
    A WAL-mode file is first copied, as one consistent state with its ``-wal`` rows
    (see the module's docstring), into a private folder in rollback-journal mode; so is
    a file whose path is too long for SQLite to open, and one with a hot ``-journal``
    (its writer crashed mid-transaction), which SQLite rolls back in the copy: the
    committed state is loaded, with a :class:`MemdbWarning`. ``origin`` names the option the
    path came from, for error messages; ``shared=False`` makes a private database (a
    template: see :class:`MemoryDatabase`).

    ``checked``: files already known to pass ``PRAGMA quick_check``, by
    :func:`file_identity`. The check is most of the start-up (84 of 144 ms at 100 MB,
    the backup itself 63 ms), so a file seen before, unchanged, is not checked again; a
    file that changed (size, mtime, ctime or inode of it or its ``-wal``) is.
    """
    identity = file_identity(path) if checked is not None else None
    known = checked is not None and identity in checked
    header = check_fixture_file(path, origin=origin)
    real = Path(os.path.realpath(path))
    # Format version 2 (WAL) at byte 18 (write) or 19 (read; SQLite goes by this one).
    fits = len(os.fsencode(real)) <= SQLITE_PATH_LIMIT
    database: MemoryDatabase | None = None
    if 2 not in header[18:20] and fits:
        try:
            database = _load(real, name, path=path, origin=origin, shared=shared, check=not known)
        except _HotJournal:
            known = False  # the copy is not the file that was checked
    if database is None:
        with tempfile.TemporaryDirectory(prefix="pytest-memdb-") as scratch:
            readable, rolled_back = _checkpointed_copy(path, Path(scratch), origin=origin)
            database = _load(
                readable, name, path=path, origin=origin, shared=shared, check=not known
            )
        if rolled_back:
            warnings.warn(MemdbWarning(_rolled_back(path, origin)), stacklevel=2)
    # Remembered only if it held still while it was read.
    if (
        checked is not None
        and identity is not None
        and not known
        and file_identity(path) == identity
    ):
        checked.add(identity)
    return database


class _HotJournal(Exception):
    """SQLite must roll a hot journal back before the file can be read: not read-only."""


def _rolled_back(path: Path, origin: str) -> str:
    journal = f"{os.path.realpath(path)}-journal"
    return HOT_JOURNAL(path=str(path), origin=origin, journal=journal)


def _needs_rollback(error: sqlite3.Error) -> bool:
    """Whether SQLite refused a read-only open because a hot journal needs rolling back."""
    return error.sqlite_errorcode == _READONLY_ROLLBACK


def _checkpointed_copy(path: Path, scratch: Path, *, origin: str) -> tuple[Path, bool]:
    """A private copy of a WAL-mode file, its ``-wal`` rows folded in, in rollback-journal mode;
    and whether a hot ``-journal`` copied with it was rolled back.

    Read as one consistent state even while another process writes the file (see the
    module's docstring). Opening the user's WAL file the usual way, even read-only, leaves
    a ``-shm`` file beside it; and a backup of a WAL database keeps the WAL header bytes,
    which a ``memdb`` database cannot honour ("unable to open database file" on its first
    read), hence the private copy in rollback-journal mode.
    """
    real = Path(os.path.realpath(path))
    copy = scratch / "fixture.sqlite"
    through_sqlite = len(os.fsencode(real)) <= SQLITE_PATH_LIMIT
    for attempt in range(_ATTEMPTS):
        if attempt:
            time.sleep(min(0.001 * attempt, 0.02))  # let a writer's commit finish
        for leftover in (copy, *_companions(copy)):
            leftover.unlink(missing_ok=True)
        if through_sqlite and os.path.lexists(f"{real}-shm") and _snapshot(real, copy):
            break
        for leftover in (copy, *_companions(copy)):
            leftover.unlink(missing_ok=True)
        if _stable_copy(real, copy, path=path, origin=origin):
            break
    else:
        raise file_error(
            path,
            origin,
            f"it kept changing while it was read (tried {_ATTEMPTS} times to read it and "
            "its -wal file as one state; is another process writing to it?)",
        )
    hot = os.path.lexists(f"{copy}-journal") and _is_hot(copy)
    try:
        conn = sqlite3.connect(copy)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master")  # rolls a hot journal back
            conn.execute("PRAGMA journal_mode=DELETE")
        finally:
            conn.close()
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        problem = f"it is not a usable SQLite database ({sqlite_text(exc)})"
        raise file_error(path, origin, problem) from None
    return copy, hot


def _is_hot(copy: Path) -> bool:
    """Whether SQLite would roll the ``-journal`` beside ``copy`` back (asked read-only)."""
    try:
        probe = sqlite3.connect(file_uri(copy, read_only=True), uri=True)
    except sqlite3.Error:
        return False
    try:
        probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        return _needs_rollback(exc)
    finally:
        probe.close()
    return False


def _companions(path: Path) -> tuple[Path, Path, Path]:
    """The files SQLite keeps beside a database: what a copy of it may bring along."""
    return Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")


def _snapshot(real: Path, copy: Path) -> bool:
    """Back ``real`` up into ``copy`` in one read transaction of SQLite's; False if it failed.

    ``readonly_shm=1``: the existing ``-shm`` is only read, never created or written.
    A failure (the ``-shm`` went away, a writer was recovering it, a damaged file) is left
    to the plain copy, whose verdict is final once it holds still.
    """
    try:
        source = sqlite3.connect(
            f"{file_uri(real, read_only=True)}&readonly_shm=1",
            uri=True,
            timeout=1.0,
            isolation_level=None,
        )
    except sqlite3.Error:
        return False
    try:
        # The backup reuses this read transaction: one state, and no lock to wait for.
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
    except (sqlite3.Error, UnicodeDecodeError):
        return False
    finally:
        source.close()
    return True


def _stable_copy(real: Path, copy: Path, *, path: Path, origin: str) -> bool:
    """Copy ``real``, its ``-wal`` and its ``-journal`` to ``copy``; True if all held still
    throughout."""
    pairs = [
        (real, copy),
        (Path(f"{real}-wal"), Path(f"{copy}-wal")),
        (Path(f"{real}-journal"), Path(f"{copy}-journal")),
    ]
    before = [_state(source, path=path, origin=origin) for source, _ in pairs]
    try:
        copied = [
            _read(source, target, path=path, origin=origin) if state else None
            for (source, target), state in zip(pairs, before, strict=True)
        ]
        after = [_state(source, path=path, origin=origin) for source, _ in pairs]
        again = [
            _read(source, None, path=path, origin=origin) if state else None
            for (source, _), state in zip(pairs, before, strict=True)
        ]
    except FileNotFoundError:
        return False  # the -wal or -journal went away (a writer closed or committed)
    final = [_state(source, path=path, origin=origin) for source, _ in pairs]
    return before[0] is not None and before == after == final and copied == again


def _state(source: Path, *, path: Path, origin: str) -> tuple[int, ...] | None:
    try:
        info = source.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise file_error(path, origin, f"it cannot be inspected ({exc.strerror})") from None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _read(source: Path, target: Path | None, *, path: Path, origin: str) -> str:
    """``source``'s SHA-256, copying it to ``target`` on the way (if given)."""
    digest = hashlib.sha256()
    descriptor = _open_regular(source, path=path, origin=origin)
    with os.fdopen(descriptor, "rb") as handle:
        out = target.open("xb") if target is not None else None
        try:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
        finally:
            if out is not None:
                out.close()
    return digest.hexdigest()


def _open_regular(source: Path, *, path: Path, origin: str) -> int:
    """A read-only descriptor of ``source``; an error if it is no regular file.

    ``O_NONBLOCK``: opening a FIFO to read waits for a writer; this way it returns, and
    the kind is checked on the open descriptor (a file swapped after a ``stat`` is caught).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
    try:
        descriptor = os.open(source, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise file_error(path, origin, f"it cannot be read ({exc.strerror})") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise file_error(path, origin, _not_a_file(mode, path=path, real=source))
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _load(
    readable: Path, name: str, *, path: Path, origin: str, shared: bool, check: bool = True
) -> MemoryDatabase:
    try:
        source = sqlite3.connect(file_uri(readable, read_only=True), uri=True)
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise file_error(path, origin, f"SQLite cannot open it ({sqlite_text(exc)})") from None
    try:
        try:
            source.execute("SELECT count(*) FROM sqlite_master").fetchone()
            # Read the (read-only) file through a memory map: the backup copies each page
            # once instead of reading it into a page cache first.
            source.execute(f"PRAGMA mmap_size = {max(readable.stat().st_size, 1)}")
        except sqlite3.Error as exc:
            if _needs_rollback(exc):
                raise _HotJournal from None
            problem = f"it is not a usable SQLite database ({sqlite_text(exc)})"
            raise file_error(path, origin, problem) from None
        except (UnicodeDecodeError, OSError) as exc:
            problem = f"it is not a usable SQLite database ({sqlite_text(exc)})"
            raise file_error(path, origin, problem) from None
        database = MemoryDatabase(name, shared=shared)
        try:
            source.backup(database.anchor)
            problems = (
                [row[0] for row in database.anchor.execute("PRAGMA quick_check")]
                if check
                else ["ok"]
            )
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            database.close()
            raise file_error(path, origin, f"it is corrupt ({sqlite_text(exc)})") from None
        if problems != ["ok"]:
            database.close()
            shown = "; ".join(str(p) for p in problems[:5])
            raise file_error(path, origin, f"it is corrupt (PRAGMA quick_check: {shown})")
        return database
    finally:
        source.close()


def check_fixture_file(path: Path, *, origin: str) -> bytes:
    """Reject what SQLite would silently accept (a missing or empty file) or garble.

    Anything but a regular file (after resolving symlinks) is refused before it is opened
    to read: a FIFO or a character device would otherwise hang or read forever.
    Returns the file's 100-byte header (shorter if the file is).
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise file_error(path, origin, "it does not exist") from None
    except OSError as exc:
        raise file_error(path, origin, f"it cannot be inspected ({exc.strerror})") from None
    real = Path(os.path.realpath(path))
    if not stat.S_ISREG(info.st_mode):
        raise file_error(path, origin, _not_a_file(info.st_mode, path=path, real=real))
    try:
        descriptor = _open_regular(real, path=path, origin=origin)
    except FileNotFoundError:
        raise file_error(path, origin, "it does not exist") from None
    try:
        with os.fdopen(descriptor, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            header = handle.read(100)
    except OSError as exc:
        raise file_error(path, origin, f"it cannot be read ({exc.strerror})") from None
    if size == 0:
        raise file_error(path, origin, "it is empty (0 bytes), not a SQLite database")
    if not header.startswith(SQLITE_HEADER):
        raise file_error(
            path, origin, f"it is not a SQLite database (its first bytes are {header[:16]!r})"
        )
    # SQLite itself reads only the low byte of this 4-byte number: 256 would pass as 0.
    schema_format = int.from_bytes(header[44:48], "big")
    if schema_format > 4:
        raise file_error(
            path,
            origin,
            f"it is in an unsupported file format (schema format {schema_format} in its "
            f"header; SQLite {sqlite3.sqlite_version} reads formats 1 to 4)",
        )
    return header


def _not_a_file(mode: int, *, path: Path, real: Path) -> str:
    kind = next(
        (name for test, name in _KINDS if test(mode)), "something other than a regular file"
    )
    problem = f"it is {kind}, not a SQLite file"
    if Path(os.path.abspath(path)) != real and not stat.S_ISDIR(mode):
        problem += f" (it links to {str(real)!r})"
    return problem


def sqlite_text(exc: Exception) -> str:
    """SQLite's message; one quoting damaged schema text may not be UTF-8 (``sqlite3`` fails)."""
    if isinstance(exc, UnicodeDecodeError) and isinstance(exc.object, bytes):
        return exc.object.decode("utf-8", "replace")
    return str(exc)


def file_error(path: Path, origin: str, problem: str) -> FixtureFileError:
    return FixtureFileError(FIXTURE_FILE(path=str(path), origin=origin, problem=problem))
