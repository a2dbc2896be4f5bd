"""The terminal summary: what the plugin did in a run, counted right, under xdist too."""

from __future__ import annotations

import re

import pytest

from tests.helpers import write_ini

INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
pytestmark = pytest.mark.usefixtures("app_db")

THREE_TESTS = """
from sqlalchemy import text


async def test_writes(memdb_session):
    await memdb_session.execute(text("INSERT INTO user (name) VALUES ('zoe')"))
    await memdb_session.commit()


async def test_reads(memdb_session):
    assert (await memdb_session.execute(text("SELECT count(*) FROM user"))).scalar() == 3


async def test_writes_too(memdb_session):
    await memdb_session.execute(text("DELETE FROM user"))
    await memdb_session.commit()
"""


def summary(result: pytest.RunResult) -> str:
    lines = [line for line in result.outlines if line.startswith("memdb: ") and "databases" in line]
    assert len(lines) == 1, result.stdout.str()
    return lines[0]


@pytest.mark.parametrize(("restore", "kind"), [("auto", "pages"), ("backup", "backup")])
def test_three_tests_two_that_write(pytester: pytest.Pytester, restore: str, kind: str) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_restore=restore)
    pytester.makepyfile(test_three=THREE_TESTS)

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=3)
    pages, backup = (2, 0) if kind == "pages" else (0, 2)
    assert summary(result) == (
        f"memdb: 3 databases; templates 1 built, 0 from cache; "
        f"restores {pages} pages, {backup} backup, 1 none"
    )


def test_escapes_layers_and_the_cache_are_counted(pytester: pytest.Pytester) -> None:
    write_ini(
        pytester, memdb_file="data/app.sqlite", memdb_isolation="rollback", memdb_cache="true"
    )
    pytester.makepyfile(
        test_more="""
        import pytest
        from sqlalchemy import text


        @pytest.fixture(scope="module")
        def zoe(memdb_module):
            with memdb_module.sync_session() as session:
                session.execute(text("INSERT INTO user (name) VALUES ('zoe')"))
                session.commit()


        def test_escapes(memdb_sync_session):
            memdb_sync_session.execute(text("INSERT INTO user (name) VALUES ('eve')"))
            memdb_sync_session.connection().exec_driver_sql("COMMIT")


        def test_layer(zoe, memdb_sync_session):
            count = memdb_sync_session.execute(text("SELECT count(*) FROM user")).scalar()
            assert count == 4
        """
    )

    first = pytester.runpytest("-p", "no:hypothesispytest")
    second = pytester.runpytest("-p", "no:hypothesispytest", "-v")

    first.assert_outcomes(passed=2, errors=1)
    line = summary(first)
    assert line.startswith("memdb: 2 databases; templates 1 built, 0 from cache; ")
    assert line.endswith("; 1 escapes; layers 1 laid, 1 frozen, 0 put back")
    second.assert_outcomes(passed=2, errors=1)
    second.stdout.fnmatch_lines(
        [
            "*- pytest-memdb -*",
            "     2  databases handed to tests (memdb and memdb_factory fixtures)",
            "     0  templates built",
            "     1  templates loaded from the cache (memdb_cache)",
            "*",
            "*",
            "*",
            "     1  tests reported for escaping rollback isolation",
            "     1  layers laid (memdb_suite, memdb_module, memdb_class)",
            "     1  layer checkpoints (frozen after a fixture of its scope wrote)",
            "     0  writes to a layer outside its fixtures, reported and put back",
        ]
    )


def test_xdist_workers_add_up(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(test_three=THREE_TESTS, test_again=THREE_TESTS)

    result = pytester.runpytest_subprocess(*INNER_ARGS, "-n", "2", timeout=300)

    result.assert_outcomes(passed=6)
    found = re.fullmatch(
        r"memdb: 6 databases \((\d) xdist workers\); templates (\d) built, 0 from cache; "
        r"restores 4 pages, 0 backup, 2 none",
        summary(result),
    )
    assert found is not None, summary(result)
    workers, built = found.groups()
    assert workers == built  # each worker builds its template, and reports


def test_nothing_without_memdb(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile("def test_plain():\n    pass\n")

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=1)
    assert not [line for line in result.outlines if "databases" in line]
