from sqlalchemy import select

from myapp.models import Author


def test_add_an_author(session):
    session.add(Author(name="Ursula K. Le Guin"))
    session.commit()
    assert session.scalar(select(Author.name)) == "Ursula K. Le Guin"


def test_the_next_test_starts_clean(session):
    assert session.scalar(select(Author.name)) is None
