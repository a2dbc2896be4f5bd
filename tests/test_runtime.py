"""The seed's runtime class, ``InMemoryDatabase``, used the way the seed's app uses it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from pytest_memdb import FixtureFileError, InMemoryDatabase, MemdbError
from pytest_memdb.runtime import Mode
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


# --- mode="mmap": the file itself, read-only, through an immutable memory map ---------------


def mapped_paths() -> set[str]:
    """Files this process has memory-mapped (Linux)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


def open_files() -> set[str]:
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        with suppress(OSError):
            found.add(os.readlink(fd))
    return found


def real(path: Path) -> str:
    return os.path.realpath(path)


def file_size(path: Path) -> int:
    return path.stat().st_size


linux_only = pytest.mark.skipif(
    not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps and /proc/self/fd"
)


def test_the_default_mode_is_the_memory_copy() -> None:
    assert InMemoryDatabase().mode == "memory"


@pytest.mark.parametrize("mode", ["disk", "MMAP", "", None, 1])
def test_a_bad_mode_is_a_clear_error(mode: object) -> None:
    with pytest.raises(MemdbError, match=r"mode=\.\.\.\) got .*expected one of 'memory', 'mmap'"):
        InMemoryDatabase(mode=mode)  # type: ignore[arg-type]


async def test_mmap_serves_the_file_through_fastapi(source: Path) -> None:
    before = digest(source)
    db = InMemoryDatabase(mode="mmap")

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

    async with lifespan(app):
        assert db.name == real(source)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = await asyncio.gather(*(client.get("/users") for _ in range(10)))
        assert {tuple(answer.json()) for answer in answers} == {("ada", "brian", "grace")}
    assert digest(source) == before
    assert sorted(p.name for p in source.parent.iterdir()) == ["app.sqlite"]


@linux_only
async def test_mmap_maps_the_file_and_reads_concurrently(source: Path) -> None:
    db = InMemoryDatabase(mode="mmap")
    db.setup(source)
    try:

        async def read() -> tuple[int, int, str]:
            async with db.get_session() as session:
                users = (await session.execute(text("SELECT count(*) FROM user"))).scalar_one()
                mmap = (await session.execute(text("PRAGMA mmap_size"))).scalar_one()
                files = (await session.execute(text("PRAGMA database_list"))).all()
                await asyncio.sleep(0.01)  # hold the session open: the tasks overlap
                return int(users), int(mmap), str(files[0][2])

        results = await asyncio.gather(*(read() for _ in range(20)))
        assert {users for users, _, _ in results} == {3}
        assert min(mmap for _, mmap, _ in results) >= file_size(source)
        assert {file for _, _, file in results} == {real(source)}
        assert db.get_engine().sync_engine.pool.checkedin() == 20  # twenty connections at once
        assert real(source) in mapped_paths()
    finally:
        await db.aclose()


async def test_mmap_writes_fail_with_the_documented_error(source: Path) -> None:
    before = digest(source)
    db = InMemoryDatabase(mode="mmap")
    db.setup(source)
    try:
        for statement in (
            "INSERT INTO user (name) VALUES ('linus')",
            "UPDATE user SET name = 'x'",
            "DELETE FROM user",
            "CREATE TABLE extra (id INTEGER)",
            "PRAGMA user_version = 7",
        ):
            async with db.get_session() as session:
                with pytest.raises(OperationalError) as caught:
                    await session.execute(text(statement))
            message = str(caught.value)
            assert "attempt to write a readonly database" in message, statement
            assert "mode='memory'" in message
        assert await count(db) == 3
    finally:
        await db.aclose()
    assert digest(source) == before
    assert sorted(p.name for p in source.parent.iterdir()) == ["app.sqlite"]


