# ---------------------------------------------------------------------------
# pytest-memdb drop-in (appended to tests/conftest.py by run_dropin.sh; the test
# files are untouched). These definitions rebind the names of the project's two
# database fixtures, so pytest registers ours in their place:
#  - setup_database (session, autouse) no longer runs create_all: the tables come
#    from schema.sqlite (--memdb-file), built once by crud_plus_build_schema.py;
#  - db is pytest-memdb's AsyncSession on this test's own in-memory database.
import pytest


@pytest.fixture(scope="session", autouse=True)
def setup_database():
    """Nothing to create: every test's database is a copy of schema.sqlite."""


@pytest.fixture
def db(memdb_session):
    return memdb_session
