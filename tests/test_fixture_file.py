"""The user's fixture file is only ever read: byte-identical after runs that write.

Every inner run here writes to its database (sync and async sessions, commits)
in each isolation mode; afterwards the fixture file, its ``-wal`` file and the
folder around it must be exactly as they were.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import pytest_memdb.core.registry  # noqa: F401  (see INNER_ARGS)
from tests.helpers import crash_mid_transaction, digest, make_hot_journal, make_sqlite, write_ini

# pytester restores sys.modules after each in-process run, so a module first
# imported inside an inner run is imported again by the next one. SQLAlchemy is
# imported once above instead, and hypothesis's plugin (it imports hypothesis at
# the end of every run) is switched off: that keeps each inner run well under a second.
INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")

ISOLATIONS = ["copy", "rollback", "session"]

# Each test checks the rows it starts with, writes through a sync and an async
# session, commits, and checks again. In ``session`` isolation the writes of the
# earlier tests persist; in ``copy`` and ``rollback`` every test starts afresh.
WRITING_TESTS = """
from pathlib import Path

from sqlalchemy import text

USERS = {users}
SOURCE = Path({source!r})
PERSISTS = {persists}


def count(session):
    return session.execute(text("SELECT count(*) FROM user")).scalar_one()


def test_1_sync_write(memdb, memdb_sync_session):
    assert memdb.source == SOURCE
    assert count(memdb_sync_session) == USERS
    memdb_sync_session.execute(text("INSERT INTO user (name) VALUES ('written-1')"))
    memdb_sync_session.execute(text("UPDATE user SET email = 'changed' WHERE id = 1"))
    memdb_sync_session.commit()
    assert count(memdb_sync_session) == USERS + 1


async def test_2_async_write(memdb_session):
    before = (await memdb_session.execute(text("SELECT count(*) FROM user"))).scalar_one()
    assert before == (USERS + 1 if PERSISTS else USERS)
    await memdb_session.execute(text("DELETE FROM user WHERE id = 2"))
    await memdb_session.execute(text("INSERT INTO user (name) VALUES ('written-2')"))
    await memdb_session.commit()
    after = (await memdb_session.execute(text("SELECT count(*) FROM user"))).scalar_one()
    assert after == before


def test_3_sees_own_file(memdb_sync_session):
    expected = USERS + 1 if PERSISTS else USERS
    assert count(memdb_sync_session) == expected
    emails = memdb_sync_session.execute(text("SELECT email FROM user WHERE id = 1")).scalar()
    assert (emails == "changed") is PERSISTS
"""


def writing_tests(source: Path, *, users: int, isolation: str) -> str:
    return WRITING_TESTS.format(
        users=users, source=str(source.resolve()), persists=isolation == "session"
    )


def tree(root: Path) -> list[str]:
    """Every file and folder under ``root`` (bytecode caches aside), as relative paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".pytest_cache")]
        for name in dirnames + filenames:
            found.append(str(Path(dirpath, name).relative_to(root)))
    return sorted(found)


# --- WAL-mode file with rows only in its -wal file ----------------------------------


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_wal_rows_are_copied_and_wal_files_stay_byte_identical(
    pytester: pytest.Pytester, isolation: str
) -> None:
    db = make_sqlite(pytester.path / "data" / "app.sqlite", wal_rows=5)
    wal = db.with_name("app.sqlite-wal")
    assert wal.stat().st_size > 0, "the helper must leave rows in the -wal file"
    before = {db: digest(db), wal: digest(wal)}
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    pytester.makepyfile(test_wal=writing_tests(db, users=8, isolation=isolation))

    result = pytester.runpytest(*INNER_ARGS, "-v")

    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_1_sync_write PASSED*", "*test_3_sees_own_file PASSED*"])
    assert {path: digest(path) for path in before} == before


