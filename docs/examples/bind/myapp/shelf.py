from sqlalchemy import func, select

from myapp.db import Session, engine
from myapp.models import Author, Book


async def add_book(title: str, author: str) -> None:
    async with Session() as session:
        session.add(Book(title=title, author=Author(name=author)))
        await session.commit()


async def count_books() -> int:
    async with engine.connect() as connection:  # the module's own copy of the engine
        return await connection.scalar(select(func.count()).select_from(Book))
