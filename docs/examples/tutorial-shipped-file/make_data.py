"""Build data/books.sqlite, the file the app ships: python make_data.py"""

from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from myapp.models import Author, Base, Book

PATH = Path(__file__).parent / "data" / "books.sqlite"


def main() -> None:
    PATH.parent.mkdir(exist_ok=True)
    PATH.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{PATH}")
    Base.metadata.create_all(engine)
    le_guin = Author(name="Ursula K. Le Guin")
    pratchett = Author(name="Terry Pratchett")
    with Session(engine) as session:
        session.add_all(
            [
                Book(title="A Wizard of Earthsea", author=le_guin),
                Book(title="The Dispossessed", author=le_guin),
                Book(title="Mort", author=pratchett),
                Book(title="Small Gods", author=pratchett),
            ]
        )
        session.commit()
    engine.dispose()
    print("wrote data/books.sqlite: 2 authors, 4 books")


if __name__ == "__main__":
    main()
