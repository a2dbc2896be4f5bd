import factory
from factory.alchemy import SQLAlchemyModelFactory
from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory

from myapp.models import Author, Book


class AuthorFactory(SQLAlchemyModelFactory):
    class Meta:
        model = Author

    name = factory.Sequence(lambda n: f"Author {n}")


class BookFactory(SQLAlchemyModelFactory):
    class Meta:
        model = Book

    title = factory.Sequence(lambda n: f"Book {n}")
    author = factory.SubFactory(AuthorFactory)


class AuthorPolyFactory(SQLAlchemyFactory[Author]):
    __set_primary_key__ = False
