from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from pytest_memdb import InMemoryDatabase
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from myapp.models import Book

db = InMemoryDatabase(mode="mmap")  # read-only data; leave mode out for the memory copy


@asynccontextmanager
async def lifespan(app):
    db.setup("data/books.sqlite")  # checks the file; it is only ever read
    yield
    await db.aclose()  # closes every connection (and its map of the file)


app = FastAPI(lifespan=lifespan)


@app.get("/titles")
async def titles(session: AsyncSession = Depends(db)):
    return list(await session.scalars(select(Book.title).order_by(Book.title)))
