"""Data for a module (a layer), a Hypothesis test on an endpoint, and a factory."""

from __future__ import annotations

import httpx
import pytest
from app.models import Author, Book
from factories import BookFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from pytest_memdb import MemdbHandle, MemdbLayer


@pytest.fixture(scope="module")
def new_authors(memdb_module: MemdbLayer) -> list[Author]:
    """Three authors with a book each, written once for this module: every test that asks
    for them starts from the shipped file plus them."""
    with memdb_module.sync_session() as session:
        authors = [Author(name=name) for name in ("N. K. Jemisin", "Ted Chiang", "Ann Leckie")]
        session.add_all(authors)
        session.flush()
        session.add_all(
            Book(title=f"First of {a.name}", year=2010, author_id=a.id) for a in authors
        )
        session.commit()
    return authors  # detached: ids and names stay loaded


async def test_the_layer_is_there(client: httpx.AsyncClient, new_authors: list[Author]) -> None:
    assert (await client.get("/stats")).json() == {"books": 10, "authors": 6}
    response = await client.get("/books", params={"author": new_authors[1].name})
    assert [b["title"] for b in response.json()] == ["First of Ted Chiang"]


async def test_each_test_starts_from_the_layer(
    client: httpx.AsyncClient, new_authors: list[Author]
) -> None:
    await client.post("/books", json={"title": "Exhalation", "year": 2019, "author": "Ted Chiang"})
    assert (await client.get("/stats")).json() == {"books": 11, "authors": 6}


async def test_without_the_layer(client: httpx.AsyncClient) -> None:
    assert (await client.get("/stats")).json() == {"books": 7, "authors": 3}


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(title=st.text(min_size=1, max_size=40), year=st.integers(-3000, 3000))
async def test_any_book_can_be_added(
    memdb: MemdbHandle, client: httpx.AsyncClient, title: str, year: int
) -> None:
    await memdb.areset()  # every example starts from the shipped file
    response = await client.post(
        "/books", json={"title": title, "year": year, "author": "Terry Pratchett"}
    )
    assert response.status_code == 201
    assert response.json()["title"] == title
    assert (await client.get("/stats")).json() == {"books": 8, "authors": 3}


async def test_a_factory_writes_through_the_tests_session(
    client: httpx.AsyncClient, memdb_session: AsyncSession
) -> None:
    BookFactory.create_batch(2)  # added to memdb_session, no session passed
    await memdb_session.commit()  # the app reads through its own session: commit first
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 9
    assert (await client.get("/stats")).json() == {"books": 9, "authors": 5}
