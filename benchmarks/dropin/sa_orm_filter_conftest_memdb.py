# ---------------------------------------------------------------------------
# pytest-memdb drop-in (appended to tests/conftest.py by run_dropin.sh; the test
# files are untouched). fastapi-sa-orm-filter's conftest builds a session-wide
# aiosqlite engine on a file in a temp folder and, around every test, drop_all +
# create_all (autouse db_models). These two definitions rebind those fixtures' names:
#  - db_models no longer touches the schema: the template is built once from the
#    conftest's own Base (--memdb-metadata conftest:Base);
#  - create_session is pytest-memdb's async_sessionmaker on this test's database
#    (expire_on_commit=False, as the original's), so the project's `session` fixture
#    and everything built on it run unchanged.
# tests/schemas.py imports this file a second time, as tests.conftest (pytest loaded it
# as conftest): two copies of every model. The alias makes it one module, so the option
# names the Base the tests use (pytest-memdb refuses a module loaded under two names).
import sys

import pytest

sys.modules.setdefault("tests.conftest", sys.modules[__name__])


@pytest.fixture(autouse=True)
def db_models():
    """Nothing to create or drop: every test's database comes from the template."""


@pytest.fixture
def create_session(memdb_sessionmaker):
    return memdb_sessionmaker
