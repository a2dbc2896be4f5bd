from sqlalchemy import insert

from myapp.models import Author, Book


def add_books(conn):  # a sync sqlalchemy.Connection
    conn.execute(insert(Author), [{"id": 1, "name": "Terry Pratchett"}])
    conn.execute(
        insert(Book), [{"title": "Mort", "author_id": 1}, {"title": "Small Gods", "author_id": 1}]
    )
