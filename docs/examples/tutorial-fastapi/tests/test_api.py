from sqlalchemy import select

from myapp.models import Author, Book


async def test_list_the_shipped_books(client):
    response = await client.get("/books")
    assert response.status_code == 200
    assert response.json()[0] == {"title": "A Wizard of Earthsea", "author": "Ursula K. Le Guin"}
    assert len(response.json()) == 4


async def test_add_a_book(client, memdb_session):
    book = {"title": "Night Watch", "author": "Terry Pratchett"}
    response = await client.post("/books", json=book)
    assert response.status_code == 201
    query = select(Author.name).join(Book.author).where(Book.title == "Night Watch")
    assert await memdb_session.scalar(query) == "Terry Pratchett"


async def test_the_next_test_starts_from_the_file_again(client):
    assert len((await client.get("/books")).json()) == 4
