"""Writes tests/data/analytics.sqlite, the stand-in for a second database the app reads."""

import sqlite3
from pathlib import Path

PATH = Path(__file__).parent / "tests" / "data" / "analytics.sqlite"


def make_analytics() -> None:
    if PATH.exists():
        return
    PATH.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(PATH) as conn:
        conn.execute("CREATE TABLE page_view (id INTEGER PRIMARY KEY, path TEXT NOT NULL)")
        conn.executemany(
            "INSERT INTO page_view (path) VALUES (?)", [("/",), ("/books",), ("/books",)]
        )
    conn.close()


if __name__ == "__main__":
    make_analytics()
