"""``memdb_queries``: counting the statements a test and its app run on the test's database.

The inner project is a small library app (authors and their books) with a FastAPI
endpoint that loads books lazily in a loop (an N+1) and one that uses
``selectinload``. Inner tests print ``QUERIES <label> count=<n> verbs=<...>`` lines;
the outer tests check the numbers and that every isolation mode prints the same ones.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

# Imported here so that pytester's in-process runs do not import them again for each run.
import fastapi
import fastapi.testclient
import httpx
import pytest

from tests.helpers import write_ini

WARM_MODULES = (fastapi, fastapi.testclient, httpx)
MODES = ["copy", "rollback", "session"]

LIBRARY = """
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI
from sqlalchemy import ForeignKey, select
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list["Book"]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "book"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    author: Mapped[Author] = relationship(back_populates="books")


async def get_session() -> AsyncIterator[AsyncSession]:
    raise RuntimeError("the production database is not reachable from tests")
    yield


app = FastAPI()


@app.get("/authors/lazy")
async def authors_lazy(session: AsyncSession = Depends(get_session)) -> list[dict]:
    authors = (await session.scalars(select(Author).order_by(Author.id))).all()
    out = []
    for author in authors:  # one SELECT per author: the N+1
        books = await author.awaitable_attrs.books
        out.append({"name": author.name, "books": sorted(b.title for b in books)})
    return out


@app.get("/authors/eager")
async def authors_eager(session: AsyncSession = Depends(get_session)) -> list[dict]:
    query = select(Author).options(selectinload(Author.books)).order_by(Author.id)
    authors = (await session.scalars(query)).all()
    return [{"name": a.name, "books": sorted(b.title for b in a.books)} for a in authors]


@app.post("/authors", status_code=201)
async def add_author(body: dict, session: AsyncSession = Depends(get_session)) -> dict:
    author = Author(name=body["name"])
    session.add(author)
    await session.commit()
    return {"id": author.id}
"""

CONFTEST = """
import pytest

from library import app, get_session


EXPECTED = EXPECTED_PLACEHOLDER


def report(label, captured):
    verbs = ",".join(s.split(None, 1)[0].upper() for s in captured.statements)
    seen = f"count={captured.count} verbs={verbs}"
    print(f"QUERIES {label} {seen}")
    assert seen == EXPECTED.get(label, seen), captured.statements


@pytest.fixture
def app_on_memdb(memdb_sessionmaker):
    async def override():
        async with memdb_sessionmaker() as session:
            yield session

    app.dependency_overrides[get_session] = override
    yield app
    app.dependency_overrides.clear()
"""

COUNTS = """
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import report
from library import Author, Book


@pytest.fixture(autouse=True)
def undo_writes(memdb):
    # Session isolation keeps writes: undo them, so that every test sees three authors in
    # every mode (the N+1 runs one SELECT per author).
    yield
    with memdb.sync_sessionmaker() as session:
        session.execute(text("DELETE FROM author WHERE id > 3"))
        session.execute(text("UPDATE author SET name = lower(name)"))
        session.commit()

EXPECTED_AUTHORS = [
    {"name": "le guin", "books": ["earthsea", "the dispossessed"]},
    {"name": "lem", "books": ["solaris"]},
    {"name": "tolkien", "books": []},
]


async def test_first_test_of_the_run_async_session(memdb_queries, memdb_session):
    # First of the run: engines, pools and dialects are new here.
    with memdb_queries.count() as q:
        await memdb_session.scalar(select(func.count()).select_from(Author))
        memdb_session.add(Author(name="first"))
        await memdb_session.commit()
    report("async-session", q)


def test_sync_session(memdb_queries, memdb_sync_session):
    with memdb_queries.count() as q:
        memdb_sync_session.scalar(select(func.count()).select_from(Author))
        memdb_sync_session.add(Author(name="sync"))
        memdb_sync_session.commit()
    report("sync-session", q)


async def test_nested_transactions_are_not_counted(memdb_queries, memdb_session):
    with memdb_queries.count() as q:
        async with memdb_session.begin_nested():
            memdb_session.add(Author(name="nested"))
        await memdb_session.rollback()
        async with memdb_session.begin():
            await memdb_session.execute(text("UPDATE author SET name = upper(name)"))
    report("nested", q)


