"""The same suites on SQLite and on PostgreSQL, by one switch (``memdb_postgresql``).

Real pytest runs (``pytester``) on a real PostgreSQL server, the plugin's own throwaway one
(:mod:`pytest_memdb.postgresql.server`), started once for this module and handed to the
inner runs as ``--memdb-postgresql=URL``; one test starts its own with ``start``. The
behavioural tests are parametrized over both backends: what passes on SQLite must pass on
PostgreSQL with the switch alone.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import APP_USER_MODELS, SLOW_ON_POSTGRESQL, write_ini

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
EXAMPLE_TESTS = {"quickstart": 2, "fastapi-starlette": 3, "layers": 4}


def _example(pytester: pytest.Pytester, name: str) -> None:
    shutil.copytree(EXAMPLES / name, pytester.path, dirs_exist_ok=True)


@pytest.mark.parametrize(
    "switch",
    [pytest.param("sqlite", marks=pytest.mark.slow), "postgresql"],  # SQLite's: test_docs_examples
    indirect=True,
)
@pytest.mark.parametrize("mode", ["copy", "rollback"])
@pytest.mark.parametrize(
    "example",
    ["quickstart", "fastapi-starlette", pytest.param("layers", marks=pytest.mark.slow)],
)
def test_the_docs_examples_pass_by_the_switch_alone(
    pytester: pytest.Pytester, switch: list[str], example: str, mode: str
) -> None:
    """The quick start, the FastAPI example (``ASGITransport`` and Starlette's
    ``TestClient``) and the layers example as shipped, in copy and rollback isolation."""
    _example(pytester, example)
    result = pytester.runpytest_subprocess(*switch, f"--memdb-isolation={mode}", timeout=300)
    result.assert_outcomes(passed=EXAMPLE_TESTS[example])


SEED = "INSERT INTO app_user (id, name) VALUES (1, 'ada'), (2, 'grace');\n"

ISOLATION = """
    import pytest
    from sqlalchemy import create_engine, text
    from sqlalchemy.ext.asyncio import create_async_engine

    COUNT = text("SELECT count(*) FROM app_user")


    async def test_1_writes_every_way(memdb, memdb_session, memdb_sync_session):
        await memdb_session.execute(text("INSERT INTO app_user (id, name) VALUES (10, 'a')"))
        await memdb_session.commit()
        memdb_sync_session.execute(text("INSERT INTO app_user (id, name) VALUES (11, 'b')"))
        memdb_sync_session.commit()
        async with memdb.session() as other:
            await other.execute(text("INSERT INTO app_user (id, name) VALUES (12, 'c')"))
            await other.commit()
            assert (await other.execute(COUNT)).scalar_one() == 5
        await memdb_session.execute(text("CREATE TABLE extra (id INTEGER)"))
        await memdb_session.commit()


    async def test_2_sees_the_template(memdb_session):
        assert (await memdb_session.execute(COUNT)).scalar_one() == 2
        tables = await memdb_session.run_sync(
            lambda s: s.connection().dialect.get_table_names(s.connection())
        )
        assert sorted(tables) == ["app_user"]


    async def test_3_reset_per_example(memdb, memdb_session):
        for example in range(3):
            await memdb.areset()
            assert (await memdb_session.execute(COUNT)).scalar_one() == 2, example
            await memdb_session.execute(
                text("INSERT INTO app_user (id, name) VALUES (:i, 'x')"), {"i": 100 + example}
            )
            await memdb_session.commit()


    async def test_4_the_next_test(memdb_session):
        assert (await memdb_session.execute(COUNT)).scalar_one() == 2
