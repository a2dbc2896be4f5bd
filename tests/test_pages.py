"""Page restores (``sqlite/pages.py``): every restored copy equals the template, page for page.

Real SQLite databases through the real ``memdb-pages`` VFS; no pytest plugin involved
except in the last tests, which run real pytest sessions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_memdb.sqlite import pages
from pytest_memdb.sqlite.memory import MemoryDatabase, unique_name


def test_the_page_vfs_is_available_here() -> None:
    """CI's interpreter must have it: the other tests here would prove nothing otherwise."""
    assert pages.page_vfs() is not None, pages.unavailable_reason


HEADER_FIELDS_MOVED = ((24, 28), (40, 44), (92, 96))
"""Change counter, schema cookie, version-valid-for: a restore moves them forward."""


def _template(rows: int = 300) -> MemoryDatabase:
    template = MemoryDatabase(unique_name("pages", "template"), shared=False)
    raw = template.anchor
    raw.execute("CREATE TABLE user(id INTEGER PRIMARY KEY, name TEXT, bio TEXT)")
    raw.execute("CREATE INDEX user_name ON user(name)")
    raw.executemany(
        "INSERT INTO user(name, bio) VALUES (?, ?)",
        [(f"user{i}", "x" * (i % 400)) for i in range(rows)],
    )
    raw.execute("PRAGMA user_version = 7")
    raw.commit()
    return template


def _working(template: MemoryDatabase) -> MemoryDatabase:
    working = template.copy(unique_name("pages", "working"))
    working.prepare_for_restores(pages_from=template)
    assert working.restores_pages
    return working


def _pages_equal(template: MemoryDatabase, working: MemoryDatabase) -> None:
    expected = bytearray(template.anchor.serialize())
    actual = bytearray(working.anchor.serialize())
    assert len(actual) == len(expected)
    for start, end in HEADER_FIELDS_MOVED:
        expected[start:end] = actual[start:end] = b"\0" * (end - start)
    size = int.from_bytes(expected[16:18], "big")
    for offset in range(0, len(expected), size):
        assert actual[offset : offset + size] == expected[offset : offset + size], offset


def _view(connection: sqlite3.Connection) -> object:
    schema = connection.execute("SELECT type, name, sql FROM sqlite_master ORDER BY 2").fetchall()
    tables = [row[1] for row in schema if row[0] == "table"]
    content = {t: connection.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables}
    version = connection.execute("PRAGMA user_version").fetchone()
    return schema, content, version


@pytest.fixture
def pair() -> Iterator[tuple[MemoryDatabase, MemoryDatabase]]:
    template = _template()
    working = _working(template)
    yield template, working
    working.close()
    template.close()


def _connect(database: MemoryDatabase) -> sqlite3.Connection:
    return sqlite3.connect(database.sqlite_uri, uri=True, isolation_level=None)


WRITES = st.sampled_from(
    [
        "UPDATE user SET name = name || 'x' WHERE id % 7 = 0",
        "UPDATE user SET bio = bio || bio WHERE id < 40",
        "DELETE FROM user WHERE id % 3 = 0",
        "DELETE FROM user",
        "INSERT INTO user(name, bio) SELECT name, bio FROM user",
        "INSERT INTO user(name, bio) VALUES ('blob', zeroblob(200000))",
        "CREATE TABLE IF NOT EXISTS other(x)",
        "CREATE TABLE IF NOT EXISTS extra(x); INSERT INTO extra VALUES (1)",
        "DROP INDEX IF EXISTS user_name",
        "PRAGMA user_version = 99",
        "VACUUM",
        "PRAGMA page_size = 8192; VACUUM",
        "PRAGMA auto_vacuum = FULL; VACUUM",
        "BEGIN; UPDATE user SET name = 'gone'; ROLLBACK",
    ]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tests=st.lists(st.lists(WRITES, min_size=0, max_size=4), min_size=1, max_size=5))
def test_every_restore_gives_back_the_template_page_for_page(tests: list[list[str]]) -> None:
    template = _template()
    working = _working(template)
    kept = _connect(working)  # a pooled connection: lives across tests, caches pages
    expected = _view(template.anchor)
    try:
        for statements in tests:
            writer = _connect(working)
            for statement in statements:
                writer.executescript(statement)
            _view(kept)  # reads (and caches) what this test left
            writer.close()
            assert working.restore_from(template) is True
            _pages_equal(template, working)
            assert _view(kept) == expected
            fresh = _connect(working)
            assert _view(fresh) == expected
            fresh.close()
    finally:
        kept.close()
        working.close()
        template.close()


