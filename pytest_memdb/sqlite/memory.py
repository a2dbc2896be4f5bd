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
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

from pytest_memdb.sqlite.pages import VFS_NAME, Watched, page_vfs

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


class SourceLocked(Exception):
    """Another connection's uncommitted write kept a database from being read (memdb)."""


class Borrowed:
    """A database's anchor lent to SQLAlchemy (a ``creator`` for a ``StaticPool`` engine that
    seeds or reads it): everything but ``close``, since the anchor keeps the database alive
    and only :meth:`MemoryDatabase.close` closes it."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self._raw = raw

    def close(self) -> None:
        """Nothing: see the class doc."""

    def __getattr__(self, name: str) -> object:
        return getattr(self._raw, name)


class MemoryDatabase:
    """One in-memory database, alive exactly as long as this object is open.

    A *shared* database (the default) is reached by name by every connection in the
    process, which is how engines, apps and the plugin all see one test's database. A
    *private* one (``shared=False``, a name without the leading ``/``) exists only for its
    anchor connection: another connection opening the same name gets an empty database
    of its own. Templates are private, so nothing but the plugin's own backups can read
    them, and nothing at all can write them.
    """

    def __init__(self, name: str, *, shared: bool = True) -> None:
        self.name = name
        self.shared = shared
        self._closed = False
        self._vfs = "memdb"
        self._watched: Watched | None = None
        self._pages_from: MemoryDatabase | None = None
        self._cookie_max = 0
        """The highest schema cookie this database is known to have had (see restores)."""
        self.page_file: int | None = None
        """A private database's ``sqlite3_file``, read by page restores from it (or None)."""
        self.last_restore = "backup"
        """How :meth:`restore_from` last restored: ``pages`` written, or ``backup``."""
        pages = None if shared else page_vfs()
        if pages is not None:  # open the anchor through the shim so its file is known
            pages.capture(name)
            self._vfs = VFS_NAME
        self.anchor: sqlite3.Connection = sqlite3.connect(
            self.sqlite_uri, uri=True, check_same_thread=False
        )
        if pages is not None:
            self.page_file = pages.file_of(name)

    @property
    def sqlite_uri(self) -> str:
        """The URI ``sqlite3.connect(..., uri=True)`` takes to reach this database (through
        the page-recording VFS once :meth:`prepare_for_restores` watches it)."""
        return f"file:{'/' if self.shared else ''}{self.name}?vfs={self._vfs}"

    @property
    def restores_pages(self) -> bool:
        """Whether :meth:`restore_from` copies back only the pages written (else a backup)."""
        return self._watched is not None

    @property
    def async_url(self) -> str:
        """The SQLAlchemy URL for ``create_async_engine`` (aiosqlite)."""
        return f"sqlite+aiosqlite:///{self.sqlite_uri}&uri=true"

    @property
    def sync_url(self) -> str:
        """The SQLAlchemy URL for ``create_engine`` (the stdlib driver)."""
        return f"sqlite:///{self.sqlite_uri}&uri=true"

    def writes(self) -> tuple[int, int]:
        """What moves when this database is written through its anchor (the only way into
        a private one): the anchor's ``total_changes`` and the schema cookie."""
        cookie = int(self.anchor.execute("PRAGMA schema_version").fetchone()[0])
        return self.anchor.total_changes, cookie

    def copy(self, name: str, *, give_up_after: float = 5.0) -> MemoryDatabase:
        """A new database with this one's content, via SQLite's page-level backup.

        Raises :class:`DatabaseInUse` when a database called ``name`` still lives
        (some connection holds it open): copying over it could wait forever on that
        connection's lock, and would change data under it. Raises :class:`SourceLocked`
        when another connection's pending write keeps this one from being read for
        ``give_up_after`` seconds (memdb lets no reader past it).
        """
        target = MemoryDatabase(name)
        try:
            if target.anchor.execute("PRAGMA page_count").fetchone()[0]:
                raise DatabaseInUse(name)
            if not target.fill_from(self, give_up_after=give_up_after):
                raise SourceLocked(self.name)
        except BaseException:
            target.close()
            raise
        return target

    def prepare_for_restores(self, pages_from: MemoryDatabase | None = None) -> None:
        """Let :meth:`restore_from` overwrite this database in place, cheaply and never waiting.

        ``pages_from``: the database this one holds a copy of and will be restored from;
        when the page-recording VFS is available (:mod:`pytest_memdb.sqlite.pages`), connections
        opened from :attr:`sqlite_uri` from now on have the pages they write recorded, and
        restores from it copy back just those.

        For the backup restore, the anchor stops waiting for other connections' locks (a
        busy check answers at once) and stops journaling its own writes: a restore
        overwrites every page anyway, and a journal would double the memory it touches. A
        tiny page cache lets the backup hand pages straight on to the database (measured:
        10 MB 2.8 -> 2.2 ms, 100 MB 22 -> 19 ms per restore).
        """
        self.anchor.execute("PRAGMA busy_timeout = 0")
        self.anchor.execute("PRAGMA journal_mode = OFF")
        self.anchor.execute("PRAGMA cache_size = 10")
        pages = page_vfs()
        if (
            pages is not None
            and pages_from is not None
            and pages_from.page_file is not None
            and self.shared
            and self._watched is None
            and pages_from.anchor.execute("PRAGMA page_count").fetchone()[0]  # an empty
            # template (no tables yet) has no page 1 to take the header from: backups
        ):
            self._watched = pages.watch(self.name, pages_from.page_file)
            self._pages_from = pages_from
            self._vfs = VFS_NAME

    @property
    def touched(self) -> bool:
        """Whether the page-recording VFS saw anything written since the last restore,
        committed or not (False when pages are not recorded: ask :meth:`data_version`)."""
        return self._watched is not None and self._watched.touched

    def is_free(self) -> bool:
        """Whether no other connection holds a lock (an open read or write) on this database.

        Asks for an exclusive lock without waiting (needs :meth:`prepare_for_restores`),
        and gives it back at once: a few microseconds (about 2 us on the shim's own file
        handle when pages are recorded).
        """
        if self._watched is not None:
            return self._watched.is_free()
        try:
            self.anchor.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError:
            return False
        self.anchor.execute("COMMIT")
        return True

    def data_version(self) -> int | None:
        """SQLite's ``PRAGMA data_version`` as the anchor sees it, or None while another
        connection holds a write open.

        The value changes whenever any *other* connection (any driver, sync or async, any
        statement: rows, DDL, ``PRAGMA user_version``) committed to this database since
        the anchor last asked; the anchor's own writes (:meth:`restore_from`) leave it.
        """
        try:
            return int(self.anchor.execute("PRAGMA data_version").fetchone()[0])
        except (sqlite3.OperationalError, sqlite3.ProgrammingError):  # or a closed anchor
            return None

    def restore_from(
        self, source: MemoryDatabase, *, give_up_after: float = 5.0, full: bool = False
    ) -> bool:
        """Overwrite this database in place with ``source``'s content: the pages written
        since the last restore when they were recorded, else (or with ``full``) a
        page-level backup.

        Connections open on this database stay open and see the restored content (SQLite
        invalidates their page and schema caches). Returns False, changing nothing, when
        another connection holds a lock on it (an open read or write). Needs
        :meth:`prepare_for_restores` first.
        """
        watched = self._watched if source is self._pages_from else None
        page_file = source.page_file if watched is not None else None
        if watched is not None and page_file and not full:
            restored = watched.restore_from(page_file)
            if restored is not None:
                self.last_restore = "pages"
                return restored
            # Something wrote around the shim (see sqlite/pages.py): back up, start afresh.
        if not self.is_free():
            return False
        before = self._cookie()
        if not self.fill_from(source, give_up_after=give_up_after):
            return False
        self.last_restore = "backup"
        self._cookie_past(before)
        if watched is not None and page_file:
            watched.baseline(page_file)
        return True

    def _cookie(self) -> int:
        return int(self.anchor.execute("PRAGMA schema_version").fetchone()[0])

    def _cookie_past(self, before: int) -> None:
        """After a backup: a schema cookie no connection can have seen with another schema.

        SQLite's backup sets the old cookie plus one; a test that rewound ``schema_version``
        after DDL would make that a value some connection cached the DDL's schema under
        ("database disk image is malformed" later). Moved past every value known here.
        """
        after = self._cookie()
        seen = max(before, self._watched.cookie_max if self._watched is not None else 0)
        self._cookie_max = max(self._cookie_max, seen)
        if after <= self._cookie_max:
            after = self._cookie_max + 1
            self.anchor.execute(f"PRAGMA schema_version = {after}")
        self._cookie_max = after
        if self._watched is not None:
            self._watched.cookie_max = max(self._watched.cookie_max, after)

    def fill_from(self, source: MemoryDatabase, *, give_up_after: float = 5.0) -> bool:
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

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Free the memory; connections still open elsewhere keep the database alive."""
        if not self._closed:
            self._closed = True
            if self._watched is not None:
                self._watched.close()
            if self.page_file is not None:
                pages = page_vfs()
                if pages is not None:
                    pages.release(self.name)
            self.anchor.close()

    def __repr__(self) -> str:
        return f"<MemoryDatabase {self.name}{' closed' if self._closed else ''}>"