"""


def _isolation_project(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(models=APP_USER_MODELS, test_isolation=ISOLATION)
    (pytester.path / "seed.sql").write_text(SEED)
    write_ini(
        pytester,
        memdb_metadata="models:Base",
        memdb_load="seed.sql",
        memdb_isolation=mode,
        pythonpath=".",
    )


@pytest.mark.parametrize("mode", ["copy", "rollback"])
def test_every_test_starts_from_the_template(
    pytester: pytest.Pytester, switch: list[str], mode: str
) -> None:
    """Rows committed by every kind of session, and DDL, are gone for the next test; each
    ``memdb.areset()`` starts again from the template."""
    _isolation_project(pytester, mode)
    result = pytester.runpytest_subprocess(*switch, timeout=300)
    result.assert_outcomes(passed=4)
    if switch:  # PostgreSQL's restores are clones, counted as such (not as SQLite backups)
        clones = {"copy": 7, "rollback": 0}[mode]  # one per copy test, one per reset
        line = next(line for line in result.outlines if line.startswith("memdb: 4 databases"))
        assert "restores 0 pages, 0 backup, " in line, line
        assert line.endswith(f", {clones} clones") if clones else "clones" not in line, line


SESSION = """
    from sqlalchemy import text

    COUNT = text("SELECT count(*) FROM app_user")


    async def test_1_writes(memdb_session):
        await memdb_session.execute(text("INSERT INTO app_user (id, name) VALUES (10, 'a')"))
        await memdb_session.commit()


    async def test_2_sees_it_and_writes_through_two_sessions(memdb, memdb_session):
        assert (await memdb_session.execute(COUNT)).scalar_one() == 3
        async with memdb.session() as other:
            await other.execute(text("INSERT INTO app_user (id, name) VALUES (11, 'b')"))
            await other.commit()
        assert (await memdb_session.execute(COUNT)).scalar_one() == 4


    def test_3_sync_sees_both(memdb_sync_session):
        assert memdb_sync_session.execute(COUNT).scalar_one() == 4


    async def test_4_reset_brings_the_template_back(memdb, memdb_session):
        await memdb.areset()
        assert (await memdb_session.execute(COUNT)).scalar_one() == 2


    async def test_5_after_the_reset(memdb_session):
        assert (await memdb_session.execute(COUNT)).scalar_one() == 2
"""


def test_session_mode_keeps_what_earlier_tests_wrote(
    pytester: pytest.Pytester, switch: list[str]
) -> None:
    """``session``: one database for the run, never restored but by ``memdb.reset()``;
    async tests (each in its own event loop) and sync ones share it, and the pooled
    connections of one test's loop serve the next."""
    _isolation_project(pytester, "session")
    (pytester.path / "test_isolation.py").unlink()
    pytester.makepyfile(test_session=SESSION)
    result = pytester.runpytest_subprocess(*switch, "-p", "no:randomly", timeout=300)
    result.assert_outcomes(passed=5)


HYPOTHESIS = """
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from sqlalchemy import text

    NAMES = st.text(st.characters(blacklist_characters="\\x00"), min_size=1, max_size=20)


    @settings(
        max_examples=8,
        deadline=None,  # each example's reset is a clone in copy mode on PostgreSQL
        suppress_health_check=[HealthCheck.function_scoped_fixture],
        database=None,
    )
    @given(name=NAMES)
    async def test_each_example_starts_from_the_template(memdb, memdb_session, name):
        await memdb.areset()
        rows = await memdb_session.execute(text("SELECT name FROM app_user ORDER BY id"))
        assert rows.scalars().all() == ["ada", "grace"]
        await memdb_session.execute(
            text("INSERT INTO app_user (id, name) VALUES (3, :name)"), {"name": name}
        )
        await memdb_session.commit()
"""


@pytest.mark.parametrize("switch", SLOW_ON_POSTGRESQL, indirect=True)
@pytest.mark.parametrize("mode", ["copy", "rollback"])
def test_reset_per_hypothesis_example(
    pytester: pytest.Pytester, switch: list[str], mode: str
) -> None:
    """``memdb.areset()`` at the start of every example: each sees the template's rows only,
    whatever the examples before it committed (the same id inserted by each)."""
    _isolation_project(pytester, mode)
    (pytester.path / "test_isolation.py").unlink()
    pytester.makepyfile(test_examples=HYPOTHESIS)
    result = pytester.runpytest_subprocess(*switch, timeout=300)
    result.assert_outcomes(passed=1)


