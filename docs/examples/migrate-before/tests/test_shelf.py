from sqlalchemy import select

from myapp.models import Book


async def test_the_seeded_shelf(session):
    titles = await session.scalars(select(Book.title).order_by(Book.title))
    assert titles.all() == ["Mort", "Small Gods"]


async def test_a_write_stays_in_its_test(session):
    session.add(Book(title="Night Watch", author_id=1))
    await session.commit()
