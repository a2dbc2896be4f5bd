from fastapi.testclient import TestClient

from myapp.main import app, get_session


def test_with_testclient(memdb_sessionmaker):
    async def session_for_this_test():
        async with memdb_sessionmaker() as session:
            yield session

    app.dependency_overrides[get_session] = session_for_this_test
    try:
        with TestClient(app) as client:
            book = {"title": "Kindred", "author": "Octavia E. Butler"}
            assert client.post("/books", json=book).status_code == 201
            assert len(client.get("/books").json()) == 5
    finally:
        app.dependency_overrides.clear()
