from sqlalchemy.dialects.postgresql import insert

from myapp.models import Book


async def tag(session, book_id: int, title: str, tags: list[str]) -> list[str]:
    """Add the book, or add tags to it if it is there: one statement, no read-then-write."""
    new = insert(Book).values(id=book_id, title=title, tags=tags)
    upsert = new.on_conflict_do_update(
        index_elements=[Book.id], set_={"tags": Book.tags.concat(new.excluded.tags)}
    )
    merged = await session.scalar(upsert.returning(Book.tags))
    await session.commit()
    return merged
