from sqlalchemy import select

from myapp.models import Author


async def test_an_author(memdb_session):
    memdb_session.add(Author(name="Octavia E. Butler", email="octavia@example.com"))
    await memdb_session.commit()
    assert await memdb_session.scalar(select(Author.email)) == "octavia@example.com"
