import pytest
from sqlalchemy import select

from myapp.models import Author, Book


async def test_every_test_starts_with_the_seed(memdb_session):
    titles = await memdb_session.scalars(select(Book.title).order_by(Book.title))
    assert titles.all() == ["Mort", "Small Gods", "The Dispossessed"]
    names = await memdb_session.scalars(select(Author.name).order_by(Author.id))
    assert names.all() == ["Terry Pratchett", "Ursula K. Le Guin", "N. K. Jemisin"]


async def test_a_write_stays_in_its_test(memdb_session):
    memdb_session.add(Book(title="Night Watch", author_id=1))
    await memdb_session.commit()


@pytest.mark.memdb(load=["tests/data/reference.sql"])
async def test_other_steps_for_one_test(memdb_session):
    titles = await memdb_session.scalars(select(Book.title))
    assert titles.all() == ["The Dispossessed"]
