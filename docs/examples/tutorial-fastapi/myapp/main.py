from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from myapp.models import Author, Book

engine = create_async_engine("sqlite+aiosqlite:///data/books.sqlite")
Session = async_sessionmaker(engine, expire_on_commit=False)
app = FastAPI()


async def get_session():
    async with Session() as session:
        yield session


class BookIn(BaseModel):
    title: str
    author: str


@app.get("/books")
async def list_books(session: AsyncSession = Depends(get_session)):
    query = select(Book.title, Author.name).join(Book.author).order_by(Book.title)
    return [{"title": title, "author": name} for title, name in await session.execute(query)]


@app.post("/books", status_code=201)
async def add_book(book: BookIn, session: AsyncSession = Depends(get_session)):
    author = await session.scalar(select(Author).where(Author.name == book.author))
    session.add(Book(title=book.title, author=author or Author(name=book.author)))
    await session.commit()
    return {"title": book.title, "author": book.author}
