from sqlalchemy import func, select, text

from myapp.models import Author, Book


async def test_report(memdb_session, analytics_db, audit_db):
    async with analytics_db.session() as session:
        views = await session.scalar(text("SELECT count(*) FROM page_view"))
    async with audit_db.session() as session:
        session.add(Book(title="Kindred", author=Author(name="Octavia E. Butler")))
        await session.commit()
    assert views == 3
    assert await memdb_session.scalar(select(func.count()).select_from(Book)) == 0


async def test_each_database_is_isolated(analytics_db, audit_db):
    async with audit_db.session() as session:
        assert await session.scalar(select(func.count()).select_from(Book)) == 0
    with analytics_db.queries.count() as q:
        async with analytics_db.session() as session:
            await session.execute(text("DELETE FROM page_view"))
            await session.commit()
    assert q.count == 1
