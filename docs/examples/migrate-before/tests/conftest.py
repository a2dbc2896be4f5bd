import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from myapp.models import Base
from myapp.seed import add_books


@pytest.fixture
async def session():
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(add_books)  # the rows every test expects
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        yield session
    await engine.dispose()
