# ---------------------------------------------------------------------------
# pytest-memdb drop-in (appended to tests/conftest.py by run_dropin.sh; the test
# files are untouched). fastapi-users-db-sqlalchemy defines its database fixtures
# (sqlalchemy_user_db, sqlalchemy_user_db_oauth, sqlalchemy_access_token_db) in the
# test modules, where a conftest fixture of the same name cannot override them;
# each one builds its engine with the module-level name ``create_async_engine``.
# This autouse fixture (autouse fixtures are set up first) makes that name return
# pytest-memdb's per-test engine on a copy of the template, built once from the
# project's own models (--memdb-metadata tests.test_users:Base; the hook below adds
# the other two bases' tables), so the project's own fixture then runs unchanged:
# create_all finds the tables already there (checkfirst), the session works on the
# in-memory copy, and the drop_all at teardown only touches that copy (copy mode) or
# is rolled back (rollback mode).
import pytest


@pytest.fixture(autouse=True)
def _memdb_engine_swap(request, monkeypatch):
    module = request.module
    if module is None or not hasattr(module, "create_async_engine"):
        return
    engine = request.getfixturevalue("memdb_engine")
    monkeypatch.setattr(module, "create_async_engine", lambda *args, **kwargs: engine)


def pytest_memdb_template(connection):
    # The three bases all map a ``user`` table; create_all keeps the first one it makes
    # (test_users.Base's, which has every column), so one template serves every test.
    from tests import test_access_token, test_users

    for base in (test_users.OAuthBase, test_access_token.Base):
        base.metadata.create_all(connection)
