"""Point the app at this test's in-memory database: one dependency override."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from app.main import app, db
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


@pytest.fixture
async def client(
    memdb_sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[httpx.AsyncClient]:
    async def session_for_this_test() -> AsyncIterator[AsyncSession]:
        async with memdb_sessionmaker() as session:
            yield session

    app.dependency_overrides[db] = session_for_this_test
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        app.dependency_overrides.clear()
