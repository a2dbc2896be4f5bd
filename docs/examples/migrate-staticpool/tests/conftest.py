import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

from myapp.models import Base

# One in-memory database for the whole run, kept alive by StaticPool's one connection.
engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)
Session = async_sessionmaker(engine, expire_on_commit=False)


@pytest_asyncio.fixture(scope="session", loop_scope="session", autouse=True)
async def tables():
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


@pytest.fixture
async def session():
    async with Session() as session:
        yield session
