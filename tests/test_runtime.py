"""The seed's runtime class, ``InMemoryDatabase``, used the way the seed's app uses it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from pytest_memdb import FixtureFileError, InMemoryDatabase
from tests.helpers import digest, make_sqlite


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_sqlite(tmp_path / "shipped data #1" / "app.sqlite")


async def count(db: InMemoryDatabase) -> int:
    async with db.get_session() as session:
        return int((await session.execute(text("SELECT count(*) FROM user"))).scalar_one())


async def test_interface_of_the_seed(source: Path) -> None:
    before = digest(source)
    db = InMemoryDatabase(sql_echo=False)
    db.setup(str(source))
    try:
        assert await count(db) == 3
        async with db.get_engine().connect() as conn:
            assert (
                await conn.execute(text("SELECT name FROM user WHERE id = 1"))
            ).scalar() == "ada"
        async with db.get_session() as session:
            await session.execute(text("INSERT INTO user (name) VALUES ('linus')"))
            await session.commit()
        assert await count(db) == 4
    finally:
        await db.aclose()
    assert digest(source) == before


async def test_two_instances_from_one_file_do_not_share_writes(source: Path) -> None:
    first, second = InMemoryDatabase(), InMemoryDatabase()
    first.setup(source)
    second.setup(source)
    try:
        assert first.name != second.name
        async with first.get_session() as session:
            await session.execute(text("DELETE FROM user"))
            await session.commit()
        assert (await count(first), await count(second)) == (0, 3)
    finally:
        await first.aclose()
        await second.aclose()


async def test_close_frees_the_memory_database(source: Path) -> None:
    db = InMemoryDatabase()
    db.setup(source)
    name = db.name
    assert await count(db) == 3
    await db.aclose()
    await db.aclose()  # twice is fine
    probe = sqlite3.connect(f"file:/{name}?vfs=memdb", uri=True)
    try:
        tables = probe.execute("SELECT name FROM sqlite_master").fetchall()
    finally:
        probe.close()
    assert tables == [], "the in-memory database outlived close()"
    with pytest.raises(RuntimeError, match="not set up"):
        db.get_engine()


async def test_async_context_manager_closes(source: Path) -> None:
    db = InMemoryDatabase()
    db.setup(source)
    async with db as entered:
        assert entered is db
        assert await count(db) == 3
    with pytest.raises(RuntimeError, match=r"call db.setup\("):
        db.get_session()


def test_sync_close_from_plain_code(source: Path) -> None:
    threads_before = threading.active_count()
    db = InMemoryDatabase()
    db.setup(source)
    db.close()
    assert threading.active_count() == threads_before


async def test_setup_twice_is_refused(source: Path) -> None:
    db = InMemoryDatabase()
    db.setup(source)
    try:
        with pytest.raises(RuntimeError, match="already set up"):
            db.setup(source)
    finally:
        await db.aclose()


async def test_bad_file_gives_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite"
    with pytest.raises(
        FixtureFileError, match=r"nope\.sqlite.*InMemoryDatabase\.setup\(\).*does not exist"
    ):
        InMemoryDatabase().setup(missing)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello, not a database\n")
    with pytest.raises(FixtureFileError, match="not a SQLite database"):
        InMemoryDatabase().setup(text_file)


async def test_fastapi_depends_like_the_seed(source: Path) -> None:
    db = InMemoryDatabase()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db.setup(source)
        yield
        await db.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/users")
    async def users(session: AsyncSession = Depends(db)) -> list[str]:  # noqa: B008
        rows = await session.execute(text("SELECT name FROM user ORDER BY id"))
        return list(rows.scalars())

    @app.post("/users/{name}")
    async def add(name: str, session: AsyncSession = Depends(db)) -> int:  # noqa: B008
        await session.execute(text("INSERT INTO user (name) VALUES (:n)"), {"n": name})
        await session.commit()
        return int((await session.execute(text("SELECT count(*) FROM user"))).scalar_one())

    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/users")).json() == ["ada", "brian", "grace"]
            assert (await client.post("/users/linus")).json() == 4
            assert (await client.get("/users")).json()[-1] == "linus"


async def test_sync_close_from_inside_a_running_loop(source: Path) -> None:
    """``close()`` cannot nest a loop; it finishes on a helper thread instead."""
    db = InMemoryDatabase()
    db.setup(source)
    name = db.name
    assert await count(db) == 3
    db.close()
    probe = sqlite3.connect(f"file:/{name}?vfs=memdb", uri=True)
    try:
        assert probe.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    finally:
        probe.close()
