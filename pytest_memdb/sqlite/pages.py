"""Restores proportional to what a test wrote: a page-recording shim over SQLite's memdb VFS.

A copy-mode restore used to be a backup of the whole template into the working database:
1.5-1.8 ms at 10 MB and 19-30 ms at 100 MB, even after a test that wrote one row. Here a
VFS named ``memdb-pages`` (:data:`VFS_NAME`) wraps SQLite's own ``memdb`` VFS, through
SQLite's documented VFS interface (``sqlite3_vfs_find``, ``sqlite3_vfs_register``, the
``sqlite3_vfs`` / ``sqlite3_io_methods`` structs) and ``ctypes``: it opens files with
memdb's own ``xOpen``, so a database opened through it is the *same* memdb database as
under ``vfs=memdb`` (one shared store per name), and for the databases it was told to
watch it swaps in a copy of memdb's methods in which only ``xWrite`` and ``xTruncate``
are Python: they note which pages were written (and how far the file was cut) and call
memdb's own. Reads, locks and everything else stay memdb's C code. Measured: +2.4 us per
commit; a restore after a one-row write 0.036 ms at 10 MB, 0.073 ms at 100 MB.

A restore (:meth:`Watched.restore_from`), under an exclusive lock taken on a file handle
of its own, copies back from the template just the pages written since the last restore
and the ones a truncation cut off, and cuts the file to the template's size. Page 1 is the
template's with three header fields moved *forward*, never back to a value some connection
may have seen: the change counter and its "version valid for" copy (offsets 24 and 92),
so every connection's page cache sees the change and drops its pages, and the schema
cookie (offset 40), bumped only when the test changed it (DDL): then every connection
rereads the schema, else none does (the backup always bumped it: 75-125 us a connection
to reread). Restoring those fields to the template's values would let a connection keep
pages or a schema from an earlier test whose counter happened to match (tested).

There is no way around the shim: memdb's own ``xOpen`` is pointed at the shim's too, so a
connection opened by hand with ``vfs=memdb`` on a watched name is recorded like any other
(only the plugin's anchor, opened before the watch began, is not; its writes are the
restores). As a second line, the change counter: every commit moves it by one, and the
shim knows the last value written through it; any other value makes
:meth:`Watched.restore_from` answer None, and the caller backs up instead.

A restore is all-or-nothing: the written pages are forgotten only once all are copied
back; a restore that stops half-way (an exception, a pytest-timeout firing in it) leaves
the database marked, and the next one backs up the whole template. The schema cookie moves
past every value the shim saw written, so a test that rewinds ``PRAGMA schema_version``
after DDL cannot make a connection keep the DDL's schema.

Where the shim cannot be made (an interpreter whose ``_sqlite3`` does not export
SQLite's C interface, a SQLite without memdb), :func:`page_vfs` returns None and restores
are backups, as before; the report header says which is in use.
"""

from __future__ import annotations

import ctypes
import itertools
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

VFS_NAME = "memdb-pages"

_OPEN_MAIN_DB = 0x00000100
_OPEN_READWRITE = 0x00000002
_LOCK_NONE, _LOCK_SHARED, _LOCK_EXCLUSIVE = 0, 1, 4
_IOERR = 10

_OPEN = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p
)
_CLOSE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_READ = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
)
_WRITE = _READ
_TRUNCATE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_longlong)
_FILE_SIZE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_longlong))
_LOCK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)


class _Vfs(ctypes.Structure):
    """``struct sqlite3_vfs`` (sqlite3.h); the methods as plain pointers, copied from memdb."""

    _fields_ = [
        ("iVersion", ctypes.c_int),
        ("szOsFile", ctypes.c_int),
        ("mxPathname", ctypes.c_int),
        ("pNext", ctypes.c_void_p),
        ("zName", ctypes.c_char_p),
        ("pAppData", ctypes.c_void_p),
        *((name, ctypes.c_void_p) for name in (
            "xOpen", "xDelete", "xAccess", "xFullPathname", "xDlOpen", "xDlError", "xDlSym",
            "xDlClose", "xRandomness", "xSleep", "xCurrentTime", "xGetLastError",
            "xCurrentTimeInt64", "xSetSystemCall", "xGetSystemCall", "xNextSystemCall",
        )),
    ]  # fmt: skip


