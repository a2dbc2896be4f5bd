from sqlalchemy import select

from myapp.models import Author, Book


async def test_add_a_book(memdb_session):
    memdb_session.add(Book(title="Kindred", author=Author(name="Octavia E. Butler")))
    await memdb_session.commit()
    query = select(Book.title).join(Book.author).where(Author.name == "Octavia E. Butler")
    assert await memdb_session.scalar(query) == "Kindred"


async def test_the_next_test_does_not_see_it(memdb_session):
    assert await memdb_session.scalar(select(Book).where(Book.title == "Kindred")) is None
