"""PostgreSQL side by side: pytest-memdb's modes, pytest-postgresql's clones, a rollback fixture.

    python benchmarks/bench_postgresql.py                      # 200 tests, 3 rounds
    python benchmarks/bench_postgresql.py --tests 50 --rounds 1   # a smoke run
    python benchmarks/bench_postgresql.py --pg-python /tmp/venv-pg/bin/python   # as root

One generated project (ORM models for authors, books and reviews; a template of 1,000 seed
rows: 100 authors, 900 books) and one suite of N async tests, each of which reads a book,
inserts a review through an ``AsyncSession``, commits, and reads it back (and, where the
arm isolates tests, checks that the review table holds only its own row). The suite runs
as a real ``python -m pytest`` subprocess under each *arm* (a ``conftest.py`` and options
giving the tests their ``session``):

* pytest-memdb on PostgreSQL, ``--memdb-postgresql=URL`` of one server the benchmark
  starts once (with pytest-memdb's own ``start_server()``), in ``copy``, ``rollback`` and
  ``session`` isolation; and ``--memdb-postgresql=start`` in ``copy`` (each run starts and
  removes its own throwaway server: its start-up shows in the empty run);
* pytest-postgresql's template clone, as its docs recommend: a process fixture with
  ``load=[...]`` (its ``DatabaseJanitor`` builds the template database once), and its
  function-scoped ``postgresql`` fixture (``CREATE DATABASE ... TEMPLATE`` before each
  test, ``DROP DATABASE`` after); an async engine on that database per test.
  ``postgresql_noproc`` pointed at the same server as the other PostgreSQL arms; and
  ``postgresql_proc`` (its own server, started by pg_ctl) when it can run (see
  ``--pg-python``: pg_ctl refuses root);
* a plain transaction-rollback fixture on the same server (SQLAlchemy's "joining a Session
  into an external transaction" recipe, what pytest-sqla does): the database built once
  per run, then per test one pooled connection, ``begin()``,
  ``AsyncSession(bind=conn, join_transaction_mode="create_savepoint")``, rollback;
* pytest-memdb on in-memory SQLite (``copy``, ``rollback``): the baseline.

Measured per arm and round: the wall time of the N-test run and of the same arm with an
empty suite (0 tests: interpreter, imports, plugins, collection and whatever the arm does
at start-up whether or not a test runs); **per test** = (wall - empty wall) / N, so it
includes the arm's one-off work done on first use (a template built, a first connection)
spread over N. Beside it the in-process figure: set-up + call + teardown from pytest's
reports, mean over the tests but the first, and the first test on its own (which pays the
template or the server). Median over rounds; the arms' order rotates from round to round.
Separately: pytest-memdb's ``start_server()`` in this process (initdb, start, first
connection), and its ``stop()``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memdb_bench.common import PYTEST_FLAGS, rotate
from memdb_bench.report import package_version

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_memdb.postgresql.server import PostgresServer, find_binaries, start_server

MODELS_PY = '''\
from sqlalchemy import ForeignKey, String, create_engine, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    isbn: Mapped[str] = mapped_column(String(13), unique=True)


class Review(Base):
    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"), index=True)
    rating: Mapped[int]
    body: Mapped[str] = mapped_column(String(500))


AUTHORS = [{"id": i, "name": f"author {i}"} for i in range(1, 101)]
BOOKS = [
    {"id": i, "author_id": 1 + i % 100, "title": f"book {i}", "isbn": f"978{i:010d}"}
    for i in range(1, 901)
]


def seed(conn):
    """1,000 rows: 100 authors, 900 books (memdb_load, and the other arms' builders)."""
    conn.execute(insert(Author), AUTHORS)
    conn.execute(insert(Book), BOOKS)


def url(host, port, user, dbname, driver="psycopg"):
    """SQLAlchemy's URL for a unix socket folder or a TCP host."""
    if str(host).startswith("/"):
        return f"postgresql+{driver}://{user}@/{dbname}?host={host}&port={port}"
    return f"postgresql+{driver}://{user}@{host}:{port}/{dbname}"


def load_database(host, port, user, dbname, password=None, **_):
    """pytest-postgresql's ``load`` callable: the template's tables and rows."""
    engine = create_engine(url(host, port, user, dbname))
    with engine.begin() as conn:
        Base.metadata.create_all(conn)
        seed(conn)
    engine.dispose()
'''

TEST_PY = """\
import os

import pytest
from sqlalchemy import func, select

from models import Book, Review

ISOLATED = os.environ["BENCH_ISOLATED"] == "1"
TESTS = int(os.environ["BENCH_TESTS"])


@pytest.mark.parametrize("i", range(TESTS))
async def test_review(session, i):
    book = await session.get(Book, 1 + i % 900)
    review = Review(book_id=book.id, rating=1 + i % 5, body=f"review {i}")
    session.add(review)
    await session.flush()
    review_id = review.id
    await session.commit()
    body = await session.scalar(select(Review.body).where(Review.id == review_id))
    assert body == f"review {i}"
    if ISOLATED:  # every test starts from the template
        assert await session.scalar(select(func.count()).select_from(Review)) == 1


if not TESTS:  # the empty suite: collect nothing (an empty parameter set is a skipped test)
    del test_review
"""

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

INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
memdb_metadata = models:Base
memdb_load = models:seed
"""

CONFTEST_MEMDB = """\
import pytest


@pytest.fixture
def session(memdb_session):
    return memdb_session
"""

CONFTEST_PGPG = """\
import os

import pytest
from pytest_postgresql import factories
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from models import load_database, url

if os.environ.get("BENCH_PG_HOST"):  # a server we started: postgresql_noproc
    postgresql_bench = factories.postgresql_noproc(
        host=os.environ["BENCH_PG_HOST"],
        port=int(os.environ["BENCH_PG_PORT"]),
        user="postgres",
        dbname="bench_pgpg",
        load=[load_database],
    )
else:  # pytest-postgresql starts its own server (pg_ctl)
    postgresql_bench = factories.postgresql_proc(
        executable=os.environ["BENCH_PG_CTL"], port=None, load=[load_database]
    )
postgresql = factories.postgresql("postgresql_bench")


@pytest.fixture
async def session(postgresql):
    info = postgresql.info
    engine = create_async_engine(url(info.host, info.port, info.user, info.dbname))
    async with async_sessionmaker(engine)() as session:
        yield session
    await engine.dispose()
"""

CONFTEST_ROLLBACK = """\
import asyncio
import os

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from models import Base, seed, url

HOST, PORT = os.environ["BENCH_PG_HOST"], int(os.environ["BENCH_PG_PORT"])
NAME = "bench_plain_rollback"


@pytest.fixture(scope="session")
def engine():
    admin = psycopg.connect(
        host=HOST, port=PORT, user="postgres", dbname="postgres", autocommit=True
    )
    admin.execute(f"DROP DATABASE IF EXISTS {NAME} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {NAME}")
    built = create_engine(url(HOST, PORT, "postgres", NAME))
    with built.begin() as conn:
        Base.metadata.create_all(conn)
        seed(conn)
    built.dispose()
    engine = create_async_engine(url(HOST, PORT, "postgres", NAME))
    yield engine
    asyncio.run(engine.dispose())
    admin.execute(f"DROP DATABASE {NAME} WITH (FORCE)")
    admin.close()


@pytest.fixture
async def session(engine):
    async with engine.connect() as conn:
        outer = await conn.begin()
        session = AsyncSession(bind=conn, join_transaction_mode="create_savepoint")
        yield session
        await session.close()
        await outer.rollback()
"""


@dataclass(frozen=True)
class Arm:
    key: str
    label: str
    conftest: str
    options: tuple[str, ...] = ()
    isolated: bool = True
    server: str = "shared"
    """``shared``: the benchmark's server; ``own``: the arm starts one; ``none``: SQLite."""
    as_user: bool = False
    """Run as an unprivileged user when we are root (pytest-postgresql's pg_ctl)."""


ARMS: tuple[Arm, ...] = (
    Arm(
        "memdb-pg-copy",
        "pytest-memdb on PostgreSQL, `copy`",
        CONFTEST_MEMDB,
        ("--memdb-isolation=copy", "--memdb-postgresql={url}"),
    ),
    Arm(
        "memdb-pg-rollback",
        "pytest-memdb on PostgreSQL, `rollback`",
        CONFTEST_MEMDB,
        ("--memdb-isolation=rollback", "--memdb-postgresql={url}"),
    ),
    Arm(
        "memdb-pg-session",
        "pytest-memdb on PostgreSQL, `session` (no isolation)",
        CONFTEST_MEMDB,
        ("--memdb-isolation=session", "--memdb-postgresql={url}"),
        isolated=False,
    ),
    Arm(
        "memdb-pg-start",
        "pytest-memdb, `--memdb-postgresql=start`, `copy`",
        CONFTEST_MEMDB,
        ("--memdb-isolation=copy", "--memdb-postgresql=start"),
        server="own",
    ),
    Arm("pgpg-noproc", "pytest-postgresql template clone (`postgresql_noproc`)", CONFTEST_PGPG),
    Arm(
        "pgpg-proc",
        "pytest-postgresql template clone (`postgresql_proc`, own server)",
        CONFTEST_PGPG,
        server="own",
        as_user=True,
    ),
    Arm(
        "plain-rollback",
        "plain rollback fixture (join_transaction_mode=create_savepoint)",
        CONFTEST_ROLLBACK,
    ),
    Arm(
        "memdb-sqlite-copy",
        "pytest-memdb on SQLite in memory, `copy`",
        CONFTEST_MEMDB,
        ("--memdb-isolation=copy",),
        server="none",
    ),
    Arm(
        "memdb-sqlite-rollback",
        "pytest-memdb on SQLite in memory, `rollback`",
        CONFTEST_MEMDB,
        ("--memdb-isolation=rollback",),
        server="none",
    ),
)


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)
    empty: list[float] = field(default_factory=list)
    per_test_wall: list[float] = field(default_factory=list)
    in_process: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)


@dataclass
class Runner:
    root: Path
    server: PostgresServer
    tests: int
    pg_ctl: str
    user_python: str | None
    user: str | None

    def folder(self, arm: Arm) -> Path:
        folder = self.root / arm.key
        if not folder.exists():
            folder.mkdir(parents=True)
            files = {
                "models.py": MODELS_PY,
                "test_suite.py": TEST_PY,
                "bench_timing.py": TIMING_PY,
                "pytest.ini": INI,
                "conftest.py": arm.conftest,
            }
            for name, text in files.items():
                (folder / name).write_text(text)
            if arm.as_user and self.user is not None:
                entry = pwd.getpwnam(self.user)
                for path in (folder, *folder.iterdir()):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
        return folder

    def runnable(self, arm: Arm) -> bool:
        return not arm.as_user or self.user is None or self.user_python is not None

    def run(self, arm: Arm, tests: int) -> tuple[float, list[float]]:
        """One ``python -m pytest`` run: (wall seconds, each test's seconds)."""
        folder = self.folder(arm)
        out = folder / "times.json"
        out.unlink(missing_ok=True)
        url = self.server.url("postgres", "psycopg")
        options = [option.format(url=url) for option in arm.options]
        python = sys.executable
        prefix: list[str] = []
        if arm.as_user and self.user is not None:
            assert self.user_python is not None
            prefix = ["runuser", "-u", self.user, "--"]
            python = self.user_python
        args = [*prefix, python, "-m", "pytest", *PYTEST_FLAGS, "-p", "bench_timing", *options]
        env = {
            **os.environ,
            "PYTHONPATH": ".",
            "BENCH_TESTS": str(tests),
            "BENCH_OUT": str(out),
            "BENCH_ISOLATED": "1" if arm.isolated else "0",
            "BENCH_PG_CTL": self.pg_ctl,
            "BENCH_PG_HOST": str(self.server.socket_dir) if arm.server == "shared" else "",
            "BENCH_PG_PORT": str(self.server.port),
        }
        start = time.perf_counter()
        done = subprocess.run(
            args, cwd=folder, env=env, capture_output=True, text=True, timeout=600
        )
        wall = time.perf_counter() - start
        if done.returncode not in (0, 5) or (tests and done.returncode):  # 5: no tests (empty)
            raise SystemExit(
                f"{arm.key}: pytest failed ({done.returncode})\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        times = json.loads(out.read_text())
        if len(times) != tests:
            raise SystemExit(f"{arm.key}: expected {tests} tests, got {len(times)}")
        return wall, times


def measure_start(rounds: int) -> tuple[list[float], list[float]]:
    """pytest-memdb's start_server() (initdb, start, first connection) and stop(), here."""
    import psycopg

    starts, stops = [], []
    for _ in range(rounds):
        began = time.perf_counter()
        server = start_server()
        with psycopg.connect(server.dsn()) as conn:
            conn.execute("SELECT 1")
        starts.append(time.perf_counter() - began)
        began = time.perf_counter()
        server.stop()
        stops.append(time.perf_counter() - began)
    return starts, stops


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def cell(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arms", default="", help="a comma-separated subset of the arms' keys")
    parser.add_argument(
        "--pg-python",
        default=None,
        help="as root: a Python the unprivileged user can run, with pytest-postgresql, "
        "pytest-asyncio, SQLAlchemy and psycopg (and pytest-memdb) installed, for the "
        "postgresql_proc arm (pg_ctl refuses root); without it that arm is left out",
    )
    parser.add_argument("--pg-user", default="postgres")
    options = parser.parse_args(argv)
    arms = [a for a in ARMS if not options.arms or a.key in options.arms.split(",")]
    user = options.pg_user if os.geteuid() == 0 else None
    binaries = find_binaries()
    load_start = load_average()
    began = time.perf_counter()
    print(f"load average at start: {load_start}", file=sys.stderr)
    start_times, stop_times = measure_start(options.rounds)
    root = Path(tempfile.mkdtemp(prefix="memdb-bench-pg-"))
    root.chmod(0o755)
    samples = {arm.key: Samples() for arm in arms}
    try:
        with start_server() as server:
            runner = Runner(
                root, server, options.tests, str(binaries.tool("pg_ctl")), options.pg_python, user
            )
            arms = [arm for arm in arms if runner.runnable(arm)]
            for arm in arms:  # warm-up: bytecode caches, imports, the page cache
                runner.run(arm, 2)
            for round_no in range(options.rounds):
                for arm in rotate(arms, round_no):
                    empty, _ = runner.run(arm, 0)
                    wall, times = runner.run(arm, options.tests)
                    got = samples[arm.key]
                    got.empty.append(empty)
                    got.wall.append(wall)
                    got.per_test_wall.append((wall - empty) / options.tests * 1e3)
                    got.in_process.append(statistics.fmean(times[1:]) * 1e3)
                    got.first.append(times[0] * 1e3)
                    print(
                        f"round {round_no + 1} {arm.key}: wall {wall:.2f} s, empty "
                        f"{empty:.2f} s, {got.per_test_wall[-1]:.2f} ms/test",
                        file=sys.stderr,
                    )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    median = statistics.median
    versions = ", ".join(
        f"{name} {package_version(name)}"
        for name in (
            "pytest",
            "pytest-asyncio",
            "SQLAlchemy",
            "psycopg",
            "aiosqlite",
            "pytest-postgresql",
            "pytest-memdb",
        )
    )
    pg_version = binaries.version().replace("postgres (PostgreSQL) ", "PostgreSQL ")
    print(f"### {options.tests} tests per run, a template of 1,000 rows\n")
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{pg_version}, SQLite {sqlite3.sqlite_version}, {versions}; median of "
        f"{options.rounds} rounds; load average {load_start} at start, {load_average()} "
        f"at the end ({time.perf_counter() - began:.0f} s).\n"
    )
    print(
        "| arm | per test (ms) | in-process per test (ms) | first test (ms) "
        f"| wall, {options.tests} tests (s) | wall, empty suite (s) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for arm in arms:
        got = samples[arm.key]
        print(
            f"| {arm.label} | {cell(median(got.per_test_wall))} | "
            f"{cell(median(got.in_process))} | {cell(median(got.first), 1)} | "
            f"{cell(median(got.wall))} | {cell(median(got.empty))} |"
        )
    print()
    print(
        f"Throwaway server (pytest-memdb's `start_server()`, in this process, median of "
        f"{options.rounds}): initdb + start + first connection "
        f"{median(start_times):.2f} s (min {min(start_times):.2f}), `stop()` "
        f"{median(stop_times):.2f} s."
    )
    if "memdb-pg-start" in samples and "memdb-pg-copy" in samples:
        extra = median(samples["memdb-pg-start"].empty) - median(samples["memdb-pg-copy"].empty)
        print(
            f"`--memdb-postgresql=start` adds {extra:.2f} s to the empty run (the "
            "`copy` arm's on the shared server subtracted)."
        )
    if not any(arm.key == "pgpg-proc" for arm in arms) and (
        not options.arms or "pgpg-proc" in options.arms
    ):
        print("The `postgresql_proc` arm did not run: as root it needs `--pg-python`.")


if __name__ == "__main__":
    main()
