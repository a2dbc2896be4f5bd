"""Writes data/books.sqlite, the stand-in for the file the app ships."""

import sqlite3
from pathlib import Path

PATH = Path(__file__).parent / "data" / "books.sqlite"


def make_books() -> None:
    if PATH.exists():
        return
    PATH.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(PATH) as conn:
        conn.executescript(
            """
            CREATE TABLE author (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL UNIQUE);
            CREATE TABLE book (
                id INTEGER PRIMARY KEY,
                title VARCHAR NOT NULL,
                author_id INTEGER NOT NULL REFERENCES author (id)
            );
            INSERT INTO author (id, name) VALUES (1, 'Ursula K. Le Guin');
            INSERT INTO book (title, author_id) VALUES
                ('A Wizard of Earthsea', 1), ('The Dispossessed', 1);
            """
        )
    conn.close()


if __name__ == "__main__":
    make_books()
