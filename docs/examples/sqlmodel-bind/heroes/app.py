from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession


class Hero(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str


engine = create_async_engine("sqlite+aiosqlite:///heroes.db")
app = FastAPI()


async def get_session() -> AsyncIterator[AsyncSession]:
    async with AsyncSession(engine) as session:
        yield session


@app.post("/heroes")
async def add_hero(hero: Hero, session: AsyncSession = Depends(get_session)) -> Hero:
    session.add(hero)
    await session.commit()
    await session.refresh(hero)
    return hero


@app.get("/heroes")
async def heroes(session: AsyncSession = Depends(get_session)) -> list[Hero]:
    return list(await session.exec(select(Hero)))
