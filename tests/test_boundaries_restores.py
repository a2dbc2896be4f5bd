"""What counts as "changed": writes a page restore must not miss (default ``memdb_restore``,
``auto``: the pages a test wrote are copied back from the template).

A transaction with the journal off that spilled and rolled back, a write around the page
VFS followed by a spilled transaction rolled back, DDL whose schema cookie was put back
by hand, a restore interrupted half-way, a template with no tables. Real inner pytest runs
(and, for the interrupted restore, the core itself) on real SQLite databases.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_memdb.sqlite import pages
from pytest_memdb.sqlite.memory import MemoryDatabase, unique_name
from tests.boundaries import WIDE, outcomes, tail
from tests.helpers import write_ini

BIG_ROWS = 20000


def _big_file(path: Path) -> Path:
    """A fixture file whose ``big`` table is far larger than a five-page cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    connection.execute("CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT)")
    connection.executemany(
        "INSERT INTO big (v) VALUES (?)", [(f"value {i:06d} " + "x" * 40,) for i in range(BIG_ROWS)]
    )
    connection.commit()
    connection.close()
    return path


CHECK_BIG = f"""
from sqlalchemy import text

BIG_ROWS = {BIG_ROWS}


def check_template(session):
    integrity = session.execute(text("PRAGMA integrity_check")).scalars().all()
    assert integrity == ["ok"], str(integrity)[:300]
    ids = session.execute(text("SELECT id FROM big ORDER BY id")).scalars().all()
    assert ids == list(range(1, BIG_ROWS + 1)), "the ids of big are not the template's"
    changed = session.execute(text("SELECT count(*) FROM big WHERE v NOT LIKE 'value %'"))
    assert changed.scalar_one() == 0, "rows of big changed"
    notes = session.execute(text("SELECT body FROM note")).scalars().all()
    assert notes == [], notes
"""


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.RunResult:
    for key, value in WIDE.items():
        monkeypatch.setenv(key, value)
    return pytester.runpytest_subprocess("-p", "no:randomly", "-rA", timeout=300)


JOURNAL_OFF = """
from check_big import check_template


def test_1_journal_off_spill_and_rollback(memdb_sync_session):
    driver = memdb_sync_session.connection().connection.driver_connection
    driver.execute("PRAGMA cache_size = 5")
    assert driver.execute("PRAGMA journal_mode = OFF").fetchone()[0].lower() == "off"
    driver.execute("UPDATE big SET v = 'changed ' || v")  # the driver begins a transaction
    driver.rollback()


def test_2_sees_the_template(memdb_sync_session):
    check_template(memdb_sync_session)
"""


