from sqlalchemy import select

from myapp import shelf
from myapp.models import Book


async def test_the_app_writes_to_the_test_database(memdb_session):
    await shelf.add_book("Mort", "Terry Pratchett")
    assert await shelf.count_books() == 1
    assert await memdb_session.scalar(select(Book.title)) == "Mort"


async def test_the_next_test_starts_clean():
    assert await shelf.count_books() == 0