async def test_engine_connect_and_raw_sql(memdb_queries, memdb_engine):
    # the test's own PRAGMA (SHOW on PostgreSQL): counted
    own = "PRAGMA user_version" if memdb_engine.dialect.name == "sqlite" else "SHOW server_version"
    with memdb_queries.count() as q:
        async with memdb_engine.begin() as conn:
            await conn.execute(text("SELECT 1"))
            await conn.exec_driver_sql("INSERT INTO author (name) VALUES ('raw')")
            await conn.exec_driver_sql(own)
    report("engine", q)


async def test_engines_the_app_builds_from_the_urls(memdb, memdb_url, memdb_queries):
    if memdb.isolation == "rollback" and memdb.engine.dialect.name == "postgresql":
        # PostgreSQL's rollback mode refuses any other connection to the held database
        with pytest.raises(Exception, match="not currently accepting connections"):
            create_engine(memdb.sync_url).connect()
        return
    async_engine = create_async_engine(memdb_url)
    sync_engine = create_engine(memdb.sync_url)
    try:
        with memdb_queries.count() as q:
            async with async_engine.connect() as conn:
                await conn.execute(text("SELECT count(*) FROM book"))
            with sync_engine.connect() as conn:
                conn.execute(text("SELECT count(*) FROM book"))
    finally:
        await async_engine.dispose()
        sync_engine.dispose()
    report("own-engines", q)


async def test_statements_outside_the_block_are_not_counted(memdb_queries, memdb_session):
    await memdb_session.execute(text("SELECT 1"))
    with memdb_queries.count() as q:
        await memdb_session.execute(text("SELECT 2"))
        with memdb_queries.count() as inner:
            await memdb_session.execute(text("SELECT 3"))
    await memdb_session.execute(text("SELECT 4"))
    report("outer", q)
    report("inner", inner)
    assert q.statements == ["SELECT 2", "SELECT 3"]
    assert inner.statements == ["SELECT 3"]
    assert len(q) == q.count == 2


async def test_asgi_n_plus_one(app_on_memdb, memdb_queries):
    transport = httpx.ASGITransport(app=app_on_memdb)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with memdb_queries.count() as lazy:
            response = await client.get("/authors/lazy")
        assert response.json() == EXPECTED_AUTHORS
        with memdb_queries.assert_max(2) as eager:
            response = await client.get("/authors/eager")
        assert response.json() == EXPECTED_AUTHORS
        with memdb_queries.count() as post:
            response = await client.post("/authors", json={"name": "new"})
        assert response.status_code == 201
    report("asgi-lazy", lazy)
    report("asgi-eager", eager)
    report("asgi-post", post)


def test_testclient_portal_thread(app_on_memdb, memdb_queries):
    with TestClient(app_on_memdb) as client:
        with memdb_queries.count() as lazy:
            assert client.get("/authors/lazy").json() == EXPECTED_AUTHORS
        with memdb_queries.count() as eager:
            assert client.get("/authors/eager").json() == EXPECTED_AUTHORS
        with memdb_queries.count() as post:
            assert client.post("/authors", json={"name": "new"}).status_code == 201
    report("client-lazy", lazy)
    report("client-eager", eager)
    report("client-post", post)
"""

N_PLUS_ONE = """
import httpx


async def test_catches_the_n_plus_one(app_on_memdb, memdb_queries):
    transport = httpx.ASGITransport(app=app_on_memdb)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with memdb_queries.assert_max(2):
            await client.get("/authors/lazy")


async def test_eager_stays_under_the_cap(app_on_memdb, memdb_queries):
    transport = httpx.ASGITransport(app=app_on_memdb)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with memdb_queries.assert_max(2):
            await client.get("/authors/eager")