def test_a_rolled_back_spill_with_the_journal_off_is_restored(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3a: with ``journal_mode=OFF`` a rolled-back transaction that spilled leaves its
    pages changed; the next test must still find the template's rows."""
    _big_file(pytester.path / "data" / "big.sqlite")
    write_ini(pytester, memdb_file="data/big.sqlite", memdb_isolation="copy")
    pytester.makepyfile(check_big=CHECK_BIG, test_journal_off=JOURNAL_OFF)
    result = _run(pytester, monkeypatch)
    assert outcomes(result).get("test_2_sees_the_template") == ["PASSED"], tail(result)


AROUND = """
import sqlite3

from sqlalchemy import text

from check_big import check_template


def test_1_writes_around_the_vfs_then_spills(memdb, memdb_sync_session):
    around = sqlite3.connect(f"file:/{memdb.name}?vfs=memdb", uri=True)
    around.execute("INSERT INTO note (body) VALUES ('around the page VFS')")
    around.commit()
    around.close()
    session = memdb_sync_session
    session.execute(text("PRAGMA cache_size = 5"))
    session.execute(text("UPDATE big SET v = 'changed ' || v"))
    session.rollback()
    assert session.execute(text("SELECT count(*) FROM note")).scalar_one() == 1


def test_2_does_not_see_the_row(memdb_sync_session):
    check_template(memdb_sync_session)
"""


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_a_write_around_the_page_vfs_is_undone_after_a_rolled_back_spill(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, isolation: str
) -> None:
    """3b: a commit through a ``vfs=memdb`` connection of the test's own, then a spilled
    transaction rolled back through the plugin's connection: the next test sees no row."""
    _big_file(pytester.path / "data" / "big.sqlite")
    write_ini(pytester, memdb_file="data/big.sqlite", memdb_isolation=isolation)
    pytester.makepyfile(check_big=CHECK_BIG, test_around=AROUND)
    result = _run(pytester, monkeypatch)
    seen = outcomes(result)
    assert "test_1_writes_around_the_vfs_then_spills" in seen, tail(result)
    assert seen.get("test_2_does_not_see_the_row") == ["PASSED"], tail(result)


COOKIE = """
from sqlalchemy import create_engine

USERS = [(1, "ada", "ada@example.com"), (2, "brian", "brian@example.com"),
         (3, "grace", "grace@example.com")]
APP = []  # the app's engine, made once and kept, as an app's module-level engine is


def test_1_ddl_then_the_schema_cookie_put_back(memdb):
    engine = create_engine(memdb.sync_url)
    APP.append(engine)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT * FROM user").all()
        before = connection.exec_driver_sql("PRAGMA schema_version").scalar_one()
        connection.exec_driver_sql("ALTER TABLE user ADD COLUMN extra TEXT DEFAULT 'added'")
        connection.exec_driver_sql("CREATE TABLE other (x)")
        connection.exec_driver_sql(f"PRAGMA schema_version = {{before}}")
        connection.commit()
        assert len(connection.exec_driver_sql("SELECT * FROM user").first()) == 4


def test_2_the_kept_app_engine_reads_the_template(memdb):
    engine = APP[0]
    try:
        with engine.connect() as connection:
            result = connection.exec_driver_sql("SELECT * FROM user ORDER BY id")
            assert list(result.keys()) == ["id", "name", "email"]
            assert [tuple(row) for row in result] == USERS
            tables = connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
            assert tables.scalars().all() == ["user"]
    finally:
        engine.dispose()
"""


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_ddl_with_the_schema_cookie_rewound_does_not_leave_a_stale_schema(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, isolation: str, app_db: Path
) -> None:
    """3c: DDL, then ``PRAGMA schema_version`` set back to its value before it: an app
    engine kept across tests must read the template's table, with its columns."""
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    pytester.makepyfile(test_cookie=COOKIE.format())
    result = _run(pytester, monkeypatch)
    seen = outcomes(result)
    assert "test_1_ddl_then_the_schema_cookie_put_back" in seen, tail(result)
    assert seen.get("test_2_the_kept_app_engine_reads_the_template") == ["PASSED"], tail(result)


NO_TABLES_MODELS = """
from sqlalchemy import MetaData

metadata = MetaData()  # no tables at all
"""

NO_TABLES = """
from sqlalchemy import text

TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"


def test_1_creates_a_table(memdb_sync_session):
    assert memdb_sync_session.execute(text(TABLES)).scalars().all() == []
    memdb_sync_session.execute(text("CREATE TABLE made (x)"))
    memdb_sync_session.execute(text("INSERT INTO made VALUES (1)"))
    memdb_sync_session.commit()


async def test_2_does_not_see_it(memdb_session):
    assert (await memdb_session.execute(text(TABLES))).scalars().all() == []
"""


@pytest.mark.parametrize("source", ["metadata", "file"])
@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_a_template_without_tables_is_restored(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, isolation: str, source: str
) -> None:
    """3e: a template with no tables (an empty metadata, or a file with no tables)."""
    if source == "metadata":
        pytester.makepyfile(models=NO_TABLES_MODELS)
        write_ini(pytester, memdb_metadata="models:metadata", memdb_isolation=isolation)
    else:
        connection = sqlite3.connect(pytester.path / "empty.sqlite")
        connection.execute("PRAGMA user_version = 1")  # a valid file: one page, no tables
        connection.close()
        write_ini(pytester, memdb_file="empty.sqlite", memdb_isolation=isolation)
    pytester.makepyfile(test_no_tables=NO_TABLES)
    result = _run(pytester, monkeypatch)
    result.assert_outcomes(passed=2)


# -- the core, without pytest: a page restore interrupted half-way ---------------------

HEADER_FIELDS_MOVED = ((24, 28), (40, 44), (92, 96))
"""Change counter, schema cookie, version-valid-for: a restore moves them forward."""


class Interrupted(BaseException):
    """Stands for ``KeyboardInterrupt`` (which pytest itself would act on)."""


def _template() -> MemoryDatabase:
    template = MemoryDatabase(unique_name("pages", "template"), shared=False)
    raw = template.anchor
    raw.execute("CREATE TABLE user(id INTEGER PRIMARY KEY, name TEXT, bio TEXT)")
    raw.executemany(
        "INSERT INTO user(name, bio) VALUES (?, ?)",
        [(f"user{i}", "x" * (i % 400)) for i in range(600)],
    )
    raw.commit()
    return template


@pytest.fixture
def pair() -> Iterator[tuple[MemoryDatabase, MemoryDatabase]]:
    if pages.page_vfs() is None:
        pytest.fail(f"the page VFS is not available here: {pages.unavailable_reason}")
    template = _template()
    working = template.copy(unique_name("pages", "working"))
    working.prepare_for_restores(pages_from=template)
    assert working.restores_pages
    yield template, working
    working.close()
    template.close()


def _pages(database: MemoryDatabase) -> list[bytes]:
    data = bytearray(database.anchor.serialize())
    for start, end in HEADER_FIELDS_MOVED:
        data[start:end] = b"\0" * (end - start)
    size = int.from_bytes(data[16:18], "big")
    return [bytes(data[offset : offset + size]) for offset in range(0, len(data), size)]


def test_an_interrupted_page_restore_is_finished_by_the_next_one(
    pair: tuple[MemoryDatabase, MemoryDatabase], monkeypatch: pytest.MonkeyPatch
) -> None:
    """3d: a restore stopped after a few pages must not forget the pages it did not copy:
    the next restore gives back the template, page for page."""
    template, working = pair
    writer = sqlite3.connect(working.sqlite_uri, uri=True, isolation_level=None)
    writer.execute("UPDATE user SET name = 'changed ' || name, bio = bio || 'y'")
    writer.close()
    watched = working._watched
    assert watched is not None
    assert len(watched.dirty) > 20

    real_read = pages.PageVfs.read
    calls: list[int] = []

    def failing_read(self: pages.PageVfs, *args: Any) -> None:
        calls.append(1)
        if len(calls) > 5:
            raise Interrupted
        real_read(self, *args)

    monkeypatch.setattr(pages.PageVfs, "read", failing_read)
    with pytest.raises(Interrupted):
        working.restore_from(template)
    monkeypatch.setattr(pages.PageVfs, "read", real_read)

    assert working.restore_from(template) is True
    restored, expected = _pages(working), _pages(template)
    assert len(restored) == len(expected)
    differ = [number for number, page in enumerate(restored) if page != expected[number]]
    assert differ == [], f"{len(differ)} pages still differ from the template's"
    reader = sqlite3.connect(working.sqlite_uri, uri=True)
    changed = reader.execute("SELECT count(*) FROM user WHERE name LIKE 'changed %'").fetchone()
    reader.close()
    assert changed == (0,)