@linux_only
async def test_mmap_close_frees_connections_and_maps(source: Path) -> None:
    path = real(source)
    db = InMemoryDatabase(mode="mmap")
    db.setup(source)
    assert await count(db) == 3
    assert path in mapped_paths()
    assert path in open_files()
    await db.aclose()
    await db.aclose()  # twice is fine
    assert path not in mapped_paths()
    assert path not in open_files()
    with pytest.raises(RuntimeError, match="not set up"):
        db.get_engine()
    db.setup(source)  # set up again after close
    assert await count(db) == 3
    db.close()  # the synchronous close, from inside a running loop
    assert path not in open_files()


def test_mmap_sync_setup_and_close(source: Path) -> None:
    threads_before = threading.active_count()
    db = InMemoryDatabase(mode="mmap")
    db.setup(source)
    with pytest.raises(RuntimeError, match="already set up"):
        db.setup(source)
    assert "mode=mmap" in repr(db)
    db.close()
    assert threading.active_count() == threads_before


@pytest.mark.parametrize("mode", ["memory", "mmap"])
async def test_pragmas_apply_in_both_modes(source: Path, mode: Mode) -> None:
    db = InMemoryDatabase(mode=mode, pragmas=[("foreign_keys", "ON"), ("cache_size", "-1234")])
    db.setup(source)
    try:
        async with db.get_session() as session:
            values = [
                (await session.execute(text(f"PRAGMA {name}"))).scalar_one()
                for name in ("foreign_keys", "cache_size", "query_only")
            ]
        assert values == [1, -1234, 0]
    finally:
        await db.aclose()


async def test_pragmas_can_override_the_map_size(source: Path) -> None:
    db = InMemoryDatabase(mode="mmap", pragmas={"mmap_size": "0"})
    db.setup(source)
    try:
        async with db.get_session() as session:
            assert (await session.execute(text("PRAGMA mmap_size"))).scalar_one() == 0
        assert await count(db) == 3
    finally:
        await db.aclose()


async def test_mmap_url_reaches_the_file_through_escaped_characters(source: Path) -> None:
    assert "#" in str(source)
    assert " " in str(source)
    db = InMemoryDatabase(mode="mmap")
    db.setup(source)
    engine = create_async_engine(db.url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM user"))).scalar() == 3
    finally:
        await engine.dispose()
        await db.aclose()
    assert sorted(p.name for p in source.parent.parent.iterdir()) == ["shipped data #1"]


async def test_mmap_refuses_a_file_whose_wal_it_would_not_see(tmp_path: Path) -> None:
    wal_file = make_sqlite(tmp_path / "wal.sqlite", wal_rows=5)
    before = digest(wal_file), digest(Path(f"{wal_file}-wal"))
    with pytest.raises(FixtureFileError, match=r"wal\.sqlite.*-wal file beside it.*mode='memory'"):
        InMemoryDatabase(mode="mmap").setup(wal_file)
    db = InMemoryDatabase()  # the memory copy reads the -wal rows too
    db.setup(wal_file)
    try:
        assert await count(db) == 8
    finally:
        await db.aclose()
    assert (digest(wal_file), digest(Path(f"{wal_file}-wal"))) == before


def test_mmap_refuses_a_hot_journal(source: Path) -> None:
    Path(f"{source}-journal").write_bytes(b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7" + bytes(504))
    with pytest.raises(FixtureFileError, match=r"half-done write in its -journal file"):
        InMemoryDatabase(mode="mmap").setup(source)


def test_mmap_bad_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(
        FixtureFileError, match=r"nope\.sqlite.*InMemoryDatabase\.setup\(\).*does not exist"
    ):
        InMemoryDatabase(mode="mmap").setup(tmp_path / "nope.sqlite")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello, not a database\n")
    with pytest.raises(FixtureFileError, match="not a SQLite database"):
        InMemoryDatabase(mode="mmap").setup(text_file)
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    with pytest.raises(FixtureFileError, match=r"broken\.sqlite.*InMemoryDatabase\.setup\(\)"):
        InMemoryDatabase(mode="mmap").setup(broken)
