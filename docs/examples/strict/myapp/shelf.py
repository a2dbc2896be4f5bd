from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from myapp.db import Session
from myapp.models import Author, Book


async def add_book(title: str, author: str) -> None:
    async with Session() as session:
        session.add(Book(title=title, author=Author(name=author)))
        await session.commit()


async def count_books() -> int:
    engine = create_async_engine("sqlite+aiosqlite:///shelf.sqlite")  # not myapp.db's
    try:
        async with engine.connect() as connection:
            return await connection.scalar(select(func.count()).select_from(Book))
    finally:
        await engine.dispose()