class _IoMethods(ctypes.Structure):
    """``struct sqlite3_io_methods`` (sqlite3.h), version 3."""

    _fields_ = [
        ("iVersion", ctypes.c_int),
        *((name, ctypes.c_void_p) for name in (
            "xClose", "xRead", "xWrite", "xTruncate", "xSync", "xFileSize", "xLock",
            "xUnlock", "xCheckReservedLock", "xFileControl", "xSectorSize",
            "xDeviceCharacteristics", "xShmMap", "xShmLock", "xShmBarrier", "xShmUnmap",
            "xFetch", "xUnfetch",
        )),
    ]  # fmt: skip


def _missing(*args: object) -> int:
    return _IOERR


class _MemdbFile:
    """memdb's ``sqlite3_io_methods``, as ``ctypes`` functions made once (making one costs
    about as much as a restore's whole page copy)."""

    def __init__(self, methods: _IoMethods | None = None) -> None:
        def function(kind: Any, name: str) -> Callable[..., int]:
            if methods is None:
                return _missing
            made: Callable[..., int] = kind(getattr(methods, name))
            return made

        self.close = function(_CLOSE, "xClose")
        self.read = function(_READ, "xRead")
        self.write = function(_WRITE, "xWrite")
        self.truncate = function(_TRUNCATE, "xTruncate")
        self.file_size = function(_FILE_SIZE, "xFileSize")
        self.lock = function(_LOCK, "xLock")
        self.unlock = function(_LOCK, "xUnlock")


def _sqlite_library() -> ctypes.CDLL | None:
    """The SQLite library the standard ``sqlite3`` module runs on, or None.

    Loaded through ``_sqlite3``'s own file, so symbol lookup finds the SQLite it was linked
    with (a system library, or SQLite compiled into it), never another copy on the system.
    """
    try:
        import _sqlite3

        library = ctypes.CDLL(_sqlite3.__file__)
        libversion = library.sqlite3_libversion
        libversion.restype, libversion.argtypes = ctypes.c_char_p, []
        version = libversion()
    except (ImportError, AttributeError, OSError, ValueError):
        return None
    if version is None or version.decode() != sqlite3.sqlite_version:
        return None
    return library


