import httpx
from sqlmodel import select

from heroes.app import Hero, app, get_session


async def test_add_a_hero(memdb_sessionmaker, memdb_session):
    async def session():
        async with memdb_sessionmaker() as session:
            yield session

    app.dependency_overrides[get_session] = session
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/heroes", json={"name": "Deadpond"})
            assert response.status_code == 200
            assert (await client.get("/heroes")).json() == [{"id": 1, "name": "Deadpond"}]
    finally:
        app.dependency_overrides.clear()
    assert [hero.name for hero in await memdb_session.exec(select(Hero))] == ["Deadpond"]


async def test_the_next_test_starts_empty(memdb_session):
    assert list(await memdb_session.exec(select(Hero))) == []