ESCAPE = """
    import pytest
    from sqlalchemy import text

    COUNT = text("SELECT count(*) FROM app_user")


    async def test_1_commit_as_text(memdb_session):
        await memdb_session.execute(text("INSERT INTO app_user (id, name) VALUES (10, 'esc')"))
        await memdb_session.execute(text("COMMIT"))


    async def test_2_the_next_test_sees_the_template(memdb_session):
        assert (await memdb_session.execute(COUNT)).scalar_one() == 2
"""


def test_an_escape_from_rollback_is_reported_and_contained(
    pytester: pytest.Pytester, switch: list[str]
) -> None:
    """A ``COMMIT`` as text ends the outer transaction: the test errors at teardown, saying
    so, and the next test still starts from the template."""
    _isolation_project(pytester, "rollback")
    pytester.makepyfile(test_isolation=ESCAPE)
    result = pytester.runpytest_subprocess(*switch, timeout=300)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*outer transaction*"])


STATE = """
    from sqlalchemy import text


    async def test_1_leaves_session_state(memdb_session):
        await memdb_session.execute(text("PREPARE left_over AS SELECT 1"))
        await memdb_session.execute(text("SELECT pg_advisory_lock(42)"))


    async def test_2_starts_clean(memdb_session):
        prepared = await memdb_session.execute(text("SELECT count(*) FROM pg_prepared_statements"))
        assert prepared.scalar_one() == 0
        locks = await memdb_session.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        )
        assert locks.scalar_one() == 0
"""


def test_session_state_left_in_rollback_mode_is_named_and_cleared(
    pytester: pytest.Pytester, pg_server: Any
) -> None:
    """PostgreSQL only: a prepared statement and an advisory lock outlive a rollback; the
    plugin names them in a warning and the next test starts without them."""
    _isolation_project(pytester, "rollback")
    pytester.makepyfile(test_isolation=STATE)
    result = pytester.runpytest_subprocess(
        f"--memdb-postgresql={pg_server.url('postgres', 'psycopg')}", timeout=300
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*left session state*advisory lock 0 42*prepared statements: left_over*"]
    )


def _postgres_processes() -> set[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return {line for line in out.stdout.splitlines() if "postgres" in line and "-D" in line}


@pytest.mark.slow
def test_start_runs_a_throwaway_server_and_removes_it(pytester: pytest.Pytester) -> None:
    """``start``: the header names the server's folder; after the run the folder and the
    server are gone."""
    _isolation_project(pytester, "copy")
    before = _postgres_processes()
    result = pytester.runpytest_subprocess("--memdb-postgresql=start", "-n", "2", timeout=300)
    result.assert_outcomes(passed=4)
    [line] = [line for line in result.outlines if "throwaway PostgreSQL" in line]
    folder = Path(line.split(" server in ")[1].split(" (started")[0])
    assert not folder.exists(), f"{folder} was left behind"
    left = {p for p in _postgres_processes() - before if str(folder) in p}
    assert not left, left


def test_a_bad_switch_value_names_the_option(pytester: pytest.Pytester) -> None:
    _isolation_project(pytester, "copy")
    result = pytester.runpytest_subprocess("--memdb-postgresql=mysql://x", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--memdb-postgresql is 'mysql://x': give a PostgreSQL URL*"])


def test_takeover_is_a_usage_error_at_start_saying_what_to_use(
    pytester: pytest.Pytester,
) -> None:
    """``memdb_takeover`` is SQLite's: with the switch the run stops before any test, naming
    the option, the switch and what to use instead (it errored in every test's set-up).
    ``--memdb-keep-failed`` works on PostgreSQL (``tests/test_keep_failed.py``)."""
    _isolation_project(pytester, "copy")
    ini = pytester.path / "pytest.ini"
    ini.write_text(f"{ini.read_text().rstrip()}\nmemdb_takeover = sqlite:///./app.db\n")
    args = ["--memdb-postgresql=postgresql+psycopg://nobody@/postgres?host=/nonexistent"]
    result = pytester.runpytest_subprocess(*args, timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines(
        ["*memdb_takeover in pytest.ini works on SQLite only*--memdb-postgresql*memdb_bind*"]
    )
