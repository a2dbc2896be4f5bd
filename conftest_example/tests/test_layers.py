"""Data for a module: a layer, written once, in every test that asks for it."""

from __future__ import annotations

import httpx
import pytest
from app.models import Author, Book

from pytest_memdb import MemdbLayer


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
