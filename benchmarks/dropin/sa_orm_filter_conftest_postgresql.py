# ---------------------------------------------------------------------------
# The reference run on PostgreSQL (appended to tests/conftest.py of a third copy by
# run_dropin.sh; the test files are untouched, and pytest-memdb is not used): the
# project's own fixtures, drop_all + create_all around every test included, on an empty
# database of a throwaway server (with_postgresql.py sets DROPIN_PG_URL) instead of its
# temporary SQLite file. Redefining the fixture in the same module replaces it.
import os

import pytest


@pytest.fixture(scope="session")
def database_url():
    return os.environ["DROPIN_PG_URL"]
