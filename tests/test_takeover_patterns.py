"""``memdb_takeover`` patterns, matched as SQLAlchemy's SQLite dialects hand the database over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_memdb.errors import MemdbError
from pytest_memdb.integrations.takeover_patterns import parse_takeover
from pytest_memdb.plugin.nesting import OUTER_INI, announce, nested_in


def matches(pattern: str, driver: str, database: str) -> bool:
    (parsed,) = parse_takeover([pattern], "memdb_takeover in pytest.ini")
    return parsed.matches(driver, database)


@pytest.mark.parametrize(
    ("pattern", "driver", "database", "expected"),
    [
        # a relative path, as the code writes it; the dialect passes it made absolute
        ("sqlite:///./test.db", "pysqlite", os.path.abspath("test.db"), True),
        ("sqlite:///test.db", "pysqlite", os.path.abspath("test.db"), True),
        ("sqlite:///./test.db", "pysqlite", os.path.abspath("other.db"), False),
        # no driver in the pattern: any driver's connection to that file
        ("sqlite:///./test.db", "aiosqlite", os.path.abspath("test.db"), True),
        ("sqlite+aiosqlite:///./test.db", "pysqlite", os.path.abspath("test.db"), False),
        ("sqlite+aiosqlite:///*", "aiosqlite", "/anywhere/at/all.db", True),
        ("sqlite+aiosqlite:///*", "aiosqlite", ":memory:", True),
        ("sqlite:////tmp/app.db", "pysqlite", "/tmp/app.db", True),
        ("sqlite:///data/*.db", "pysqlite", os.path.abspath("data/a.db"), True),
        ("sqlite:///data/*.db", "pysqlite", os.path.abspath("elsewhere/a.db"), False),
        # in memory
        ("sqlite://", "pysqlite", ":memory:", True),
        ("sqlite:///:memory:", "pysqlite", ":memory:", True),
        ("sqlite://", "pysqlite", os.path.abspath("test.db"), False),
        ("sqlite:///./test.db", "pysqlite", ":memory:", False),
        # a file: URI (uri=true) is compared by its path
        ("sqlite:///./test.db", "pysqlite", f"file:{os.path.abspath('test.db')}?mode=ro", True),
        ("sqlite://", "pysqlite", "file::memory:?cache=shared", True),
    ],
)
def test_matching(pattern: str, driver: str, database: str, expected: bool) -> None:
    assert matches(pattern, driver, database) is expected


def test_comments_and_blank_lines_are_skipped() -> None:
    found = parse_takeover(["", "# the tutorial's", "sqlite:///./test.db"], "here")
    assert [p.text for p in found] == ["sqlite:///./test.db"]


@pytest.mark.parametrize(
    "entry", ["postgresql://localhost/app", "sqlite://host/x.db", "./test.db", "sqlite:"]
)
def test_anything_but_a_sqlite_url_is_refused_with_examples(entry: str) -> None:
    with pytest.raises(MemdbError, match=r"takes SQLite URLs.*sqlite:///\./test\.db"):
        parse_takeover([entry], "memdb_takeover in pytest.ini")


def test_a_run_knows_it_was_started_by_a_run_of_the_same_ini(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    ini = tmp_path / "pytest.ini"
    assert nested_in(ini, environ) is None
    restore = announce(ini, environ)
    assert nested_in(ini, environ) == str(ini)
    assert nested_in(tmp_path / "other" / "pytest.ini", environ) is None
    restore()
    assert OUTER_INI not in environ
