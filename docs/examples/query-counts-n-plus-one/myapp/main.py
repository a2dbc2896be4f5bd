from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from myapp.models import Author, Book

engine = create_async_engine("sqlite+aiosqlite:///books.sqlite")
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
    books = (await session.scalars(select(Book))).all()
    authors = [await session.get(Author, book.author_id) for book in books]  # one query each
    return [{"title": b.title, "author": a.name} for b, a in zip(books, authors, strict=True)]


@app.post("/books", status_code=201)
async def add_book(book: BookIn, session: AsyncSession = Depends(get_session)):
    session.add(Book(title=book.title, author=Author(name=book.author)))
    await session.commit()
    return {"title": book.title}
