"""``memdb_pragmas``: SQLite settings on every connection, checked at start-up.

Inner tests read the settings back on every kind of connection the plugin hands out
(and on the template's seeding connection, from the ``pytest_memdb_template`` hook)
and print ``PRAGMAS`` lines; a foreign key violation must raise ``IntegrityError``
exactly when ``foreign_keys=ON`` is configured. Bad settings stop the run with a usage
error naming them. The runtime class takes the same settings.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from pytest_memdb import InMemoryDatabase, MemdbError
from pytest_memdb.sqlite.pragmas import parse_pragmas
from tests.helpers import write_ini

MODES = ["copy", "rollback", "session"]
CONNECTIONS = ["app_session", "async_session", "engine", "engine2", "sync_engine", "sync_session"]


def make_library(path: Path) -> Path:
    """Authors and books, ``book.author_id`` a foreign key (SQLite enforces it only if asked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE author (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        CREATE TABLE book (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            author_id INTEGER NOT NULL REFERENCES author (id)
        );
        INSERT INTO author (name) VALUES ('le guin'), ('lem');
        INSERT INTO book (title, author_id) VALUES ('earthsea', 1), ('solaris', 2);
        """
    )
    conn.close()
    return path


CONFTEST = """
from sqlalchemy import text


def pytest_memdb_template(connection):
    fk = connection.execute(text("PRAGMA foreign_keys")).scalar_one()
    cache = connection.execute(text("PRAGMA cache_size")).scalar_one()
    print(f"PRAGMAS template fk={fk} cache={cache}")
"""

TESTS = """
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

SETTINGS = text("SELECT * FROM pragma_foreign_keys, pragma_cache_size, pragma_recursive_triggers")
ORPHAN = text("INSERT INTO book (title, author_id) VALUES ('orphan', 999)")


def show(row):
    return "/".join(str(v) for v in row)


async def test_every_connection(
    memdb, memdb_session, memdb_sync_session, memdb_engine, memdb_sessionmaker
):
    seen = {}
    seen["async_session"] = show((await memdb_session.execute(SETTINGS)).one())
    seen["sync_session"] = show(memdb_sync_session.execute(SETTINGS).one())
    # two at once: each is its own connection in copy and session mode
    async with memdb_engine.connect() as one, memdb_engine.connect() as two:
        seen["engine"] = show((await one.execute(SETTINGS)).one())
        seen["engine2"] = show((await two.execute(SETTINGS)).one())
    async with memdb_sessionmaker() as app_session:
        seen["app_session"] = show((await app_session.execute(SETTINGS)).one())
    with memdb.sync_engine.connect() as conn:
        seen["sync_engine"] = show(conn.execute(SETTINGS).one())
    print(f"PRAGMAS {memdb.isolation} " + " ".join(f"{k}={v}" for k, v in sorted(seen.items())))


async def test_violation_async(memdb, memdb_session):
    try:
        await memdb_session.execute(ORPHAN)
        await memdb_session.commit()
    except IntegrityError as exc:
        await memdb_session.rollback()
        print(f"PRAGMAS violation-async {memdb.isolation} IntegrityError: {exc.orig}")
    else:
        print(f"PRAGMAS violation-async {memdb.isolation} accepted")


def test_violation_sync(memdb, memdb_sync_session):
    try:
        memdb_sync_session.execute(ORPHAN)
        memdb_sync_session.commit()
    except IntegrityError as exc:
        memdb_sync_session.rollback()
        print(f"PRAGMAS violation-sync {memdb.isolation} IntegrityError: {exc.orig}")
    else:
        print(f"PRAGMAS violation-sync {memdb.isolation} accepted")
"""

LINE = re.compile(r"PRAGMAS (?P<label>\S+) (?P<rest>.*)$")


def pragma_lines(result: pytest.RunResult) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in result.outlines:
        match = LINE.search(line)
        if match:
            found.setdefault(match["label"], match["rest"])
    return found


@pytest.fixture
def library(pytester: pytest.Pytester) -> pytest.Pytester:
    make_library(pytester.path / "data" / "library.sqlite")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_pragmas=TESTS)
    return pytester


def ini_lines(*lines: str) -> str:
    return "".join(f"\n    {line}" for line in lines)


@pytest.mark.parametrize("isolation", MODES)
def test_applied_on_every_connection(library: pytest.Pytester, isolation: str) -> None:
    write_ini(
        library,
        memdb_file="data/library.sqlite",
        memdb_isolation=isolation,
        memdb_pragmas=ini_lines("foreign_keys=ON", "cache_size=-4000", "recursive_triggers=1"),
    )
    result = library.runpytest("-s", "-p", "no:cacheprovider", "-W", "error::ResourceWarning")
    result.assert_outcomes(passed=3)
    seen = pragma_lines(result)
    assert seen["template"] == "fk=1 cache=-4000"
    assert seen[isolation] == " ".join(f"{name}=1/-4000/1" for name in CONNECTIONS)
    for kind in ("async", "sync"):
        assert seen[f"violation-{kind}"] == (
            f"{isolation} IntegrityError: FOREIGN KEY constraint failed"
        )


@pytest.mark.parametrize("isolation", MODES)
def test_default_keeps_sqlites_settings(library: pytest.Pytester, isolation: str) -> None:
    write_ini(library, memdb_file="data/library.sqlite", memdb_isolation=isolation)
    result = library.runpytest("-s", "-p", "no:cacheprovider", "-W", "error::ResourceWarning")
    result.assert_outcomes(passed=3)
    seen = pragma_lines(result)
    assert seen["template"] == "fk=0 cache=-2000"
    assert seen[isolation] == " ".join(f"{name}=0/-2000/0" for name in CONNECTIONS)
    assert seen["violation-async"] == f"{isolation} accepted"
    assert seen["violation-sync"] == f"{isolation} accepted"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("no_such_pragma=1", "unknown pragma 'no_such_pragma' in 'no_such_pragma=1' *"),
        ("foreign_keys=maybe", "SQLite did not accept 'foreign_keys=maybe'*"),
        ("synchronous=sometimes", "SQLite did not accept 'synchronous=sometimes'*"),
        ("cache_size=lots", "SQLite did not accept 'cache_size=lots'*"),
        ("foreign_keys", "'foreign_keys' is not a 'name=value' pragma*"),
        ("foreign_keys=ON; DROP TABLE book", "'foreign_keys=ON; DROP TABLE book' is not a*"),
        ("journal_mode=WAL", "'journal_mode=WAL' cannot be set per connection*"),
        ("page_size=8192", "'page_size=8192' cannot be set per connection*"),
        ("user_version=3", "'user_version=3' cannot be set per connection*"),
    ],
)
def test_bad_setting_is_a_usage_error(library: pytest.Pytester, line: str, problem: str) -> None:
    write_ini(
        library,
        memdb_file="data/library.sqlite",
        memdb_pragmas=ini_lines("foreign_keys=ON", line),
    )
    result = library.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-memdb: memdb_pragmas in pytest.ini: {problem}"])
    result.stderr.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*PRAGMAS*")


def test_usage_error_under_xdist(library: pytest.Pytester) -> None:
    write_ini(library, memdb_file="data/library.sqlite", memdb_pragmas="journal_mode=WAL")
    result = library.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-memdb: memdb_pragmas in pytest.ini: 'journal_mode=WAL' cannot be *"]
    )


def test_parse_pragmas_reads_values_as_sqlite_does() -> None:
    lines = [
        "  Foreign_Keys = true ",
        "# a comment",
        "",
        "synchronous=NORMAL",
        "temp_store=MEMORY",
        "secure_delete=FAST",
        "cache_size=-4000",
        "busy_timeout=250",
    ]
    assert parse_pragmas(lines, "here") == (
        ("foreign_keys", "true"),
        ("synchronous", "NORMAL"),
        ("temp_store", "MEMORY"),
        ("secure_delete", "FAST"),
        ("cache_size", "-4000"),
        ("busy_timeout", "250"),
    )
    with pytest.raises(MemdbError, match=r"^pytest-memdb: here: unknown pragma 'nope'"):
        parse_pragmas(["nope=1"], "here")


# --- the runtime class -------------------------------------------------------------------


@pytest.fixture
def library_file(tmp_path: Path) -> Path:
    return make_library(tmp_path / "library.sqlite")


async def settings_and_violation(db: InMemoryDatabase) -> tuple[str, str]:
    async with db.get_engine().connect() as conn:
        row = (
            await conn.execute(text("SELECT * FROM pragma_foreign_keys, pragma_cache_size"))
        ).one()
    async with db.get_session() as session:
        try:
            await session.execute(text("INSERT INTO book (title, author_id) VALUES ('x', 999)"))
            await session.commit()
        except IntegrityError:
            outcome = "IntegrityError"
        else:
            outcome = "accepted"
    return f"{row[0]}/{row[1]}", outcome


@pytest.mark.parametrize(
    "pragmas",
    [
        {"foreign_keys": "ON", "cache_size": "-4000"},
        [("foreign_keys", "ON"), ("cache_size", "-4000")],
    ],
    ids=["mapping", "pairs"],
)
async def test_runtime_class_applies_pragmas(library_file: Path, pragmas: object) -> None:
    db = InMemoryDatabase(pragmas=pragmas)  # type: ignore[arg-type]
    db.setup(library_file)
    try:
        assert await settings_and_violation(db) == ("1/-4000", "IntegrityError")
    finally:
        await db.aclose()


async def test_runtime_class_default_keeps_sqlites_settings(library_file: Path) -> None:
    db = InMemoryDatabase()
    db.setup(library_file)
    try:
        assert await settings_and_violation(db) == ("0/-2000", "accepted")
    finally:
        await db.aclose()


@pytest.mark.parametrize(
    ("pragmas", "message"),
    [
        ({"foreign_keys": "maybe"}, "SQLite did not accept 'foreign_keys=maybe'"),
        ({"journal_mode": "WAL"}, "'journal_mode=WAL' cannot be set per connection"),
        ({"no_such_pragma": "1"}, "unknown pragma 'no_such_pragma'"),
        ([("foreign_keys",)], r"got \('foreign_keys',\); expected \(name, value\) pairs"),
        ("foreign_keys=ON", "expected a mapping"),
    ],
)
def test_runtime_class_rejects_bad_pragmas(pragmas: object, message: str) -> None:
    with pytest.raises(MemdbError, match=r"^pytest-memdb: InMemoryDatabase\(pragmas=\.\.\.\)"):
        InMemoryDatabase(pragmas=pragmas)  # type: ignore[arg-type]
    with pytest.raises(MemdbError, match=message):
        InMemoryDatabase(pragmas=pragmas)  # type: ignore[arg-type]


# --- rollback mode: PRAGMA foreign_keys run by the app inside the test's transaction ------

APP_PRAGMA_TESTS = """
from sqlalchemy import text

ORPHAN = text("INSERT INTO book (title, author_id) VALUES ('orphan', 999)")


async def test_app_turns_foreign_keys_on(memdb_session):
    await memdb_session.execute(text({statement!r}))  # APP
    await memdb_session.execute(text({statement!r}))  # the same again: one warning a test
    fk = (await memdb_session.execute(text("PRAGMA foreign_keys"))).scalar_one()
    print(f"FK {{fk}}")


def test_sync_too(memdb_sync_session):
    memdb_sync_session.execute(text("pragma FOREIGN_KEYS = true"))  # SYNC


def test_reading_it_is_fine(memdb_sync_session):
    memdb_sync_session.execute(text("PRAGMA foreign_keys"))
"""


@pytest.mark.parametrize(
    "statement", ["PRAGMA foreign_keys=ON", "/* app */ PRAGMA foreign_keys = 1"]
)
def test_an_ignored_foreign_keys_pragma_in_rollback_mode_warns_on_the_test(
    library: pytest.Pytester, statement: str
) -> None:
    """SQLite ignores ``PRAGMA foreign_keys`` inside a transaction, and rollback mode runs
    every test inside one: the app's ``PRAGMA foreign_keys=ON`` did nothing, silently."""
    write_ini(library, memdb_file="data/library.sqlite", memdb_isolation="rollback")
    library.makepyfile(test_pragmas=APP_PRAGMA_TESTS.format(statement=statement))
    source = (library.path / "test_pragmas.py").read_text().splitlines()
    app_line = next(i for i, line in enumerate(source, 1) if "# APP" in line)
    sync_line = next(i for i, line in enumerate(source, 1) if "# SYNC" in line)

    result = library.runpytest("-s", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=3, warnings=2)
    result.stdout.fnmatch_lines(["FK 0"])  # it did nothing: that is what the warning says
    result.stdout.fnmatch_lines(
        [
            "test_pragmas.py::test_app_turns_foreign_keys_on",
            f"  *test_pragmas.py:{app_line}: IgnoredPragmaWarning: pytest-memdb: "
            f"{statement!r} did nothing: SQLite ignores PRAGMA foreign_keys inside a "
            "transaction, and rollback isolation runs every test inside one, so foreign keys "
            "stay OFF in this test. Set it on every connection before the test's transaction "
            "begins: memdb_pragmas = foreign_keys=ON in the ini file*",
            "test_pragmas.py::test_sync_too",
            f"  *test_pragmas.py:{sync_line}: IgnoredPragmaWarning: pytest-memdb: "
            "'pragma FOREIGN_KEYS = true' did nothing*memdb_pragmas = foreign_keys=ON*",
        ]
    )


@pytest.mark.parametrize(
    ("isolation", "pragmas"),
    [("rollback", "foreign_keys=ON"), ("copy", ""), ("session", "")],
    ids=["rollback-already-on", "copy", "session"],
)
def test_no_warning_where_the_pragma_works_or_changes_nothing(
    library: pytest.Pytester, isolation: str, pragmas: str
) -> None:
    write_ini(
        library, memdb_file="data/library.sqlite", memdb_isolation=isolation, memdb_pragmas=pragmas
    )
    library.makepyfile(test_pragmas=APP_PRAGMA_TESTS.format(statement="PRAGMA foreign_keys=ON"))

    result = library.runpytest("-s", "-p", "no:cacheprovider", "-W", "error")

    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["FK 1"])


@pytest.mark.parametrize(
    ("statement", "value"),
    [
        ("PRAGMA foreign_keys=ON", 1),
        ("pragma Foreign_Keys = off", 0),
        ("PRAGMA foreign_keys = 'yes'", 1),
        ("PRAGMA foreign_keys(0)", 0),
        ("PRAGMA main.foreign_keys=true", 1),
        ("-- by the app\n  PRAGMA foreign_keys=1", 1),
        ("PRAGMA foreign_keys", None),  # a read
        ("PRAGMA foreign_keys=maybe", None),  # SQLite would not take it either
        ("PRAGMA foreign_key_check", None),
        ("PRAGMA defer_foreign_keys=ON", None),  # works inside a transaction
        ("SELECT 'PRAGMA foreign_keys=ON'", None),
    ],
)
def test_foreign_keys_setting_reads_what_sqlite_would(statement: str, value: int | None) -> None:
    from pytest_memdb.sqlite.ignored_pragmas import foreign_keys_setting

    assert foreign_keys_setting(statement) == value
    if value is not None:  # and SQLite agrees, outside a transaction
        conn = sqlite3.connect(":memory:")
        conn.execute("PRAGMA foreign_keys=" + ("0" if value else "1"))
        conn.execute(statement)
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == value
        conn.close()
