from sqlalchemy import func, select

from myapp.models import Book


async def test_add_a_book(memdb_session):
    memdb_session.add(Book(title="Kindred"))
    await memdb_session.commit()
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 1


async def test_the_next_test_starts_empty(memdb_session):
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 0
