from starlette.testclient import TestClient

from myapp.app import app


def test_add_an_author():
    with TestClient(app) as client:
        assert client.post("/authors", json={"name": "N. K. Jemisin"}).status_code == 201
        assert client.get("/authors").json() == ["N. K. Jemisin"]


def test_the_next_test_starts_clean():
    with TestClient(app) as client:
        assert client.get("/authors").json() == []
