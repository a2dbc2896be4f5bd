"""Real SQLite fixture files and pytester projects for the plugin's own tests."""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_memdb.core.config import MemdbConfig, Target
    from pytest_memdb.core.registry import MemdbRegistry
    from pytest_memdb.sqlite.template_database import Template

USERS = [("ada", "ada@example.com"), ("brian", "brian@example.com"), ("grace", "grace@example.com")]

INNER_ADDOPTS = "-p no:randomly -p no:rerunfailures -p no:hypothesispytest -p no:faker"
"""``PYTEST_ADDOPTS`` of every inner run (``tests/conftest.py``'s ``pytester``): the plugins
installed for the project's own tests that an inner run does not need, off unless a test
turns one on (``-p randomly``, ``-p hypothesispytest``). Most inner suites check what test
2 sees after test 1, which pytest-randomly would reorder; rerunfailures starts a server
thread that the thread checks would count. Hypothesis's and Faker's plugins import their
libraries at start-up: 1.8 s of the 3.0 s a one-test inner ``runpytest_subprocess`` took
(1.2 s without them, measured here); an inner project that uses Hypothesis imports it
itself, and one whose test of the plugin wants Hypothesis's own plugin turns it on."""


def make_sqlite(path: Path, *, users: int = len(USERS), wal_rows: int = 0) -> Path:
    """Write a SQLite file with a ``user`` table of ``users`` rows.

    With ``wal_rows``, the file is in WAL mode and that many extra rows exist
    only in its ``-wal`` file (not yet checkpointed into the main file).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    work = path.with_name(path.name + ".building")
    conn = sqlite3.connect(work)
    conn.execute("CREATE TABLE user (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT)")
    conn.execute("CREATE INDEX ix_user_email ON user (email)")
    rows = [USERS[i % len(USERS)] for i in range(users)]
    conn.executemany("INSERT INTO user (name, email) VALUES (?, ?)", rows)
    conn.commit()
    if not wal_rows:
        conn.close()
        work.replace(path)
        return path
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.executemany(
        "INSERT INTO user (name, email) VALUES (?, ?)",
        [(f"wal{i}", f"wal{i}@example.com") for i in range(wal_rows)],
    )
    conn.commit()
    # Copy while the writer is open: closing it would checkpoint the WAL away.
    shutil.copyfile(work, path)
    shutil.copyfile(f"{work}-wal", f"{path}-wal")
    conn.close()
    for leftover in (work, Path(f"{work}-wal"), Path(f"{work}-shm")):
        leftover.unlink(missing_ok=True)
    return path


def digest(path: Path) -> str:
    """The file's SHA-256: the fixture file must be byte-identical after any run."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_ini(pytester: pytest.Pytester, **options: str) -> None:
    """A pytest.ini for an inner run; asyncio in auto mode unless told otherwise."""
    options.setdefault("asyncio_mode", "auto")
    options.setdefault("asyncio_default_fixture_loop_scope", "function")
    body = "\n".join(f"{key} = {value}" for key, value in options.items())
    pytester.makefile(".ini", pytest=f"[pytest]\n{body}\n")


_CRASHING_WRITER = """
import os, sqlite3, sys

conn = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "wal":
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO user (name, email) VALUES ('wal', NULL)", [()] * 50)
    conn.execute("COMMIT")  # 50 committed rows that exist only in the -wal file
else:
    conn.execute("PRAGMA journal_mode=DELETE")
conn.execute("PRAGMA cache_size=1")  # spill: changed pages leave the cache mid-transaction
conn.execute("BEGIN")
conn.execute("UPDATE user SET name = 'torn'")
os._exit(0)  # a crash: no COMMIT, no ROLLBACK; the -journal (or -wal and -shm) stays
"""


