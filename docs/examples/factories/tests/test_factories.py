from sqlalchemy import func, select

from myapp.models import Author, Book
from tests.factories import AuthorPolyFactory, BookFactory


async def test_books(memdb_session):
    BookFactory.create_batch(3)  # added to memdb_session: the query below flushes them
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 3


async def test_polyfactory(memdb_session):
    author = await AuthorPolyFactory.create_async()  # commits; undone after the test
    assert author in memdb_session


def test_a_sync_test(memdb_sync_session):
    BookFactory()
    assert memdb_sync_session.scalar(select(func.count()).select_from(Author)) == 1
