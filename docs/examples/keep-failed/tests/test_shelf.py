from sqlalchemy import func, select

from myapp.models import Author, Book


async def test_passes(memdb_session):
    memdb_session.add(Author(name="Terry Pratchett"))
    await memdb_session.commit()


async def test_fails(memdb_session):
    memdb_session.add(Book(title="Kindred", author=Author(name="Octavia E. Butler")))
    await memdb_session.commit()
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 2
