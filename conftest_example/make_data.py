"""The "offline ETL" that builds ``data/books.sqlite``; run it to rebuild the shipped file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from app.models import Base
from sqlalchemy import create_engine

BOOKS = {
    "Ursula K. Le Guin": [("A Wizard of Earthsea", 1968), ("The Dispossessed", 1974)],
    "Octavia E. Butler": [("Kindred", 1979), ("Parable of the Sower", 1993)],
    "Terry Pratchett": [("Guards! Guards!", 1989), ("Small Gods", 1992), ("Night Watch", 2002)],
}


def main(path: Path = Path(__file__).parent / "data" / "books.sqlite") -> None:
    path.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    with sqlite3.connect(path) as conn:
        for author_id, (author, books) in enumerate(BOOKS.items(), start=1):
            conn.execute("INSERT INTO author (id, name) VALUES (?, ?)", (author_id, author))
            conn.executemany(
                "INSERT INTO book (title, year, author_id) VALUES (?, ?, ?)",
                [(title, year, author_id) for title, year in books],
            )
    conn.close()
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
