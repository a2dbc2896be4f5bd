from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from myapp.models import Author

engine = create_async_engine("sqlite+aiosqlite:///authors.sqlite")
Session = async_sessionmaker(engine, expire_on_commit=False)


async def authors(request):
    if request.method == "POST":
        async with Session() as session:
            session.add(Author(name=(await request.json())["name"]))
            await session.commit()
        return JSONResponse({"added": True}, status_code=201)
    async with Session() as session:
        return JSONResponse(list(await session.scalars(select(Author.name))))


app = Starlette(routes=[Route("/authors", authors, methods=["GET", "POST"])])
