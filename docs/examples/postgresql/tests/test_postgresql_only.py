from sqlalchemy import select

from myapp.books import tag
from myapp.models import Book


async def test_tag_adds_or_updates(memdb_session):
    assert await tag(memdb_session, 1, "Kindred", ["novel"]) == ["novel"]
    assert await tag(memdb_session, 1, "Kindred", ["time travel"]) == ["novel", "time travel"]


async def test_find_books_by_tag(memdb_session):
    memdb_session.add_all(
        [Book(title="Kindred", tags=["novel", "time travel"]), Book(title="Dawn", tags=["novel"])]
    )
    await memdb_session.commit()
    time_travel = select(Book.title).where(Book.tags.contains(["time travel"]))
    assert list(await memdb_session.scalars(time_travel)) == ["Kindred"]
