import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from myapp.main import app
from myapp.models import Book


async def test_no_override_needed(memdb_session):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/books", json={"title": "Mort", "author": "Terry Pratchett"})
    assert response.status_code == 201
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 1


def test_with_testclient(memdb_sync_session):
    with TestClient(app) as client:
        assert client.get("/books").json() == []  # every test starts from the template
        client.post("/books", json={"title": "Kindred", "author": "Octavia E. Butler"})
    assert memdb_sync_session.scalar(select(Book.title)) == "Kindred"
