"""The seed's runtime class, done right: a shipped SQLite file served to an async app.

``InMemoryDatabase`` keeps the seed's interface (``setup``, ``get_engine``,
``get_session``, ``Depends(db)``) on the plugin's core. It has two modes:

``mode="memory"`` (the default)
    The file is copied into a new in-memory database at ``setup()``. Unlike the seed,
    every instance gets its own uniquely named database (two instances set up from one
    file do not see each other's writes), SQLite's ordinary locking instead of
    shared-cache's instant ``database table is locked``, a read-only and percent-encoded
    open of the file, and a way to free it all again.

``mode="mmap"``
    Nothing is copied: every connection opens the file itself, read-only and
    ``immutable=1`` (no locks, no change detection), with ``PRAGMA mmap_size`` at least
    the file's size, so pages are read straight from the operating system's page cache,
    which every worker process serving the same file shares.

Measured (``benchmarks/bench_runtime.py``, 100 MB, 20 concurrent tasks): the memory
copy is no faster to query than the mmap mode or a plain file with a warm page cache,
takes several times longer to set up, and costs its full size in every worker process.
Choose the memory copy for what only it does: an app that writes (the writes stay in
memory and never reach the file), a file on a slow or network file system (it is read
once), a file that may be replaced while the app runs (the copy does not notice).
Choose mmap for read-only data, several workers, large files, fast start-up.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args

from sqlalchemy import URL, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from pytest_memdb.core._loop import run_sync
from pytest_memdb.errors import MemdbError
from pytest_memdb.sqlite.engines import EnginePair, open_aio
from pytest_memdb.sqlite.loading import (
    SQLITE_PATH_LIMIT,
    check_fixture_file,
    file_error,
    load_file,
    sqlite_text,
)
from pytest_memdb.sqlite.memory import MemoryDatabase, file_uri, unique_name
from pytest_memdb.sqlite.pragmas import Pragmas, apply_pragmas, parse_pragmas

Mode = Literal["memory", "mmap"]
"""How :class:`InMemoryDatabase` serves the file: a copy in memory, or the file itself mapped."""

MODES: tuple[str, ...] = get_args(Mode)

_ORIGIN = "InMemoryDatabase.setup()"

READ_ONLY_HINT = (
    "pytest-memdb: InMemoryDatabase(mode='mmap') serves the file read-only (opened "
    "mode=ro&immutable=1), so nothing can write to it. Use the default mode='memory' for an "
    "app that writes: its writes go to an in-memory copy and never reach the file."
)


class InMemoryDatabase:
    """A shipped SQLite file behind an async SQLAlchemy engine, copied into memory or mapped.

    Use it as a FastAPI dependency: ``session: AsyncSession = Depends(db)``. See the
    module's docstring for the two modes and when to use which.
    """

    def __init__(
        self,
        sql_echo: bool = False,
        *,
        pragmas: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        mode: Mode = "memory",
    ) -> None:
        """``pragmas``: SQLite settings for every connection, as ``{"foreign_keys": "ON"}``
        or ``[("foreign_keys", "ON")]`` (applied in that order), like the plugin's
        ``memdb_pragmas``. They are checked here, before anything is set up: an unknown
        pragma, a value SQLite does not take, or one that cannot be set per connection
        (``journal_mode``, ``page_size``, ...) raises :class:`~pytest_memdb.MemdbError`
        naming it.

        ``mode``: ``"memory"`` (the default) copies the file into memory at ``setup()``;
        ``"mmap"`` serves the file itself, read-only, through an immutable memory map:
        every write then fails with SQLite's ``attempt to write a readonly database``
        (an ``sqlalchemy.exc.OperationalError``). Anything else raises
        :class:`~pytest_memdb.MemdbError`.
        """
        if not isinstance(mode, str) or mode not in MODES:
            raise MemdbError(
                f"pytest-memdb: InMemoryDatabase(mode=...) got {mode!r}; expected one of "
                f"{', '.join(repr(m) for m in MODES)} ('memory': a copy in memory, the "
                "default; 'mmap': the file itself, read-only, shared between processes)."
            )
        self.sql_echo = sql_echo
        self.mode: Mode = mode
        self.pragmas: Pragmas = _check_pragmas(pragmas)
        self._database: MemoryDatabase | None = None
        self._engines: EnginePair | None = None
        self._file: _MappedFile | None = None
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None

    def setup(self, filename: str | os.PathLike[str]) -> None:
        """Serve ``filename``; the file is only ever read and stays byte-identical.

        ``mode="memory"``: copied into a new in-memory database (and checked with
        ``PRAGMA quick_check``). ``mode="mmap"``: checked to be a SQLite file that an
        immutable open reads correctly (no ``-wal`` or hot ``-journal`` beside it);
        connections open it on first use.
        """
        if self._engine is not None:
            raise RuntimeError(
                f"InMemoryDatabase is already set up ({self.name}); "
                "call close() before setting it up again."
            )
        path = Path(filename).expanduser()
        if self.mode == "mmap":
            mapped = _MappedFile.open(path)
            self._file = mapped
            self._engine = mapped.engine(echo=self.sql_echo, pragmas=self.pragmas)
        else:
            database = load_file(path, unique_name("app", path.stem), origin=_ORIGIN)
            self._database = database
            self._engines = EnginePair(database, echo=self.sql_echo, pragmas=self.pragmas)
            self._engine = self._engines.async_engine
        self._sessionmaker = async_sessionmaker(self._engine, expire_on_commit=False)

    @property
    def name(self) -> str:
        """The in-memory database's unique name; with ``mode="mmap"``, the file's real path."""
        self._require()
        if self._file is not None:
            return str(self._file.path)
        assert self._database is not None
        return self._database.name

    @property
    def url(self) -> str:
        """The ``sqlite+aiosqlite://`` URL, for engines of your own on the same data."""
        self._require()
        if self._file is not None:
            return self._file.async_url
        assert self._database is not None
        return self._database.async_url

    def get_engine(self) -> AsyncEngine:
        return self._require()

    def get_sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        self._require()
        assert self._sessionmaker is not None
        return self._sessionmaker

    def get_session(self) -> AsyncSession:
        """A new session; use it as ``async with db.get_session() as session:``."""
        return self.get_sessionmaker()()

    async def __call__(self) -> AsyncIterator[AsyncSession]:
        """Used by FastAPI ``Depends``: one session per request, closed after it."""
        async with self.get_session() as session:
            yield session

    async def aclose(self) -> None:
        """Dispose of the engine (closing every connection, and with them the file's maps)
        and free the in-memory database; safe to call twice."""
        engines, database, engine = self._engines, self._database, self._engine
        self._engines = self._database = self._sessionmaker = self._engine = self._file = None
        try:
            if engines is not None:
                await engines.aclose()
            elif engine is not None:
                await engine.dispose()
        finally:
            if database is not None:
                database.close()

    def close(self) -> None:
        """:meth:`aclose` for synchronous code (not from inside a running event loop's task)."""
        run_sync(self.aclose())

    async def __aenter__(self) -> InMemoryDatabase:
        self._require()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _require(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError(
                "InMemoryDatabase is not set up: call db.setup('path/to/file.sqlite') first "
                "(for example in your FastAPI lifespan)."
            )
        return self._engine

    def __repr__(self) -> str:
        state = self.name if self._engine is not None else "not set up"
        return f"<InMemoryDatabase mode={self.mode} {state}>"


class _MappedFile:
    """A SQLite file checked to be served correctly by ``mode=ro&immutable=1`` opens."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.sqlite_uri = f"{file_uri(path, read_only=True)}&immutable=1"

    @property
    def async_url(self) -> str:
        # The URI's own escapes ("a #1/app.db" is "a%20%231/app.db") must reach SQLite as
        # they are, and SQLAlchemy 2.1 percent-decodes the database part of a URL string
        # while 2.0 does not: its URL object writes the string that its own parser reads
        # back ("unable to open database file" on 2.0 when the escapes were doubled here).
        return URL.create(
            "sqlite+aiosqlite",
            database=file_uri(self.path, read_only=False),
            query={"mode": "ro", "immutable": "1", "uri": "true"},
        ).render_as_string(hide_password=False)

    @classmethod
    def open(cls, path: Path) -> _MappedFile:
        check_fixture_file(path, origin=_ORIGIN)
        real = Path(os.path.realpath(path))
        if len(os.fsencode(real)) > SQLITE_PATH_LIMIT:
            raise file_error(
                path,
                _ORIGIN,
                f"its path is longer than SQLite opens in place ({SQLITE_PATH_LIMIT} bytes); "
                "move it, or use mode='memory', which copies it",
            )
        for suffix, what in (("-wal", "rows of its"), ("-journal", "a half-done write in its")):
            companion = Path(f"{real}{suffix}")
            try:
                pending = companion.stat().st_size > 0
            except FileNotFoundError:
                continue
            except OSError as exc:
                problem = f"its {suffix} file cannot be inspected ({exc.strerror})"
                raise file_error(path, _ORIGIN, problem) from None
            if pending:
                raise file_error(
                    path,
                    _ORIGIN,
                    f"there is {what} {suffix} file beside it ({companion}), which an "
                    "immutable open (mode='mmap') would silently not see; close every "
                    "writer so SQLite folds it in (or run PRAGMA wal_checkpoint(TRUNCATE)), "
                    "or use mode='memory', which reads it",
                )
        mapped = cls(real, real.stat().st_size)
        mapped._probe(path)
        return mapped

    def _probe(self, path: Path) -> None:
        """Open the file once the way the engine will and read its schema."""
        try:
            probe = sqlite3.connect(self.sqlite_uri, uri=True)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise file_error(path, _ORIGIN, f"SQLite cannot open it ({sqlite_text(exc)})") from None
        try:
            probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            problem = f"it is not a usable SQLite database ({sqlite_text(exc)})"
            raise file_error(path, _ORIGIN, problem) from None
        finally:
            probe.close()

    def engine(self, *, echo: bool, pragmas: Pragmas) -> AsyncEngine:
        """An engine whose every connection maps the whole file (then applies ``pragmas``)."""
        uri = self.sqlite_uri
        engine = create_async_engine(
            self.async_url,
            echo=echo,
            poolclass=AsyncAdaptedQueuePool,
            pool_size=0,  # no limit, and never waiting for a connection: see engines.py
            async_creator=lambda: open_aio(uri),
        )
        settings: Pragmas = (("mmap_size", str(max(self.size, 1))), *pragmas)

        def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            apply_pragmas(dbapi_connection, settings)

        def handle_error(context: Any) -> None:
            error = context.sqlalchemy_exception
            original = str(context.original_exception)
            if error is not None and "attempt to write a readonly database" in original:
                error.add_detail(READ_ONLY_HINT)

        event.listen(engine.sync_engine, "connect", on_connect)
        event.listen(engine.sync_engine, "handle_error", handle_error)
        return engine


def _check_pragmas(pragmas: Mapping[str, str] | Sequence[tuple[str, str]] | None) -> Pragmas:
    if pragmas is None:
        return ()
    if isinstance(pragmas, str):
        raise MemdbError(
            f"pytest-memdb: InMemoryDatabase(pragmas=...) got {pragmas!r}; expected a mapping "
            "such as {'foreign_keys': 'ON'} or a sequence of (name, value) pairs."
        )
    pairs = pragmas.items() if isinstance(pragmas, Mapping) else pragmas
    lines = []
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise MemdbError(
                f"pytest-memdb: InMemoryDatabase(pragmas=...) got {pair!r}; expected "
                "(name, value) pairs."
            )
        name, value = pair
        lines.append(f"{name}={value}")
    return parse_pragmas(lines, "InMemoryDatabase(pragmas=...)")
