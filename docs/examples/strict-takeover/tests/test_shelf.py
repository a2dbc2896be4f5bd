from sqlalchemy import func, select

from myapp import shelf
from myapp.models import Book


async def test_add_a_book(memdb_session):
    await shelf.add_book("Mort", "Terry Pratchett")
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 1


async def test_count_books():
    assert await shelf.count_books() == 0
