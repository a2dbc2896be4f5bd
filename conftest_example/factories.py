"""Model factories (factory_boy). ``memdb_factories = factories`` in pytest.ini binds them to
each test's own session: no session is passed, and what they make is gone after the test."""

from __future__ import annotations

import factory
from app.models import Author, Book
from factory.alchemy import SQLAlchemyModelFactory


class AuthorFactory(SQLAlchemyModelFactory):
    class Meta:
        model = Author

    name = factory.Sequence(lambda n: f"Author {n}")


class BookFactory(SQLAlchemyModelFactory):
    class Meta:
        model = Book

    title = factory.Sequence(lambda n: f"Book {n}")
    year = 2000
    author = factory.SubFactory(AuthorFactory)
