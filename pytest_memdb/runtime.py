"""The seed's runtime class, done right: a shipped SQLite file served from memory.

``InMemoryDatabase`` keeps the seed's interface (``setup``, ``get_engine``,
``get_session``, ``Depends(db)``) on the plugin's core. Unlike the seed, every
instance gets its own uniquely named database (two instances set up from one
file do not see each other's writes), SQLite's ordinary locking instead of
shared-cache's instant ``database table is locked``, a read-only and
percent-encoded open of the file, and a way to free it all again.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pytest_memdb._loop import run_sync
from pytest_memdb.engines import EnginePair
from pytest_memdb.errors import MemdbError
from pytest_memdb.loading import load_file
from pytest_memdb.memory import MemoryDatabase, unique_name
from pytest_memdb.pragmas import Pragmas, parse_pragmas


class InMemoryDatabase:
    """An in-memory copy of a SQLite file, with an async SQLAlchemy engine on it.

    Use it as a FastAPI dependency: ``session: AsyncSession = Depends(db)``.
    """

    def __init__(
        self,
        sql_echo: bool = False,
        *,
        pragmas: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    ) -> None:
        """``pragmas``: SQLite settings for every connection, as ``{"foreign_keys": "ON"}``
        or ``[("foreign_keys", "ON")]`` (applied in that order), like the plugin's
        ``memdb_pragmas``. They are checked here, before anything is set up: an unknown
        pragma, a value SQLite does not take, or one that cannot be set per connection
        (``journal_mode``, ``page_size``, ...) raises :class:`~pytest_memdb.MemdbError`
        naming it.
        """
        self.sql_echo = sql_echo
        self.pragmas: Pragmas = _check_pragmas(pragmas)
        self._database: MemoryDatabase | None = None
        self._engines: EnginePair | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None

    def setup(self, filename: str | os.PathLike[str]) -> None:
        """Copy ``filename`` into a new in-memory database (the file is only read)."""
        if self._database is not None:
            raise RuntimeError(
                f"InMemoryDatabase is already set up ({self._database.name}); "
                "call close() before setting it up again."
            )
        path = Path(filename).expanduser()
        database = load_file(path, unique_name("app", path.stem), origin="InMemoryDatabase.setup()")
        self._database = database
        self._engines = EnginePair(database, echo=self.sql_echo, pragmas=self.pragmas)
        self._sessionmaker = async_sessionmaker(self._engines.async_engine, expire_on_commit=False)

    @property
    def name(self) -> str:
        """The in-memory database's unique name."""
        return self._require().name

    @property
    def url(self) -> str:
        """The ``sqlite+aiosqlite://`` URL, for engines of your own on the same data."""
        return self._require().async_url

    def get_engine(self) -> AsyncEngine:
        self._require()
        assert self._engines is not None
        return self._engines.async_engine

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
        """Dispose of the engine and free the in-memory database; safe to call twice."""
        engines, database = self._engines, self._database
        self._engines = self._database = self._sessionmaker = None
        try:
            if engines is not None:
                await engines.aclose()
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

    def _require(self) -> MemoryDatabase:
        if self._database is None:
            raise RuntimeError(
                "InMemoryDatabase is not set up: call db.setup('path/to/file.sqlite') first "
                "(for example in your FastAPI lifespan)."
            )
        return self._database

    def __repr__(self) -> str:
        state = self._database.name if self._database else "not set up"
        return f"<InMemoryDatabase {state}>"


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
