import httpx
import pytest

from myapp.main import app, get_session


@pytest.fixture
async def client(memdb_sessionmaker):
    async def session_for_this_test():
        async with memdb_sessionmaker() as session:
            yield session

    app.dependency_overrides[get_session] = session_for_this_test
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client
    app.dependency_overrides.clear()
