"""Coming from create_all per test: the same suite on a template built from the models.

    python benchmarks/bench_models.py            # 200 tests, 3 rounds (about a minute)
    python benchmarks/bench_models.py --tests 400 --rounds 5

A generated project (ORM models, a seed of ~100 rows, N async API-style tests)
runs under each way of giving a test its session, each way as its own
``python -m pytest`` subprocess, in interleaved rounds (the order rotates):

* ``create_all per test``: the fixture most suites have: a new in-memory
  aiosqlite engine, ``metadata.create_all``, the seed rows inserted, a session,
  then ``dispose()``;
* ``memdb copy`` / ``memdb rollback``: ``def session(memdb_session)`` with
  ``memdb_metadata = models:Base`` and ``memdb_load = models:seed``: the
  template is built and seeded once, and copied or rolled back per test;
* ``no database``: the fixture returns ``None`` and the test returns at once
  (what pytest itself costs per test).

Per test: set-up + call + teardown from the reports' durations, mean over the
run's tests excluding the first (which pays the session's start-up), median
over rounds. Suite: the wall time of the whole subprocess. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memdb_bench.common import rotate
from memdb_bench.report import package_version
from memdb_bench.suites import PYTEST_INI
from memdb_bench.ways import CONFTEST_MEMDB, CONFTEST_NODB

MODELS_PY = '''\
from sqlalchemy import ForeignKey, String, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    books: Mapped[list["Book"]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    isbn: Mapped[str] = mapped_column(String(13), unique=True)
    author: Mapped[Author] = relationship(back_populates="books")


class Review(Base):
    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"), index=True)
    rating: Mapped[int]
    body: Mapped[str] = mapped_column(String(500))


AUTHORS = [{"id": i, "name": f"author {i}"} for i in range(1, 21)]
BOOKS = [
    {"id": i, "author_id": 1 + i % 20, "title": f"book {i}", "isbn": f"978{i:010d}"}
    for i in range(1, 81)
]


def seed(conn):
    """~100 rows: 20 authors, 80 books."""
    conn.execute(insert(Author), AUTHORS)
    conn.execute(insert(Book), BOOKS)
'''

TEST_PY = """\
import os

import pytest
from sqlalchemy import func, select

from models import Author, Book, Review


@pytest.mark.parametrize("i", range(int(os.environ["BENCH_TESTS"])))
async def test_review(session, i):
    if session is None:
        return
    book = await session.get(Book, 1 + i % 80)
    author = await session.get(Author, book.author_id)
    shelf = (await session.scalars(select(Book).where(Book.author_id == author.id))).all()
    assert book in shelf
    session.add(Review(book_id=book.id, rating=1 + i % 5, body=f"review {i}"))
    await session.commit()
    count = await session.scalar(select(func.count()).select_from(Review))
    assert count == 1  # every test starts from the seeded state
"""

CONFTESTS = {
    "create_all per test": """\
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from models import Base, seed


@pytest.fixture
async def session():
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(seed)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        yield session
    await engine.dispose()
""",
    "memdb copy": CONFTEST_MEMDB,
    "no database": CONFTEST_NODB,
}
CONFTESTS["memdb rollback"] = CONFTESTS["memdb copy"]
INI = PYTEST_INI + "memdb_metadata = models:Base\nmemdb_load = models:seed\n"
TIMING_PY = """\
import json
import os

_times = {}


def pytest_runtest_logreport(report):
    if report.failed:
        raise SystemExit(f"benchmark test failed: {report.nodeid}\\n{report.longreprtext}")
    _times[report.nodeid] = _times.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    with open(os.environ["BENCH_OUT"], "w") as out:
        json.dump(list(_times.values()), out)
"""
WAYS = ("create_all per test", "memdb copy", "memdb rollback", "no database")


def _project(root: Path, way: str) -> Path:
    folder = root / way.replace(" ", "_")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.py").write_text(MODELS_PY)
    (folder / "test_suite.py").write_text(TEST_PY)
    (folder / "conftest.py").write_text(CONFTESTS[way])
    (folder / "bench_timing.py").write_text(TIMING_PY)
    (folder / "pytest.ini").write_text(INI)
    return folder


def _run(folder: Path, way: str, tests: int) -> tuple[float, float]:
    """One suite run: (mean ms per test without the first, wall seconds)."""
    out = folder / "times.json"
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench_timing"]
    if way == "memdb rollback":
        args.append("--memdb-isolation=rollback")
    # The project folder first (models.py), then what the caller set: with
    # PYTHONPATH=<a checkout> the suites run that checkout's plugin (before/after runs).
    path = os.pathsep.join(p for p in (".", os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "BENCH_TESTS": str(tests), "BENCH_OUT": str(out), "PYTHONPATH": path}
    start = time.perf_counter()
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{way}: pytest failed\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    times = json.loads(out.read_text())
    if len(times) != tests:
        raise SystemExit(f"{way}: expected {tests} tests, got {len(times)}")
    return statistics.fmean(times[1:]) * 1000, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    per_test: dict[str, list[float]] = {way: [] for way in WAYS}
    wall: dict[str, list[float]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="memdb-bench-models-") as scratch:
        folders = {way: _project(Path(scratch), way) for way in WAYS}
        for way in WAYS:  # warm-up: bytecode caches, imports
            _run(folders[way], way, 2)
        for round_no in range(options.rounds):
            for way in rotate(WAYS, round_no):
                ms, seconds = _run(folders[way], way, options.tests)
                per_test[way].append(ms)
                wall[way].append(seconds)
                print(f"round {round_no + 1} {way}: {ms:.2f} ms/test", file=sys.stderr)
    base = statistics.median(per_test["create_all per test"])
    floor = statistics.median(per_test["no database"])
    versions = ", ".join(
        f"{name} {package_version(name)}"
        for name in ("pytest", "pytest-asyncio", "SQLAlchemy", "aiosqlite", "pytest-memdb")
    )
    print(f"### {options.tests} tests, create_all + ~100 rows per test vs a template\n")
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {versions}; median of {options.rounds} rounds.\n"
    )
    print("| way | ms per test | added by the database | suite wall time | vs create_all |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for way in WAYS:
        ms = statistics.median(per_test[way])
        added = "" if way == "no database" else f"{ms - floor:.2f}"
        ratio = "" if way == "no database" else f"{base / ms:.1f}x faster"
        if way == "create_all per test":
            ratio = "1x"
        print(f"| {way} | {ms:.2f} | {added} | {statistics.median(wall[way]):.2f} s | {ratio} |")


if __name__ == "__main__":
    main()
