import pytest


@pytest.fixture
def session(memdb_session):
    return memdb_session
