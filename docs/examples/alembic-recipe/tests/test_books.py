from sqlalchemy import select, text

from myapp.models import Author, Book


async def test_the_migrations_ran(memdb_session):
    assert await memdb_session.scalar(text("SELECT version_num FROM alembic_version")) == "0001"


async def test_add_a_book(memdb_session):
    memdb_session.add(Book(title="Kindred", author=Author(name="Octavia E. Butler")))
    await memdb_session.commit()
    book = await memdb_session.scalar(select(Book).where(Book.title == "Kindred"))
    assert book.author_id is not None


async def test_the_next_test_does_not_see_it(memdb_session):
    assert await memdb_session.scalar(select(Book).where(Book.title == "Kindred")) is None
