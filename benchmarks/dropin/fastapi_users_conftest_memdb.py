# ---------------------------------------------------------------------------
# pytest-memdb drop-in (appended to tests/conftest.py by run_dropin.sh; the test
# files are untouched). fastapi-users-db-sqlalchemy defines its database fixtures
# (sqlalchemy_user_db, sqlalchemy_user_db_oauth, sqlalchemy_access_token_db) in the
# test modules, where a conftest fixture of the same name cannot override them;
# each one builds its engine with the module-level name ``create_async_engine``.
# This autouse fixture (autouse fixtures are set up first) makes that name return
# pytest-memdb's per-test engine on a copy of the template, so the project's own
# fixture then runs unchanged: create_all finds the tables already there
# (checkfirst), the session works on the copy, and the drop_all at teardown only
# touches that copy (copy mode) or is rolled back (rollback mode).
#
# Each fixture's declarative base has its own template (the marker's metadata=, added
# below by the fixture a test uses; --memdb-metadata tests.test_users:Base is the
# default): the three bases all map a ``user`` table, and the other two reference it
# by foreign key (oauth_account, accesstoken). In one template with every base's
# tables, a fixture's drop_all of its own base cannot drop ``user`` on PostgreSQL
# (DependentObjectsStillExist: the other base's table still references it), while
# SQLite drops it regardless; with one template per base, each test's database holds
# what the project's own fixture creates, on both backends.
import pytest

_BASES = {
    "sqlalchemy_user_db": "tests.test_users:Base",
    "sqlalchemy_user_db_oauth": "tests.test_users:OAuthBase",
    "sqlalchemy_access_token_db": "tests.test_access_token:Base",
}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, metadata in _BASES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.memdb(metadata=metadata))


@pytest.fixture(autouse=True)
def _memdb_engine_swap(request, monkeypatch):
    module = request.module
    if module is None or not hasattr(module, "create_async_engine"):
        return
    engine = request.getfixturevalue("memdb_engine")
    monkeypatch.setattr(module, "create_async_engine", lambda *args, **kwargs: engine)