def crash_mid_transaction(path: Path, *, wal: bool = False, users: int = 3000) -> None:
    """A SQLite file with ``users`` committed rows whose writer crashed (``os._exit``) in the
    middle of renaming every user 'torn'.

    In rollback-journal mode most of that unfinished write is in the file, and its hot
    ``-journal`` (the pages as committed) lies beside it. With ``wal``, 50 more committed
    rows and the unfinished write's frames are in the ``-wal``, and the ``-shm`` stays.
    """
    import subprocess
    import sys

    make_sqlite(path, users=users)
    mode = "wal" if wal else "journal"
    subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(path), mode], check=True, timeout=60
    )
    left = Path(f"{path}-wal") if wal else Path(f"{path}-journal")
    assert left.stat().st_size > 0, "the crashed writer must leave its journal"


def make_hot_journal(path: Path) -> Path:
    """:func:`crash_mid_transaction` in rollback-journal mode; the hot journal's path."""
    crash_mid_transaction(path)
    return Path(f"{path}-journal")


def with_version_location(ini_text: str, location: str) -> str:
    """An ``alembic init`` ini with ``version_locations`` set. Alembic 1.13's own template
    writes ``version_path_separator = os  # Use os.pathsep...``, which 1.13 itself rejects
    once ``version_locations`` is read (it keeps the comment as part of the value; newer
    releases strip it): the separator is written without its comment."""
    text = re.sub(r"(?m)^version_path_separator = os\b.*$", "version_path_separator = os", ini_text)
    return text.replace("[alembic]\n", f"[alembic]\nversion_locations = {location}\n")


APP_USER_MODELS = """
    from sqlalchemy import String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


    class Base(DeclarativeBase):
        pass


    class User(Base):
        __tablename__ = "app_user"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))
"""
"""A ``models.py`` for inner projects on either backend (the PostgreSQL switch's tests)."""


def sqlite_registry(settings: MemdbConfig, worker: str = "main") -> MemdbRegistry:
    """A registry on the SQLite backend, as the plugin makes one (no cache)."""
    from pytest_memdb.core.registry import MemdbRegistry
    from pytest_memdb.sqlite.backend import SqliteBackend

    return MemdbRegistry(settings, lambda: SqliteBackend(settings, worker))


def sqlite_template(registry: MemdbRegistry, target: Target) -> Template:
    """``target``'s template in ``registry``, which must be SQLite's (its database is read)."""
    from pytest_memdb.sqlite.template_database import Template

    template = registry.template(target)
    assert isinstance(template, Template)
    return template


USERS_MODELS = """
    from sqlalchemy import Integer, String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


    class Base(DeclarativeBase):
        pass


    class User(Base):
        __tablename__ = "app_user"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        name: Mapped[str] = mapped_column(String)
        email: Mapped[str | None] = mapped_column(String, nullable=True)
"""
"""A ``models.py`` whose template is the same on both backends (:func:`write_seeded_ini`)."""

USERS_SEED = """INSERT INTO app_user (name, email) VALUES
    ('ada', 'ada@example.com'), ('brian', 'brian@example.com'), ('grace', 'grace@example.com');
"""
"""The template's three users; their ids from the table's own sequence, so that rows added
later follow them on PostgreSQL too."""

SLOW_ON_POSTGRESQL = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]
"""``@pytest.mark.parametrize("switch", SLOW_ON_POSTGRESQL, indirect=True)``: both
backends, the PostgreSQL run a slow test (an inner run there makes a clone per layer,
checkpoint and test: over 5 s on 2 cores)."""


def write_seeded_ini(pytester: pytest.Pytester, switch: Sequence[str] = (), **options: str) -> None:
    """``seed.sql`` (:data:`USERS_SEED`) and a pytest.ini whose template is
    :data:`USERS_MODELS`' tables (in ``models.py``, written by the caller) and the seed, on
    the backend ``switch`` says (the ``switch`` fixture: nothing for SQLite, else
    ``--memdb-postgresql=URL``, given as the ini option)."""
    (pytester.path / "seed.sql").write_text(USERS_SEED)
    for arg in switch:
        name, _, value = arg.partition("=")
        options[name.removeprefix("--").replace("-", "_")] = value
    options.setdefault("memdb_metadata", "models:Base")
    options.setdefault("memdb_load", "seed.sql")
    options.setdefault("pythonpath", ".")
    write_ini(pytester, **options)
