from sqlalchemy import func, select

from myapp.models import Book


async def test_add_a_book(client, memdb_session):
    response = await client.post("/books", json={"title": "Mort", "author": "Terry Pratchett"})
    assert response.status_code == 201
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 1


async def test_the_next_test_starts_clean(client):
    assert (await client.get("/books")).json() == []
