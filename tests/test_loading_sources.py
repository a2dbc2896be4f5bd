"""Where a fixture file really is, what it is, and reading it while another process writes it.

Real files and real SQLite throughout: a ``memdb_file`` that is a symlink (a chain, a
symlinked folder) to a WAL-mode file keeps the rows still in its ``-wal``; a FIFO, a
character device or a socket is refused before it is opened (a FIFO would hang the
session); and a WAL-mode file committed to in a loop by another process is always
loaded as one committed state.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_memdb.errors import FixtureFileError
from pytest_memdb.sqlite.loading import load_file
from pytest_memdb.sqlite.memory import unique_name
from tests.helpers import digest, make_sqlite, write_ini

ORIGIN = "--memdb-file"
USERS, WAL_ROWS = 3, 5
HANG_GUARD = 60.0
"""Seconds a load may block before the test calls it hung (a bound, not a timing check)."""


def count_users(path: Path) -> int:
    database = load_file(path, unique_name("src"), origin=ORIGIN)
    try:
        return int(database.anchor.execute("SELECT count(*) FROM user").fetchone()[0])
    finally:
        database.close()


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# --- symlinks: the -wal is beside the real file ------------------------------------------


def direct_link(root: Path, real: Path) -> Path:
    link = root / "links" / "app.sqlite"
    link.parent.mkdir()
    link.symlink_to(real)
    return link


def relative_chain(root: Path, real: Path) -> Path:
    (root / "links").mkdir()
    first = root / "links" / "first #1.sqlite"
    first.symlink_to(os.path.relpath(real, first.parent))
    second = root / "second?.sqlite"
    second.symlink_to(os.path.relpath(first, root))
    third = root / "links" / "third %20.sqlite"
    third.symlink_to(second)
    return third


def through_linked_folder(root: Path, real: Path) -> Path:
    # shared -> store/v1 (a symlinked folder); links/app.sqlite -> ../shared/app.sqlite
    (root / "shared").symlink_to(real.parent, target_is_directory=True)
    link = root / "links" / "app.sqlite"
    link.parent.mkdir()
    link.symlink_to(Path("..", "shared", real.name))
    return link


@pytest.mark.parametrize("make_link", [direct_link, relative_chain, through_linked_folder])
def test_symlink_to_a_wal_file_keeps_the_wal_rows(
    tmp_path: Path, make_link: Callable[[Path, Path], Path]
) -> None:
    real = make_sqlite(tmp_path / "store" / "v1" / "app.sqlite", users=USERS, wal_rows=WAL_ROWS)
    wal = Path(f"{real}-wal")
    link = make_link(tmp_path, real)
    before = {real: digest(real), wal: digest(wal)}
    folders = {folder: listing(folder) for folder in (real.parent, link.parent, tmp_path)}

    assert count_users(link) == USERS + WAL_ROWS

    assert {path: digest(path) for path in before} == before
    assert {folder: listing(folder) for folder in folders} == folders  # no -shm anywhere


# --- not a regular file: refused before it is opened -------------------------------------


def fifo(root: Path) -> tuple[Path, str]:
    path = root / "app.fifo"
    os.mkfifo(path)
    return path, "it is a FIFO (named pipe), not a SQLite file."


def linked_fifo(root: Path) -> tuple[Path, str]:
    target, _ = fifo(root)
    link = root / "app.sqlite"
    link.symlink_to(target.name)
    return link, f"it is a FIFO (named pipe), not a SQLite file (it links to {str(target)!r})."


def dev_null(root: Path) -> tuple[Path, str]:
    return Path("/dev/null"), "it is a character device, not a SQLite file."


def dev_zero(root: Path) -> tuple[Path, str]:
    return Path("/dev/zero"), "it is a character device, not a SQLite file."


def unix_socket(root: Path) -> tuple[Path, str]:
    # AF_UNIX paths are short (108 bytes): a fresh short folder, not pytest's tmp_path.
    folder = Path(tempfile.mkdtemp(prefix="memdb-"))
    path = folder / "app.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    SOCKETS.append((server, folder))
    return path, "it is a socket, not a SQLite file."


SOCKETS: list[tuple[socket.socket, Path]] = []


@pytest.fixture
def special_files() -> Iterator[None]:
    yield
    while SOCKETS:
        server, folder = SOCKETS.pop()
        server.close()
        for name in os.listdir(folder):
            os.unlink(folder / name)
        folder.rmdir()


def release_fifo_readers(path: Path) -> None:
    """Open a FIFO for writing and close it: a reader stuck in ``open`` then reads EOF."""
    with contextlib.suppress(OSError):  # ENXIO: no reader is waiting
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.usefixtures("special_files")
@pytest.mark.parametrize("make", [fifo, linked_fifo, dev_null, dev_zero, unix_socket])
def test_fifos_devices_and_sockets_are_refused_without_opening_them(
    tmp_path: Path, make: Callable[[Path], tuple[Path, str]]
) -> None:
    path, problem = make(tmp_path)
    outcome: list[BaseException | object] = []

    def attempt() -> None:
        try:
            outcome.append(load_file(path, unique_name("special"), origin=ORIGIN))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(HANG_GUARD)
    hung = worker.is_alive()
    if hung:
        release_fifo_readers(Path(os.path.realpath(path)))
        worker.join(HANG_GUARD)
    assert not hung, f"load_file({str(path)!r}) blocked (opened it without checking its kind)"
    [result] = outcome
    assert isinstance(result, FixtureFileError), result
    text, _, _ = str(result).partition("\nSee ")
    assert text == f"pytest-memdb: the fixture file {str(path)!r} (from {ORIGIN}): {problem}"


def test_a_fifo_memdb_file_is_an_error_in_a_real_session(pytester: pytest.Pytester) -> None:
    os.mkfifo(pytester.path / "app.fifo")
    write_ini(pytester, memdb_file="app.fifo")
    pytester.makepyfile(
        """
        def test_uses_db(memdb_sync_session):
            pass

        def test_plain():
            assert 1 + 1 == 2
        """
    )

    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    finally:
        release_fifo_readers(pytester.path / "app.fifo")

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_uses_db*",
            f"pytest-memdb: the fixture file {str(pytester.path / 'app.fifo')!r} (from "
            "memdb_file in pytest.ini): it is a FIFO (named pipe), not a SQLite file.",
        ]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*Traceback*")


# --- a WAL-mode file written by another process while it is loaded ----------------------

# Every commit adds one row to ``a`` and one to ``b`` and counts them in ``state``, so a
# copy mixing two commits (or a commit and a checkpoint) shows unequal numbers. The pages
# are padded so that the tables span many pages; checkpoints of every kind (passive,
# restart, truncate: the WAL is reset and written again from its start) run between, and
# now and then the writer closes (its -wal and -shm go) and opens the file again.
WRITER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE a (n INTEGER PRIMARY KEY, pad BLOB)")
conn.execute("CREATE TABLE b (n INTEGER PRIMARY KEY, pad BLOB)")
conn.execute("CREATE TABLE state (n INTEGER NOT NULL)")
conn.execute("INSERT INTO state VALUES (0)")
print("ready", flush=True)
deadline = time.monotonic() + 300  # never outlive a test run that lost track of it
i = 0
while time.monotonic() < deadline:
    i += 1
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO a (pad) VALUES (randomblob(300))")
    conn.execute("INSERT INTO b (pad) VALUES (randomblob(300))")
    conn.execute("UPDATE state SET n = n + 1")
    conn.execute("COMMIT")
    if i % 40 == 0:
        kind = ("PASSIVE", "RESTART", "TRUNCATE")[i // 40 % 3]
        conn.execute(f"PRAGMA wal_checkpoint({kind})")
    if i % 100 == 0:
        # The last connection closing checkpoints and deletes the -wal and -shm: for a
        # moment the file is a WAL-mode file that nobody has open, then it is opened again.
        conn.close()
        conn = sqlite3.connect(sys.argv[1], isolation_level=None)
"""