"""

# Three authors, so the lazy endpoint runs 1 + 3 SELECTs and the eager one 2.
EXPECTED = {
    "async-session": "count=2 verbs=SELECT,INSERT",
    "sync-session": "count=2 verbs=SELECT,INSERT",
    "nested": "count=2 verbs=INSERT,UPDATE",
    "engine": "count=3 verbs=SELECT,INSERT,PRAGMA",
    "own-engines": "count=2 verbs=SELECT,SELECT",
    "outer": "count=2 verbs=SELECT,SELECT",
    "inner": "count=1 verbs=SELECT",
    "asgi-lazy": "count=4 verbs=SELECT,SELECT,SELECT,SELECT",
    "asgi-eager": "count=2 verbs=SELECT,SELECT",
    "asgi-post": "count=1 verbs=INSERT",
    "client-lazy": "count=4 verbs=SELECT,SELECT,SELECT,SELECT",
    "client-eager": "count=2 verbs=SELECT,SELECT",
    "client-post": "count=1 verbs=INSERT",
}
LINE = re.compile(r"QUERIES (?P<label>\S+) (?P<seen>count=\d+ verbs=\S*)$")


def make_library(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE author (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        CREATE TABLE book (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            author_id INTEGER NOT NULL REFERENCES author (id)
        );
        INSERT INTO author (name) VALUES ('le guin'), ('lem'), ('tolkien');
        INSERT INTO book (title, author_id)
            VALUES ('the dispossessed', 1), ('earthsea', 1), ('solaris', 2);
        """
    )
    conn.close()
    return path


@pytest.fixture
def library(pytester: pytest.Pytester) -> pytest.Pytester:
    make_library(pytester.path / "data" / "library.sqlite")
    pytester.makepyfile(library=LIBRARY, conftest=conftest())
    return pytester


def conftest(extra: str = "") -> str:
    return conftest_for(EXPECTED) + extra


def conftest_for(expected: dict[str, str]) -> str:
    return CONFTEST.replace("EXPECTED_PLACEHOLDER", repr(expected))


def seen(result: pytest.RunResult) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in result.outlines:
        match = LINE.search(line)
        if match:
            assert match["label"] not in found, line
            found[match["label"]] = match["seen"]
    return found


LIBRARY_SQL = """
INSERT INTO author (name) VALUES ('le guin'), ('lem'), ('tolkien');
INSERT INTO book (title, author_id) VALUES ('the dispossessed', 1), ('earthsea', 1), ('solaris', 2);
"""
"""The library's rows for PostgreSQL (``memdb_load``; the tables from the models)."""

EXPECTED_PG = {**EXPECTED, "engine": "count=3 verbs=SELECT,INSERT,SHOW"}


@pytest.mark.parametrize(
    ("switch", "isolation", "pragmas"),
    [
        *(
            pytest.param("sqlite", mode, pragmas, id=f"sqlite-{mode}-{pragmas or 'default'}")
            for mode in MODES
            for pragmas in ("", "foreign_keys=ON")
        ),
        *(pytest.param("postgresql", mode, "", id=f"postgresql-{mode}") for mode in MODES[:2]),
    ],
    indirect=["switch"],
)
def test_same_counts_in_every_mode(
    library: pytest.Pytester, isolation: str, pragmas: str, switch: list[str]
) -> None:
    """And on PostgreSQL (copy, and rollback's held session), the same counts: the
    savepoints rollback mode says where copy says ``BEGIN`` are not counted, nor the
    dialect's own first queries; the engines a test builds from ``memdb_url`` are refused in
    PostgreSQL's rollback mode (no other connection to the held database)."""
    ini = {"memdb_file": "data/library.sqlite", "memdb_isolation": isolation}
    expected = EXPECTED
    if switch:
        (library.path / "data" / "library.sql").write_text(LIBRARY_SQL)
        ini = {"memdb_metadata": "library:Base", "memdb_load": "data/library.sql",
               "memdb_isolation": isolation, "pythonpath": "."}  # fmt: skip
        library.makeconftest(conftest_for(EXPECTED_PG))
        expected = EXPECTED_PG
        if isolation == "rollback":
            expected = {k: v for k, v in EXPECTED_PG.items() if k != "own-engines"}
    if pragmas:
        ini["memdb_pragmas"] = pragmas
    write_ini(library, **ini)
    library.makepyfile(test_counts=COUNTS)
    result = library.runpytest(
        *switch, "-s", "-p", "no:cacheprovider", "-W", "error::ResourceWarning"
    )
    result.assert_outcomes(passed=8)
    assert seen(result) == expected


