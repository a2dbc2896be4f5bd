# ---------------------------------------------------------------------------
# pytest-memdb drop-in (appended to tests/conftest.py by run_dropin.sh; the test
# files are untouched). These definitions rebind the names of the project's two
# database fixtures, so pytest registers ours in their place:
#  - setup_database (session, autouse) no longer runs create_all: the template is
#    built once from the project's models (--memdb-metadata tests.models.basic:Base,
#    and the hook below adds the other two bases' tables);
#  - db is pytest-memdb's AsyncSession on this test's own in-memory database.
import pytest


@pytest.fixture(scope="session", autouse=True)
def setup_database():
    """Nothing to create: every test's database comes from the template."""


@pytest.fixture
def db(memdb_session):
    return memdb_session


def pytest_memdb_template(connection):
    from tests.models.no_relationship import NoRelBase
    from tests.models.relationship import RelationBase

    for base in (RelationBase, NoRelBase):
        base.metadata.create_all(connection)