def test_a_connection_never_keeps_pages_of_an_earlier_test(
    pair: tuple[MemoryDatabase, ...],
) -> None:
    """A connection that cached test 1's write reads the template's row after the restore.

    Had the restore left the change counter where test 1 put it, that connection's page
    cache would still look current and it would read ``first`` (checked: this test fails
    on that variant). Putting the template's counter back instead is not caught here:
    SQLite re-reads memdb pages for such a reader anyway; the schema test below and the
    property test are what fail on that variant."""
    template, working = pair
    reader, writer = _connect(working), _connect(working)
    writer.execute("UPDATE user SET name = 'first' WHERE id = 1")
    assert reader.execute("SELECT name FROM user WHERE id = 1").fetchone() == ("first",)
    assert working.restore_from(template)
    assert reader.execute("SELECT name FROM user WHERE id = 1").fetchone() == ("user0",)
    writer.execute("UPDATE user SET name = 'second' WHERE id = 1")
    assert reader.execute("SELECT name FROM user WHERE id = 1").fetchone() == ("second",)
    reader.close()
    writer.close()


def test_a_connection_never_keeps_the_schema_of_an_earlier_test(
    pair: tuple[MemoryDatabase, ...],
) -> None:
    template, working = pair
    reader, writer = _connect(working), _connect(working)
    writer.execute("CREATE TABLE first(x)")
    reader.execute("SELECT * FROM first").fetchall()
    assert working.restore_from(template)
    writer.execute("CREATE TABLE second(y)")
    with pytest.raises(sqlite3.OperationalError, match="no such table: first"):
        reader.execute("SELECT * FROM first").fetchall()
    reader.close()
    writer.close()


def test_the_schema_cookie_stays_when_the_schema_did(pair: tuple[MemoryDatabase, ...]) -> None:
    """No DDL, no schema reread: the cookie a connection cached is still the file's."""
    template, working = pair
    writer = _connect(working)
    cookie = writer.execute("PRAGMA schema_version").fetchone()
    writer.execute("UPDATE user SET name = 'x' WHERE id = 2")
    assert working.restore_from(template)
    assert writer.execute("PRAGMA schema_version").fetchone() == cookie
    writer.execute("CREATE TABLE extra(x)")
    assert working.restore_from(template)
    assert writer.execute("PRAGMA schema_version").fetchone() > cookie
    writer.close()


def test_a_restore_only_writes_the_pages_a_test_wrote(pair: tuple[MemoryDatabase, ...]) -> None:
    template, working = pair
    watched = working._watched
    assert watched is not None
    writer = _connect(working)
    writer.execute("UPDATE user SET bio = 'y' WHERE id = 3")
    assert 0 < len(watched.dirty) <= 4  # page 1, a leaf (and maybe an index page)
    assert working.restore_from(template)
    assert watched.dirty == set()
    writer.close()


def test_a_held_read_stops_a_restore_and_changes_nothing(pair: tuple[MemoryDatabase, ...]) -> None:
    template, working = pair
    writer, reader = _connect(working), _connect(working)
    writer.execute("UPDATE user SET name = 'kept' WHERE id = 1")
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM user").fetchone()
    assert working.restore_from(template) is False
    assert not working.is_free()
    assert reader.execute("SELECT name FROM user WHERE id = 1").fetchone() == ("kept",)
    reader.execute("COMMIT")
    assert working.restore_from(template) is True
    _pages_equal(template, working)
    reader.close()
    writer.close()