@pytest.mark.parametrize("isolation", MODES)
def test_assert_max_fails_listing_the_statements(library: pytest.Pytester, isolation: str) -> None:
    write_ini(library, memdb_file="data/library.sqlite", memdb_isolation=isolation)
    library.makepyfile(test_n_plus_one=N_PLUS_ONE)
    result = library.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    # SQLAlchemy 2.0.30 labels a lazy load's columns ("book.id AS book_id"); newer ones do not.
    result.stdout.fnmatch_lines(
        [
            "*_ test_catches_the_n_plus_one _*",
            "Expected at most 2 queries on the test database, but 4 were run:",
            "1. SELECT author.id, author.name ",
            "FROM author ORDER BY author.id",
            "2. SELECT book.id*, book.title*, book.author_id*",
            "FROM book ",
            "WHERE ? = book.author_id",
            "3. SELECT book.id*, book.title*, book.author_id*",
            "FROM book ",
            "WHERE ? = book.author_id",
            "4. SELECT book.id*, book.title*, book.author_id*",
            "FROM book ",
            "WHERE ? = book.author_id",
            "*= short test summary info =*",
            "FAILED test_n_plus_one.py::test_catches_the_n_plus_one - *Expected at*",
        ]
    )
    result.stdout.no_fnmatch_line("5. *")


def test_other_databases_are_not_counted(library: pytest.Pytester, app_db: Path) -> None:
    write_ini(library, memdb_file="data/library.sqlite")
    library.makeconftest(
        conftest(
            """
from pytest_memdb import memdb_factory

users_db = memdb_factory("users_db", file="data/app.sqlite")
library_copy = memdb_factory("library_copy", file="data/library.sqlite")
"""
        )
    )
    library.makepyfile(
        test_other="""
        import pytest
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        from conftest import report
        from pytest_memdb import InMemoryDatabase


        async def test_only_this_tests_database(
            memdb, memdb_queries, memdb_session, users_db, library_copy
        ):
            runtime = InMemoryDatabase()
            runtime.setup("data/library.sqlite")
            plain = create_async_engine("sqlite+aiosqlite://")
            try:
                with memdb_queries.count() as q, users_db.queries.count() as users_q:
                    async with users_db.session() as session:
                        await session.execute(text("SELECT count(*) FROM user"))
                        await session.execute(text("INSERT INTO user (name) VALUES ('x')"))
                        await session.commit()
                    async with library_copy.session() as session:
                        await session.execute(text("SELECT count(*) FROM author"))
                    async with runtime.get_session() as session:
                        await session.execute(text("SELECT count(*) FROM author"))
                    async with plain.connect() as conn:
                        await conn.execute(text("SELECT 1"))
                    await memdb_session.execute(text("SELECT 'mine'"))
            finally:
                await plain.dispose()
                await runtime.aclose()
            report("mine", q)
            report("users", users_q)
            assert q.statements == ["SELECT 'mine'"]


        URLS = []


        @pytest.mark.memdb(isolation="session")
        def test_a_session_database_that_outlives_its_test(memdb):
            URLS.append(memdb.url)


        async def test_another_tests_database(memdb, memdb_queries, memdb_session):
            other = create_async_engine(URLS[0])
            try:
                with memdb_queries.count() as q:
                    async with other.connect() as conn:
                        await conn.execute(text("SELECT count(*) FROM author"))
                    await memdb_session.execute(text("SELECT 'mine'"))
            finally:
                await other.dispose()
            assert URLS[0] != memdb.url
            assert q.statements == ["SELECT 'mine'"]
        """
    )
    result = library.runpytest("-s", "-p", "no:cacheprovider", "-W", "error::ResourceWarning")
    result.assert_outcomes(passed=3)
    assert seen(result) == {
        "mine": "count=1 verbs=SELECT",
        "users": "count=2 verbs=SELECT,INSERT",
    }


@pytest.mark.slow
def test_under_xdist(library: pytest.Pytester) -> None:
    write_ini(library, memdb_file="data/library.sqlite")
    for isolation in MODES:
        header = f"import pytest\n\npytestmark = pytest.mark.memdb(isolation={isolation!r})\n"
        library.makepyfile(**{f"test_counts_{isolation}": header + COUNTS})
    result = library.runpytest_subprocess("-s", "-p", "no:cacheprovider", "-n", "2", timeout=120)
    result.assert_outcomes(passed=3 * 8)
    # The workers' output does not reach us: conftest.report() asserts each count inside.
