from sqlalchemy import delete, func, select

from myapp.models import Book


async def test_the_shipped_books_are_there(memdb_session):
    titles = await memdb_session.scalars(select(Book.title).order_by(Book.title))
    assert titles.all() == ["A Wizard of Earthsea", "Mort", "Small Gods", "The Dispossessed"]


async def test_a_test_may_delete_every_book(memdb_session):
    await memdb_session.execute(delete(Book))
    await memdb_session.commit()
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 0


async def test_the_next_test_starts_from_the_file_again(memdb_session):
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 4
