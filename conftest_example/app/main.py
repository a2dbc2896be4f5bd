"""The app: reads ``data/books.sqlite`` from memory through pytest-memdb's runtime class."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.models import Author, Book
from pytest_memdb import InMemoryDatabase

DATA_FILE = Path(os.environ.get("BOOKS_DB", Path(__file__).parent.parent / "data" / "books.sqlite"))

db = InMemoryDatabase()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    db.setup(DATA_FILE)  # copy the shipped file into memory once, at start-up
    try:
        yield
    finally:
        await db.aclose()


app = FastAPI(lifespan=lifespan)
SessionDep = Annotated[AsyncSession, Depends(db)]


class BookOut(BaseModel):
    id: int
    title: str
    year: int
    author: str


class BookIn(BaseModel):
    title: str
    year: int
    author: str


@app.get("/books")
async def list_books(session: SessionDep, author: str | None = None) -> list[BookOut]:
    query = select(Book, Author.name).join(Author).order_by(Book.id)
    if author is not None:
        query = query.where(Author.name == author)
    rows = await session.execute(query)
    return [BookOut(id=b.id, title=b.title, year=b.year, author=name) for b, name in rows]


class AuthorOut(BaseModel):
    name: str
    books: list[str]


@app.get("/authors")
async def list_authors(session: SessionDep) -> list[AuthorOut]:
    # selectinload: one query for the authors, one for all their books. Without it, each
    # author.books would be one more query (an N+1), which async code cannot even do
    # implicitly; tests/test_books.py caps the count with memdb_queries.assert_max.
    authors = await session.scalars(
        select(Author).options(selectinload(Author.books)).order_by(Author.name)
    )
    return [AuthorOut(name=a.name, books=sorted(b.title for b in a.books)) for a in authors]


@app.get("/stats")
async def stats(session: SessionDep) -> dict[str, int]:
    books = await session.scalar(select(func.count()).select_from(Book))
    authors = await session.scalar(select(func.count()).select_from(Author))
    return {"books": int(books or 0), "authors": int(authors or 0)}


@app.post("/books", status_code=201)
async def add_book(book: BookIn, session: SessionDep) -> BookOut:
    author = await session.scalar(select(Author).where(Author.name == book.author))
    if author is None:
        raise HTTPException(status_code=422, detail=f"unknown author {book.author!r}")
    row = Book(title=book.title, year=book.year, author_id=author.id)
    session.add(row)
    await session.commit()
    return BookOut(id=row.id, title=row.title, year=row.year, author=author.name)