def test_wal_run_leaves_no_shm_or_other_file_next_to_the_fixture(
    pytester: pytest.Pytester,
) -> None:
    """Opening a WAL file read-only must not leave a ``-shm`` (or anything) in the user's folder."""
    db = make_sqlite(pytester.path / "data" / "app.sqlite", wal_rows=5)
    listing = sorted(os.listdir(db.parent))
    assert listing == ["app.sqlite", "app.sqlite-wal"]
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(
        """
        from sqlalchemy import text

        def test_count(memdb_sync_session):
            assert memdb_sync_session.execute(text("SELECT count(*) FROM user")).scalar() == 8
        """
    )

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=1)
    assert sorted(os.listdir(db.parent)) == listing


# --- read-only (chmod 444) file -----------------------------------------------------


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_read_only_file_is_copied_and_unchanged(pytester: pytest.Pytester, isolation: str) -> None:
    db = make_sqlite(pytester.path / "data" / "app.sqlite", users=6)
    db.chmod(0o444)
    before = digest(db)
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    pytester.makepyfile(test_ro=writing_tests(db, users=6, isolation=isolation))
    listing = tree(pytester.path)

    # We run as root, where 444 does not stop a write: the digest is the proof.
    result = pytester.runpytest(*INNER_ARGS, "-v")

    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_2_async_write PASSED*"])
    assert digest(db) == before
    assert stat.S_IMODE(db.stat().st_mode) == 0o444
    assert tree(pytester.path) == listing


# --- awkward paths ------------------------------------------------------------------

AWKWARD = Path("data") / "run #1 ?x %20 données" / "app.sqlite"


def _awkward_file(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, form: str
) -> tuple[Path, str]:
    """Build the file at an awkward path; return it and how the user spells it."""
    if form == "home":
        home = pytester.path / "home dir #2"
        monkeypatch.setenv("HOME", str(home))
        return make_sqlite(home / AWKWARD, users=4), "~/" + AWKWARD.as_posix()
    db = make_sqlite(pytester.path / AWKWARD, users=4)
    return db, str(db) if form == "absolute" else AWKWARD.as_posix()


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("form", ["relative", "absolute", "home"])
@pytest.mark.parametrize("origin", ["ini", "cli", "marker"])
def test_awkward_path_is_read_and_nothing_is_created_beside_it(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    origin: str,
    form: str,
    isolation: str,
) -> None:
    db, raw = _awkward_file(pytester, monkeypatch, form)
    before = digest(db)
    ini = {"memdb_file": raw} if origin == "ini" else {}
    args = ["--memdb-file", raw] if origin == "cli" else []
    write_ini(pytester, memdb_isolation=isolation, **ini)
    body = writing_tests(db, users=4, isolation=isolation)
    if origin == "marker":
        body = f"import pytest\npytestmark = pytest.mark.memdb(file={raw!r})\n{body}"
    pytester.makepyfile(test_awkward=body)
    listing = tree(pytester.path)

    result = pytester.runpytest(*INNER_ARGS, "-v", *args)

    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_3_sees_own_file PASSED*"])
    if origin != "marker":
        # The header shows the expanded path: no ``~``, nothing percent-decoded.
        assert f"memdb: file={db} (" in result.stdout.str()
    assert digest(db) == before
    # An unescaped URI would have opened (and created) ``data/run `` instead.
    assert tree(pytester.path) == listing
    assert sorted(os.listdir(db.parent)) == ["app.sqlite"]


# --- a hot journal: a writer crashed mid-transaction -------------------------------------

