from sqlalchemy import func, select

from myapp.models import Author


async def test_add_an_author(session):
    session.add(Author(name="Ursula K. Le Guin"))
    await session.commit()
    assert await session.scalar(select(func.count()).select_from(Author)) == 1


async def test_add_the_same_author_again(session):
    session.add(Author(name="Ursula K. Le Guin"))  # unique: fails if the last test leaked
    await session.commit()
    assert await session.scalar(select(func.count()).select_from(Author)) == 1
