"""``memdb_cache``: a template is built once across xdist workers and runs, until an input
changes. Each build appends a line to ``builds.log`` (a seed callable with a side effect),
so the tests count builds, not time."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_ini

SEED = """
from pathlib import Path

from sqlalchemy import text


def seed(conn):
    with (Path(__file__).parent / "builds.log").open("a") as log:
        log.write("built\\n")
    conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)"))
    conn.execute(text("INSERT INTO item (name) VALUES ('seeded')"))
"""

TESTS = """
import pytest
from sqlalchemy import text


@pytest.mark.parametrize("n", range(4))
async def test_sees_the_seeded_template(memdb_session, n):
    rows = (await memdb_session.execute(text("SELECT name FROM item"))).scalars().all()
    assert rows == ["seeded"]
    await memdb_session.execute(text("INSERT INTO item (name) VALUES ('written')"))
    await memdb_session.commit()
"""


def builds(pytester: pytest.Pytester) -> int:
    log = pytester.path / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def project(pytester: pytest.Pytester, **ini: str) -> None:
    write_ini(pytester, memdb_load="seeding:seed", **ini)
    pytester.makepyfile(seeding=SEED, test_cached=TESTS)


def run(pytester: pytest.Pytester, *args: str) -> None:
    result = pytester.runpytest_subprocess(*args, timeout=120)
    result.assert_outcomes(passed=4)


def test_a_cached_template_is_built_once_and_reused_by_later_runs(
    pytester: pytest.Pytester,
) -> None:
    project(pytester, memdb_cache="true")
    run(pytester)
    assert builds(pytester) == 1
    run(pytester)
    run(pytester, "--memdb-isolation", "rollback")
    assert builds(pytester) == 1, "later runs load the cached template"
    entries = list((pytester.path / ".pytest_cache" / "d" / "pytest-memdb").glob("*.sqlite"))
    assert len(entries) == 1


@pytest.mark.slow
def test_a_changed_input_rebuilds_and_the_flags_force_it(pytester: pytest.Pytester) -> None:
    project(pytester, memdb_cache="true")
    run(pytester)
    seeding = pytester.path / "seeding.py"
    seeding.write_text(seeding.read_text() + "\n# a change to the seed's module\n")
    run(pytester)
    assert builds(pytester) == 2, "the seed callable's module changed"
    run(pytester, "--memdb-rebuild")
    assert builds(pytester) == 3
    run(pytester, "--cache-clear")
    assert builds(pytester) == 4
    run(pytester)
    assert builds(pytester) == 4


def test_an_sql_step_and_the_models_are_part_of_the_key(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        models="""
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


        class Base(DeclarativeBase):
            pass


        class Item(Base):
            __tablename__ = "item"
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str]
        """
    )
    seed = pytester.path / "seed.sql"
    seed.write_text("INSERT INTO item (name) VALUES ('seeded');\n")
    write_ini(pytester, memdb_metadata="models:Base", memdb_load="seed.sql", memdb_cache="true")
    pytester.makepyfile(test_cached=TESTS)
    cache = pytester.path / ".pytest_cache" / "d" / "pytest-memdb"
    run(pytester)
    seed.write_text("INSERT INTO item (name) VALUES ('seeded');\n-- changed\n")
    run(pytester)
    models = pytester.path / "models.py"
    models.write_text(models.read_text().rstrip() + "\n    note: Mapped[str | None]\n")
    run(pytester)
    assert len(list(cache.glob("*.sqlite"))) == 3, "each change made a new entry"


@pytest.mark.slow  # two xdist runs with their workers: 6 s on 2 cores
def test_xdist_workers_build_each_template_once_between_them(pytester: pytest.Pytester) -> None:
    project(pytester, memdb_cache="true")
    run(pytester, "-n", "2")
    assert builds(pytester) == 1
    run(pytester, "-n", "2")
    assert builds(pytester) == 1


def test_without_the_cache_every_worker_and_run_builds(pytester: pytest.Pytester) -> None:
    project(pytester)
    run(pytester, "-n", "2")
    run(pytester)
    assert builds(pytester) == 3


def test_without_pytests_cache_it_says_so_and_builds(pytester: pytest.Pytester) -> None:
    project(pytester, memdb_cache="true")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=4, warnings=1)
    result.stdout.fnmatch_lines(["*memdb_cache needs pytest's cache*"])
    assert builds(pytester) == 1
    assert not Path(pytester.path / ".pytest_cache").exists()