class Watched:
    """One shared memdb database whose written pages the shim records, and its restores.

    Made by :meth:`PageVfs.watch` after the database was filled (its anchor connection is
    a plain ``vfs=memdb`` one, so the fill is not recorded); connections opened through
    :data:`VFS_NAME` from then on are.
    """

    def __init__(self, vfs: PageVfs, name: str, ident: int) -> None:
        self._vfs = vfs
        self.name = name
        self.ident = ident
        self._handle = ctypes.create_string_buffer(vfs.file_size)
        out = ctypes.c_int(0)
        self._path = ctypes.create_string_buffer(name.encode())
        rc = vfs.memdb_open(
            ctypes.addressof(vfs.struct),
            ctypes.addressof(self._path),
            ctypes.addressof(self._handle),
            _OPEN_MAIN_DB | _OPEN_READWRITE,
            ctypes.addressof(out),
        )
        if rc:
            raise sqlite3.OperationalError(f"memdb could not open {name} (error {rc})")
        self._closed = False
        self.dirty: set[int] = set()
        """Numbers (from 0) of the template-sized pages written since the last restore."""
        self.cut_to: int | None = None
        """The smallest size the file was truncated to since the last restore."""
        self.bypassed = False
        self.page_size = 4096
        self.template_size = 0
        self.counter = 0
        self.cookie = 0
        self.cookie_moved = False
        """Whether a page 1 with another schema cookie was written since the last restore."""
        self.cookie_max = 0
        """The highest schema cookie ever written here: restores move it past that."""
        self._buffer = ctypes.create_string_buffer(65536)

    # Called by the shim's xWrite and xTruncate, in whichever thread runs the statement.
    def wrote(self, data: int, amount: int, offset: int) -> None:
        size = self.page_size
        first, last = offset // size, (offset + amount - 1) // size
        if first == last:
            self.dirty.add(first)
        else:
            self.dirty.update(range(first, last + 1))
        if offset == 0 and amount >= 44:
            header = ctypes.string_at(data + 24, 20)
            counter = int.from_bytes(header[:4], "big")
            # A commit moves the counter on by one from what is in the file; a rolled-back
            # spill writes the old page 1 back. Anything else: someone wrote around us.
            if (counter - self.counter) % (1 << 32) not in (0, 1, (1 << 32) - 1):
                self.bypassed = True
            self.counter = counter
            cookie = int.from_bytes(header[16:20], "big")
            if cookie != self.cookie:
                self.cookie_moved = True
                if cookie > self.cookie_max:
                    self.cookie_max = cookie
        elif offset < 44:
            self.bypassed = True  # part of the header alone: not SQLite's own way

    def truncated(self, size: int) -> None:
        if self.cut_to is None or size < self.cut_to:
            self.cut_to = size

    def _header(self) -> bytes:
        self._vfs.read(ctypes.addressof(self._handle), ctypes.addressof(self._buffer), 100, 0)
        return self._buffer.raw[:100]

    def _lock(self) -> bool:
        memdb = self._vfs.memdb
        handle = ctypes.addressof(self._handle)
        if memdb.lock(handle, _LOCK_SHARED):
            return False
        if memdb.lock(handle, _LOCK_EXCLUSIVE):
            self._unlock()
            return False
        return True

    def _unlock(self) -> None:
        self._vfs.memdb.unlock(ctypes.addressof(self._handle), _LOCK_NONE)

    def is_free(self) -> bool:
        """Whether no connection holds a read or a write open on the database (~2 us)."""
        if not self._lock():
            return False
        self._unlock()
        return True

    @property
    def touched(self) -> bool:
        """Whether anything was written since the last restore (committed or not: a rolled
        back write with ``journal_mode=OFF`` leaves changed pages and no commit)."""
        return bool(self.dirty) or self.cut_to is not None or self.bypassed

    def baseline(self, source: int) -> None:
        """Start recording afresh: the database now holds ``source``'s pages (a backup)."""
        header = self._header()
        self.page_size = _page_size(_header_of(self._vfs, source))
        self.template_size = self._vfs.size_of(source)  # the template is never written
        self.counter = int.from_bytes(header[24:28], "big")
        self.cookie = int.from_bytes(header[40:44], "big")
        self.cookie_max = max(self.cookie_max, self.cookie)
        self.cookie_moved = False
        self.dirty = set()
        self.cut_to = None
        self.bypassed = False

    def next_cookie(self, current: int) -> int | None:
        """The schema cookie a backup restore must set, if the one it left (``current``) is
        not past every value seen (a rewound ``schema_version``), else None."""
        if current > self.cookie_max:
            return None
        return (self.cookie_max + 1) % (1 << 32)

    def restore_from(self, source: int) -> bool | None:
        """Put back ``source``'s pages where they were written (``source``: the template's
        file, :meth:`PageVfs.file_of`); False if a connection holds a lock (nothing
        changed), None if writes went around the shim (the caller backs up instead)."""
        if not self._lock():
            return False
        try:
            header = self._header()
            if self.bypassed or int.from_bytes(header[24:28], "big") != self.counter:
                return None
            try:
                self._put_back(source, header)
            except BaseException:
                self.bypassed = True  # half put back: the next restore backs up everything
                raise
        finally:
            self._unlock()
        return True

    def _put_back(self, source: int, header: bytes) -> None:
        vfs = self._vfs
        handle = ctypes.addressof(self._handle)
        buffer = ctypes.addressof(self._buffer)
        size = self.page_size
        template_size = self.template_size
        pages = set(self.dirty)  # forgotten only once all are back (all-or-nothing)
        if self.cut_to is not None:
            pages.update(range(self.cut_to // size, template_size // size))
        pages.discard(0)  # page 1 goes last, with its header moved forward
        write = vfs.memdb.write
        for page in pages:
            offset = page * size
            if offset >= template_size:
                continue
            vfs.read(source, buffer, size, offset)
            if write(handle, buffer, size, offset):
                raise sqlite3.OperationalError(f"memdb write to {self.name} failed")
        if vfs.memdb.truncate(handle, template_size):
            raise sqlite3.OperationalError(f"memdb truncate of {self.name} failed")
        vfs.read(source, buffer, size, 0)
        counter = (self.counter + 1) % (1 << 32)
        cookie = int.from_bytes(header[40:44], "big")
        if cookie != self.cookie or self.cookie_moved:
            self.cookie_max = max(self.cookie_max, cookie)
            cookie = (self.cookie_max + 1) % (1 << 32)  # past every value a connection saw
            self.cookie_max = cookie
        for offset, value in ((24, counter), (92, counter), (40, cookie)):
            ctypes.memmove(buffer + offset, value.to_bytes(4, "big"), 4)
        if write(handle, buffer, size, 0):
            raise sqlite3.OperationalError(f"memdb write to {self.name} failed")
        self.counter, self.cookie = counter, cookie
        self.cookie_moved = False
        self.dirty = set()
        self.cut_to = None

    def close(self) -> None:
        """Stop recording and close the shim's own handle (the database lives while any
        connection to it is open)."""
        if not self._closed:
            self._closed = True
            self._vfs.forget(self)
            self._vfs.memdb.close(ctypes.addressof(self._handle))


def _page_size(header: bytes) -> int:
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size or 4096


def _header_of(vfs: PageVfs, file: int) -> bytes:
    buffer = ctypes.create_string_buffer(100)
    vfs.read(file, ctypes.addressof(buffer), 100, 0)
    return buffer.raw


class PageVfs:
    """The ``memdb-pages`` VFS, registered once per process (see the module doc)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        find = library.sqlite3_vfs_find
        find.restype, find.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
        memdb_address = find(b"memdb")
        if not memdb_address:
            raise OSError("SQLite has no memdb VFS")
        memdb = _Vfs.from_address(memdb_address)
        self._slot = (memdb.szOsFile + 7) // 8 * 8
        """Where, after memdb's part of a file, the shim keeps the watched database's id."""
        self.file_size = self._slot + 8
        self.memdb_open = _OPEN(memdb.xOpen)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._watched: dict[str, Watched] = {}
        self._by_id: dict[int, Watched] = {}
        self._capture: dict[str, int] = {}
        self._memdb_methods: int | None = None
        self._methods: _IoMethods | None = None
        self.memdb = _MemdbFile()
        """memdb's own file methods (known after its first open), callable from Python."""
        self._callbacks = (_OPEN(self._x_open), _WRITE(self._x_write), _TRUNCATE(self._x_truncate))
        struct = _Vfs()
        ctypes.pointer(struct)[0] = memdb  # every field copied, pAppData included
        self._name = ctypes.c_char_p(VFS_NAME.encode())
        struct.zName = self._name.value
        struct.pNext = None
        struct.szOsFile = self.file_size
        struct.xOpen = ctypes.cast(self._callbacks[0], ctypes.c_void_p).value
        self.struct = struct
        register = library.sqlite3_vfs_register
        register.restype, register.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]
        if register(ctypes.addressof(struct), 0):
            raise OSError("sqlite3_vfs_register failed")
        # memdb's own opens come here too, so a connection opened with ``vfs=memdb`` on a
        # watched name is recorded as well (files the larger size first: the slot is ours).
        memdb.szOsFile = self.file_size
        memdb.xOpen = struct.xOpen

    # -- the shim's three Python methods ------------------------------------------------
    def _x_open(self, vfs: int, name: int, file: int, flags: int, out_flags: int) -> int:
        rc: int = self.memdb_open(vfs, name, file, flags, out_flags)
        if rc or not name or not flags & _OPEN_MAIN_DB:
            return rc
        try:
            ctypes.c_int64.from_address(file + self._slot).value = 0
            key = ctypes.string_at(name).decode("utf-8", "surrogateescape")
            methods = ctypes.c_void_p.from_address(file).value
            if self._methods is None and methods:
                self._copy_methods(methods)
            watched = self._watched.get(key)
            if watched is not None and methods == self._memdb_methods:
                ctypes.c_int64.from_address(file + self._slot).value = watched.ident
                assert self._methods is not None
                ctypes.c_void_p.from_address(file).value = ctypes.addressof(self._methods)
            elif key in self._capture and not self._capture[key]:
                self._capture[key] = file
        except Exception:  # pragma: no cover - the file stays memdb's own: unrecorded
            pass  # (its writes then move the change counter unseen: a backup restore)
        return rc

    def _x_write(self, file: int, data: int, amount: int, offset: int) -> int:
        watched = self._by_id.get(ctypes.c_int64.from_address(file + self._slot).value)
        if watched is not None:
            try:
                watched.wrote(data, amount, offset)
            except Exception:  # pragma: no cover - never lose a write to a bookkeeping bug
                watched.bypassed = True
        return self.memdb.write(file, data, amount, offset)

    def _x_truncate(self, file: int, size: int) -> int:
        watched = self._by_id.get(ctypes.c_int64.from_address(file + self._slot).value)
        if watched is not None:
            watched.truncated(size)
        return self.memdb.truncate(file, size)

    def _copy_methods(self, address: int) -> None:
        memdb = _IoMethods.from_address(address)
        ours = _IoMethods()
        ctypes.pointer(ours)[0] = memdb
        ours.xWrite = ctypes.cast(self._callbacks[1], ctypes.c_void_p).value
        ours.xTruncate = ctypes.cast(self._callbacks[2], ctypes.c_void_p).value
        self.memdb = _MemdbFile(memdb)
        self._memdb_methods = address
        self._methods = ours

    # -- what the rest of the plugin uses -----------------------------------------------
    def capture(self, name: str) -> None:
        """Remember the file of the next connection opened on ``name`` (a private
        database: the template's anchor), for :meth:`file_of`."""
        with self._lock:
            self._capture[name] = 0

    def file_of(self, name: str) -> int | None:
        """The ``sqlite3_file`` of a captured database's anchor, or None."""
        with self._lock:
            return self._capture.get(name) or None

    def release(self, name: str) -> None:
        with self._lock:
            self._capture.pop(name, None)

    def watch(self, name: str, source: int) -> Watched:
        """Record the pages written to the shared database ``/name`` from now on."""
        with self._lock:
            path = f"/{name}"
            watched = Watched(self, path, next(self._ids))
            if self._methods is None:
                self._copy_methods(ctypes.c_void_p.from_buffer(watched._handle).value or 0)
            watched.baseline(source)
            self._watched[path] = watched
            self._by_id[watched.ident] = watched
            return watched

    def forget(self, watched: Watched) -> None:
        with self._lock:
            self._watched.pop(watched.name, None)
            self._by_id.pop(watched.ident, None)

    def read(self, file: int, buffer: int, amount: int, offset: int) -> None:
        rc = self.memdb.read(file, buffer, amount, offset)
        if rc:
            raise sqlite3.OperationalError(f"memdb read failed (error {rc})")

    def size_of(self, file: int) -> int:
        size = ctypes.c_longlong(0)
        rc = self.memdb.file_size(file, ctypes.byref(size))
        if rc:
            raise sqlite3.OperationalError(f"memdb file size failed (error {rc})")
        return size.value


_made: list[PageVfs | None] = []
_made_lock = threading.Lock()
unavailable_reason: str = ""


def page_vfs() -> PageVfs | None:
    """The process's ``memdb-pages`` VFS (registered on first use), or None where the
    shim cannot be made; :data:`unavailable_reason` then says why."""
    global unavailable_reason
    if _made:
        return _made[0]
    with _made_lock:
        if not _made:
            library = _sqlite_library()
            made: PageVfs | None = None
            if library is None:
                unavailable_reason = "the sqlite3 module's SQLite library is not reachable"
            else:
                try:
                    made = PageVfs(library)
                except (OSError, AttributeError) as exc:
                    unavailable_reason = str(exc)
                else:
                    # SQLite keeps pointers to the struct and callbacks for as long as the
                    # process runs (a connection closed late in shutdown still calls them):
                    # a reference that is never given back keeps them from being freed.
                    ctypes.pythonapi.Py_IncRef(ctypes.py_object(made))
            _made.append(made)
    return _made[0]
