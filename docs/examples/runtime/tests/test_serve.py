from fastapi.testclient import TestClient

from myapp.models import Author, Book
from myapp.serve import app, db


def test_serves_the_shipped_file():
    with TestClient(app) as client:  # runs the lifespan: db.setup() on the real file
        assert client.get("/titles").json() == ["A Wizard of Earthsea", "The Dispossessed"]


def test_on_a_test_database(memdb_sessionmaker, memdb_sync_session):
    async def session_for_this_test():
        async with memdb_sessionmaker() as session:
            yield session

    memdb_sync_session.add(Book(title="Kindred", author=Author(name="Octavia E. Butler")))
    memdb_sync_session.commit()
    app.dependency_overrides[db] = session_for_this_test
    try:
        with TestClient(app) as client:
            titles = client.get("/titles").json()
    finally:
        app.dependency_overrides.clear()
    assert titles == ["A Wizard of Earthsea", "Kindred", "The Dispossessed"]
