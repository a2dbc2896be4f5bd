"""The app's tests: each one gets its own copy of data/books.sqlite, in memory."""

from __future__ import annotations

import httpx
import pytest
from app.main import app, db
from app.models import Book
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pytest_memdb import QueryCounter


async def test_lists_the_shipped_books(client: httpx.AsyncClient) -> None:
    response = await client.get("/books", params={"author": "Octavia E. Butler"})
    assert response.status_code == 200
    assert [b["title"] for b in response.json()] == ["Kindred", "Parable of the Sower"]


async def test_adding_a_book_is_seen_by_the_test_session(
    client: httpx.AsyncClient, memdb_session: AsyncSession
) -> None:
    response = await client.post(
        "/books", json={"title": "Lathe of Heaven", "year": 1971, "author": "Ursula K. Le Guin"}
    )
    assert response.status_code == 201
    titles = await memdb_session.scalars(select(Book.title).where(Book.year == 1971))
    assert titles.all() == ["Lathe of Heaven"]


async def test_the_next_test_starts_from_the_shipped_file(client: httpx.AsyncClient) -> None:
    assert (await client.get("/stats")).json() == {"books": 7, "authors": 3}


async def test_unknown_author_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post("/books", json={"title": "X", "year": 1, "author": "Nobody"})
    assert response.status_code == 422


async def test_authors_page_is_two_queries_however_many_authors(
    client: httpx.AsyncClient, memdb_queries: QueryCounter
) -> None:
    with memdb_queries.assert_max(2):  # fails listing the statements if an N+1 creeps in
        response = await client.get("/authors")
    assert [a["name"] for a in response.json()] == [
        "Octavia E. Butler",
        "Terry Pratchett",
        "Ursula K. Le Guin",
    ]


@pytest.mark.memdb(isolation="rollback")
async def test_rollback_mode_for_one_test(
    client: httpx.AsyncClient, memdb_session: AsyncSession
) -> None:
    await client.post("/books", json={"title": "Mort", "year": 1987, "author": "Terry Pratchett"})
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 8


def test_with_starlettes_testclient(
    memdb_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """TestClient runs the app in another thread and event loop; our sessions work there."""

    async def session_for_this_test():  # type: ignore[no-untyped-def]
        async with memdb_sessionmaker() as session:
            yield session

    app.dependency_overrides[db] = session_for_this_test
    try:
        with TestClient(app) as client:  # runs the lifespan too: db.setup() on the real file
            assert client.get("/stats").json() == {"books": 7, "authors": 3}
            client.post("/books", json={"title": "Mort", "year": 1987, "author": "Terry Pratchett"})
            assert client.get("/stats").json()["books"] == 8
    finally:
        app.dependency_overrides.clear()
