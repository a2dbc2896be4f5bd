import pytest
import pytest_asyncio
from sqlalchemy import func, select

from myapp.models import Author, Book


@pytest.fixture(scope="module")
def le_guin(memdb_module):
    # Once for this module: every test that asks for le_guin starts with this row.
    with memdb_module.sync_session() as session:
        author = Author(name="Ursula K. Le Guin")
        session.add(author)
        session.commit()
    return author  # detached: its id and loaded attributes stay usable in the tests


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def earthsea(memdb_module, le_guin):
    async with memdb_module.session() as session:
        book = Book(title="A Wizard of Earthsea", author_id=le_guin.id)
        session.add(book)
        await session.commit()
    return book


async def test_add_a_second_book(memdb_session, le_guin, earthsea):
    memdb_session.add(Book(title="The Dispossessed", author_id=le_guin.id))
    await memdb_session.commit()
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 2


async def test_the_next_test_starts_from_the_layer(memdb_session, earthsea):
    assert list(await memdb_session.scalars(select(Book.title))) == ["A Wizard of Earthsea"]


async def test_a_test_without_the_fixture_starts_from_the_template(memdb_session):
    assert await memdb_session.scalar(select(func.count()).select_from(Author)) == 0


@pytest.fixture(scope="class")
def butler(memdb_class):
    with memdb_class.sync_session() as session:
        session.add(Author(name="Octavia E. Butler"))
        session.commit()


@pytest.mark.usefixtures("butler")
class TestWithAClassLayer:
    async def test_sees_the_module_and_the_class_layer(self, memdb_session, le_guin):
        names = await memdb_session.scalars(select(Author.name).order_by(Author.id))
        assert list(names) == ["Ursula K. Le Guin", "Octavia E. Butler"]
