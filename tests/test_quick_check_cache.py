"""Start-up: a fixture file that passed ``PRAGMA quick_check`` in an earlier run, unchanged,
is not checked again (pytest's cache); a changed one is. An inner conftest reports each
load's ``check`` argument, so the test counts checks, not time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import digest, write_ini

pytestmark = pytest.mark.usefixtures("app_db")

CONFTEST = """
import pytest_memdb.sqlite.loading as loading

_load = loading._load


def _counting(*args, check=True, **kwargs):
    print(f"MEMDB-LOAD check={check}")
    return _load(*args, check=check, **kwargs)


loading._load = _counting
"""

TESTS = """
from sqlalchemy import text


async def test_reads(memdb_session):
    assert (await memdb_session.execute(text("SELECT count(*) FROM user"))).scalar() == 3
"""


def checks(pytester: pytest.Pytester, *args: str) -> list[str]:
    result = pytester.runpytest_subprocess("-s", *args, timeout=120)
    result.assert_outcomes(passed=1)
    found = [line.partition("MEMDB-LOAD check=")[2] for line in result.outlines]
    return [check.split()[0] for check in found if check]


@pytest.mark.slow
def test_an_unchanged_file_is_checked_once_a_changed_one_again(
    pytester: pytest.Pytester, app_db: Path
) -> None:
    before = digest(app_db)
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_reads=TESTS)
    assert checks(pytester) == ["True"]
    assert checks(pytester) == ["False"], "the second run trusts the first run's check"
    # Same bytes, same size, same mtime: only the ctime moves; checked again.
    info = app_db.stat()
    app_db.write_bytes(app_db.read_bytes())
    os.utime(app_db, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert checks(pytester) == ["True"]
    assert checks(pytester) == ["False"]
    assert checks(pytester, "--cache-clear") == ["True"]
    assert checks(pytester, "-p", "no:cacheprovider") == ["True"]
    assert digest(app_db) == before