@pytest.mark.parametrize("spill_after", [False, True])
def test_a_write_through_plain_memdb_is_recorded_too(
    pair: tuple[MemoryDatabase, ...], spill_after: bool
) -> None:
    """memdb's own xOpen is the shim's: ``vfs=memdb`` on a watched name cannot go around it
    (a bypassed commit followed by a rolled-back spill used to pass the counter check)."""
    template, working = pair
    around = sqlite3.connect(f"file:/{working.name}?vfs=memdb", uri=True, isolation_level=None)
    around.execute("DELETE FROM user WHERE id < 50")
    if spill_after:  # a recorded transaction that spills page 1 and rolls back
        writer = _connect(working)
        writer.execute("PRAGMA cache_size = 2")
        writer.execute("BEGIN")
        writer.execute("UPDATE user SET name = name || 'x'")
        writer.execute("ROLLBACK")
        writer.close()
    watched = working._watched
    assert watched is not None
    assert watched.touched
    assert watched.restore_from(template.page_file or 0) is True
    _pages_equal(template, working)
    assert _view(around) == _view(template.anchor)
    around.close()


@pytest.mark.parametrize("tracked_after", [False, True])
def test_a_write_around_the_shim_falls_back_to_a_backup(
    pair: tuple[MemoryDatabase, ...], tracked_after: bool
) -> None:
    """The one handle opened before the watch began (the anchor) is not recorded; the
    change counter still tells, and a backup restores."""
    template, working = pair
    working.anchor.execute("DELETE FROM user WHERE id < 50")
    working.anchor.commit()
    if tracked_after:  # a recorded commit after it must not hide it
        writer = _connect(working)
        writer.execute("UPDATE user SET name = 'x' WHERE id = 60")
        writer.close()
    watched = working._watched
    assert watched is not None
    assert watched.restore_from(template.page_file or 0) is None
    assert working.restore_from(template) is True  # the backup
    _pages_equal(template, working)
    # recording starts afresh after the backup: the next restore is a page restore again
    writer = _connect(working)
    writer.execute("UPDATE user SET name = 'y' WHERE id = 61")
    assert watched.restore_from(template.page_file or 0) is True
    _pages_equal(template, working)
    writer.close()


def test_backup_restores_when_not_recording() -> None:
    template = _template()
    working = template.copy(unique_name("pages", "working"))
    working.prepare_for_restores()
    assert not working.restores_pages
    assert working.sqlite_uri.endswith("vfs=memdb")
    writer = _connect(working)
    writer.execute("DELETE FROM user")
    assert working.restore_from(template)
    assert _view(writer) == _view(template.anchor)
    writer.close()
    working.close()
    template.close()


# -- through pytest -------------------------------------------------------------------

SUITE = """
import sqlite3

def test_1_writes(memdb_sync_session):
    from sqlalchemy import text
    memdb_sync_session.execute(text("DELETE FROM user WHERE id > 1"))
    memdb_sync_session.execute(text("CREATE TABLE extra(x)"))
    memdb_sync_session.commit()

def test_2_sees_the_template(memdb_sync_session):
    from sqlalchemy import text
    assert memdb_sync_session.execute(text("SELECT count(*) FROM user")).scalar() == 300
    names = memdb_sync_session.execute(text("SELECT name FROM sqlite_master")).scalars().all()
    assert "extra" not in names
"""


def _project(pytester: pytest.Pytester, restore: str | None) -> None:
    path = pytester.path / "app.sqlite"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE user(id INTEGER PRIMARY KEY, name TEXT)")
    connection.executemany("INSERT INTO user(name) VALUES (?)", [(f"u{i}",) for i in range(300)])
    connection.commit()
    connection.close()
    line = f"memdb_restore = {restore}\n" if restore else ""
    pytester.makeini(f"[pytest]\nmemdb_file = app.sqlite\n{line}")
    pytester.makepyfile(test_suite=SUITE)


@pytest.mark.parametrize(
    ("restore", "header"),
    [
        (None, "restore=pages written"),
        ("auto", "restore=pages written"),
        ("pages", "restore=pages written"),
        ("backup", "restore=backup (memdb_restore)"),
    ],
)
@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_every_restore_way_isolates_a_real_run(
    pytester: pytest.Pytester, restore: str | None, header: str, isolation: str
) -> None:
    _project(pytester, restore)
    result = pytester.runpytest_subprocess("-p", "no:randomly", f"--memdb-isolation={isolation}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"memdb: *{header}*"])


def test_a_bad_restore_value_names_the_option(pytester: pytest.Pytester) -> None:
    _project(pytester, "sometimes")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*memdb_restore in tox.ini got 'sometimes'; allowed values: auto, pages, backup.*"]
    )