HOT_JOURNAL_TESTS = """
from sqlalchemy import text


def test_sees_the_committed_state(memdb_sync_session):
    rows = memdb_sync_session.execute(text("SELECT id, name FROM user ORDER BY id")).all()
    assert [tuple(row) for row in rows[:3]] == [(1, "ada"), (2, "brian"), (3, "grace")]
    assert len(rows) == 3000
    assert not [row for row in rows if row.name == "torn"]  # the crashed write's
    memdb_sync_session.execute(text("INSERT INTO user (name) VALUES ('written')"))
    memdb_sync_session.commit()


async def test_again(memdb_session):
    count = (await memdb_session.execute(text("SELECT count(*) FROM user"))).scalar_one()
    assert count == {count}
"""


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_hot_journal_is_rolled_back_in_a_private_copy_and_both_files_stay_as_they_were(
    pytester: pytest.Pytester, isolation: str
) -> None:
    """A crashed writer's hot ``-journal``: the committed state is loaded (SQLite rolls the
    journal back in a private copy), with one warning that names both files; the user's
    file and journal are byte-identical afterwards, and nothing appears beside them."""
    db = pytester.path / "data" / "app.sqlite"
    journal = make_hot_journal(db)
    before = {db: digest(db), journal: digest(journal)}
    listing = sorted(os.listdir(db.parent))
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    count = 3001 if isolation == "session" else 3000
    pytester.makepyfile(test_hot=HOT_JOURNAL_TESTS.format(count=count))

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            f"*MemdbWarning: pytest-memdb: the fixture file {str(db)!r} (from memdb_file in "
            f"pytest.ini) has a hot journal beside it ({str(journal)!r}): *committed state was "
            "loaded instead: SQLite rolled the journal back in a private copy*unchanged*",
        ]
    )
    assert {path: digest(path) for path in before} == before
    assert sorted(os.listdir(db.parent)) == listing


def test_hot_journal_beside_a_path_too_long_for_sqlite_is_rolled_back_too(
    tmp_path: Path,
) -> None:
    """Such a file is copied into a private folder before SQLite opens it: its journal must
    come along, or the copy holds the crashed writer's half-written pages."""
    from pytest_memdb import MemdbWarning
    from pytest_memdb.sqlite.loading import SQLITE_PATH_LIMIT, load_file
    from pytest_memdb.sqlite.memory import unique_name

    deep = tmp_path
    while len(os.fsencode(deep)) <= SQLITE_PATH_LIMIT:
        deep = deep / ("d" * 100)
    deep.mkdir(parents=True)
    made = tmp_path / "app.sqlite"
    made_journal = make_hot_journal(made)  # SQLite cannot write there either: made here
    db, journal = deep / "app.sqlite", deep / "app.sqlite-journal"
    made.replace(db)
    made_journal.replace(journal)
    before = {db: digest(db), journal: digest(journal)}

    with pytest.warns(MemdbWarning, match="hot journal"):
        database = load_file(db, unique_name("hot"), origin="a test")
    try:
        rows = database.anchor.execute("SELECT count(*), sum(name = 'torn') FROM user").fetchall()
    finally:
        database.close()

    assert rows == [(3000, 0)]  # without its journal, the copy had 2882 'torn' rows
    assert {path: digest(path) for path in before} == before
    assert sorted(os.listdir(deep)) == ["app.sqlite", "app.sqlite-journal"]


def test_wal_file_of_a_crashed_writer_loads_its_committed_rows_and_stays_as_it_was(
    pytester: pytest.Pytester,
) -> None:
    """A writer in WAL mode that crashed mid-transaction leaves its ``-wal`` (committed
    frames, then the unfinished write's) and its ``-shm``: the committed rows are loaded,
    the unfinished write is not, and the three files are byte-identical afterwards. (Read
    through SQLite with ``readonly_shm=1``, as the module docstring of ``loading`` says;
    nothing to roll back, so no warning.)"""
    db = pytester.path / "data" / "app.sqlite"
    crash_mid_transaction(db, wal=True)
    companions = [db.with_name("app.sqlite-wal"), db.with_name("app.sqlite-shm")]
    before = {path: digest(path) for path in (db, *companions)}
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(
        """
        from sqlalchemy import text

        def test_committed_rows_only(memdb_sync_session):
            row = memdb_sync_session.execute(
                text("SELECT count(*), sum(name = 'torn'), sum(name = 'wal') FROM user")
            ).one()
            assert tuple(row) == (3050, 0, 50)
        """
    )

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=1, warnings=0)
    assert {path: digest(path) for path in before} == before
    assert sorted(os.listdir(db.parent)) == ["app.sqlite", "app.sqlite-shm", "app.sqlite-wal"]
