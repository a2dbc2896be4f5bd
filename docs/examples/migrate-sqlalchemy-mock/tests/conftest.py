import pytest


@pytest.fixture
def mocked_session(memdb_sync_session):
    return memdb_sync_session