@pytest.mark.slow
def test_a_file_being_written_loads_as_one_committed_state(tmp_path: Path) -> None:
    db = tmp_path / "live" / "app.sqlite"
    db.parent.mkdir()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True
    )
    seen: set[int] = set()
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        for _ in range(300):
            database = load_file(db, unique_name("live"), origin=ORIGIN)
            try:
                a, b, n = database.anchor.execute(
                    "SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b), "
                    "(SELECT n FROM state)"
                ).fetchone()
                assert [row[0] for row in database.anchor.execute("PRAGMA integrity_check")] == [
                    "ok"
                ]
            finally:
                database.close()
            assert a == b == n, "a copy mixed two commits"
            seen.add(n)
        assert writer.poll() is None, "the writer stopped early"
    finally:
        writer.kill()
        writer.wait()
    assert len(seen) > 1, "the writer committed nothing while the file was loaded"
    assert set(listing(db.parent)) <= {"app.sqlite", "app.sqlite-wal", "app.sqlite-shm"}
    # Once nobody writes, the file is read as it is and stays byte-identical.
    final = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        expected = final.execute("SELECT n FROM state").fetchone()[0]
    finally:
        final.close()
    files = [path for path in db.parent.iterdir() if not path.name.endswith("-shm")]
    before = {path: digest(path) for path in files}
    database = load_file(db, unique_name("still"), origin=ORIGIN)
    try:
        assert database.anchor.execute("SELECT n FROM state").fetchone()[0] == expected
    finally:
        database.close()
    assert {path: digest(path) for path in files} == before
