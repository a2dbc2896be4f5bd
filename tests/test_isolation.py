"""Isolation guarantees of pytest-memdb, proven by running real inner test suites.

Every inner test prints one ``MEMDB`` line (its label, worker, isolation mode, database
name, template name and what it saw) and asserts on the data itself. The outer tests
check the outcomes, the ``MEMDB`` lines, and the names across tests and workers.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers import write_ini

pytestmark = pytest.mark.usefixtures("app_db")

CHECKS = """
    import pytest
    from sqlalchemy import text

    from pytest_memdb.plugin.state import registry_key, settings_key

    INSERT = text("INSERT INTO user (name, email) VALUES (:name, :email)")
    BASE = ["ada", "brian", "grace"]


    def insert(session, name):
        return session.execute(INSERT, {"name": name, "email": f"{name}@example.com"})


    async def names(session):
        rows = await session.execute(text("SELECT name FROM user ORDER BY id"))
        return list(rows.scalars())


    async def tables(session):
        rows = await session.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        )
        return list(rows.scalars())


    async def user_version(session):
        return (await session.execute(text("PRAGMA user_version"))).scalar_one()


    async def state(session):
        return {
            "count": len(await names(session)),
            "tables": ",".join(await tables(session)),
            "user_version": await user_version(session),
        }


    def sync_state(session):
        return {
            "count": session.execute(text("SELECT count(*) FROM user")).scalar_one(),
            "tables": ",".join(
                session.execute(
                    text("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                ).scalars()
            ),
            "user_version": session.execute(text("PRAGMA user_version")).scalar_one(),
        }


    def worker(request):
        return getattr(request.config, "workerinput", {}).get("workerid", "main")


    def template_name(request):
        registry = request.config.stash[registry_key]
        target = request.config.stash[settings_key].target_for(request.node)
        return registry.template(target).database.name


    def report(label, request, memdb, **seen):
        fields = {
            "worker": worker(request),
            "isolation": memdb.isolation,
            "name": memdb.name,
            "template": template_name(request),
            **seen,
        }
        print("MEMDB", label, " ".join(f"{key}={value}" for key, value in fields.items()))
"""

PRISTINE = "count=3 tables=user user_version=0"
LINE = re.compile(r"^MEMDB (?P<label>\S+) (?P<fields>.*)$")


def memdb_lines(lines: list[str]) -> dict[str, dict[str, str]]:
    """The ``MEMDB`` lines of an inner run, by label (each label must be printed once)."""
    found: dict[str, dict[str, str]] = {}
    for line in lines:
        match = LINE.match(line)
        if match:
            assert match["label"] not in found, f"label printed twice: {line}"
            found[match["label"]] = dict(field.split("=", 1) for field in match["fields"].split())
    return found


def make_project(pytester: pytest.Pytester, **ini: str) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", **ini)
    pytester.makepyfile(memdb_checks=CHECKS)


# --- copy mode ---------------------------------------------------------------------------

COPY_TESTS = """
    from sqlalchemy import text

    from memdb_checks import insert, report, state, sync_state


    async def test_1_dirties_rows_schema_and_header(request, memdb, memdb_session):
        assert memdb.isolation == "copy"
        await insert(memdb_session, "dirty")
        await memdb_session.commit()
        await memdb_session.execute(text("CREATE TABLE extra (id INTEGER PRIMARY KEY)"))
        await memdb_session.execute(text("INSERT INTO extra DEFAULT VALUES"))
        await memdb_session.execute(text("PRAGMA user_version=7"))
        await memdb_session.commit()
        seen = await state(memdb_session)
        report("dirty", request, memdb, **seen)
        assert seen == {"count": 4, "tables": "extra,user", "user_version": 7}


    async def test_2_sees_a_pristine_copy(request, memdb, memdb_session):
        seen = await state(memdb_session)
        report("clean", request, memdb, **seen)
        assert seen == {"count": 3, "tables": "user", "user_version": 0}


    def test_3_sync_session_dirties_too(request, memdb, memdb_sync_session):
        memdb_sync_session.execute(text("INSERT INTO user (name) VALUES ('sync')"))
        memdb_sync_session.execute(text("CREATE TABLE extra_sync (id INTEGER)"))
        memdb_sync_session.commit()
        seen = sync_state(memdb_sync_session)
        report("sync-dirty", request, memdb, **seen)
        assert seen["count"] == 4


    async def test_4_still_pristine(request, memdb, memdb_session):
        seen = await state(memdb_session)
        report("clean-again", request, memdb, **seen)
        assert seen == {"count": 3, "tables": "user", "user_version": 0}
"""


def test_copy_mode_discards_rows_ddl_and_pragmas_between_tests(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    pytester.makepyfile(test_copy=COPY_TESTS)
    result = pytester.runpytest("-rP")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "MEMDB dirty worker=main isolation=copy * count=4 tables=extra,user user_version=7",
            f"MEMDB clean worker=main isolation=copy * {PRISTINE}",
            "MEMDB sync-dirty worker=main isolation=copy * count=4 tables=extra_sync,user *",
            f"MEMDB clean-again worker=main isolation=copy * {PRISTINE}",
        ],
        consecutive=False,
    )
    lines = memdb_lines(result.outlines)
    names = [fields["name"] for fields in lines.values()]
    assert len(names) == 4
    # The copies take turns under one name (so the engines and their statement cache are
    # reused); the data above shows each test got a fresh one.
    assert len(set(names)) == 1, names
    templates = {fields["template"] for fields in lines.values()}
    assert len(templates) == 1
    for name in [*names, *templates]:
        assert "-main-" in name, name
    assert templates.isdisjoint(names), "a copy-mode test worked on the template itself"


LEAKY_TESTS = """
    import sqlite3

    from sqlalchemy import text

    LEAKED = []


    async def test_1_leaks_a_connection_with_an_open_write(memdb, memdb_session):
        leak = sqlite3.connect(memdb.database.sqlite_uri, uri=True, check_same_thread=False)
        leak.execute("INSERT INTO user (name) VALUES ('leaked')")  # a write lock, never ended
        LEAKED.append((memdb.name, leak))


    async def test_2_still_gets_a_fresh_copy(memdb, memdb_session):
        leaked_name, leak = LEAKED[0]
        assert memdb.name != leaked_name
        count = (await memdb_session.execute(text("SELECT count(*) FROM user"))).scalar()
        assert count == 3
        leak.close()


    async def test_3_keeps_the_new_working_database(memdb, memdb_session):
        # The abandoned one was left to the leak; the new one serves from now on.
        assert memdb.name != LEAKED[0][0]
        count = (await memdb_session.execute(text("SELECT count(*) FROM user"))).scalar()
        assert count == 3
"""


def test_copy_mode_goes_around_a_connection_an_earlier_test_leaked(
    pytester: pytest.Pytester,
) -> None:
    """A leaked connection must not hang the next test (a backup would wait on its lock)."""
    make_project(pytester)
    pytester.makepyfile(test_leaky=LEAKY_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=3)


# --- rollback mode -----------------------------------------------------------------------

ROLLBACK_TESTS = """
    import pytest
    from sqlalchemy import text

    from memdb_checks import BASE, insert, names, report, state, sync_state


    async def test_01_savepoint_leak_trap(request, memdb, memdb_session):
        assert memdb.isolation == "rollback"
        session = memdb_session
        await insert(session, "committed")
        await session.commit()
        nested = await session.begin_nested()
        await insert(session, "nested")
        await nested.commit()
        await session.commit()
        await insert(session, "uncommitted")
        await session.rollback()
        seen = await names(session)
        report("trap", request, memdb, count=len(seen))
        assert seen == [*BASE, "committed", "nested"]


    async def test_02_nothing_leaked(request, memdb, memdb_session):
        seen = await state(memdb_session)
        report("after-trap", request, memdb, **seen)
        assert seen == {"count": 3, "tables": "user", "user_version": 0}


    async def test_03_nested_first_then_commit(request, memdb, memdb_session):
        # SQLAlchemy's pysqlite trap: a SAVEPOINT as the first statement, released, commits.
        session = memdb_session
        async with session.begin_nested():
            await insert(session, "nested-first")
        await session.commit()
        async with memdb.session() as other:
            seen = await names(other)
        report("nested-first", request, memdb, count=len(seen))
        assert seen == [*BASE, "nested-first"]


    async def test_04_nothing_leaked(request, memdb, memdb_session):
        seen = await state(memdb_session)
        report("after-nested-first", request, memdb, **seen)
        assert seen["count"] == 3


    async def test_05_commit_keeps_rollback_drops(request, memdb, memdb_session):
        session = memdb_session
        await insert(session, "kept")
        await session.commit()
        await insert(session, "dropped")
        assert await names(session) == [*BASE, "kept", "dropped"]
        await session.rollback()
        seen = await names(session)
        async with memdb.session() as other:
            assert await names(other) == seen
        report("commit-then-rollback", request, memdb, rows="+".join(seen[3:]))
        assert seen == [*BASE, "kept"]


    async def test_06_ddl_and_pragma(request, memdb, memdb_session):
        session = memdb_session
        await session.execute(text("CREATE TABLE extra (id INTEGER PRIMARY KEY)"))
        await session.execute(text("INSERT INTO extra DEFAULT VALUES"))
        await session.execute(text("PRAGMA user_version=7"))
        await insert(session, "with-ddl")
        await session.commit()
        seen = await state(session)
        report("ddl", request, memdb, **seen)
        assert seen == {"count": 4, "tables": "extra,user", "user_version": 7}


    async def test_07_ddl_undone(request, memdb, memdb_session):
        seen = await state(memdb_session)
        report("after-ddl", request, memdb, **seen)
        assert seen == {"count": 3, "tables": "user", "user_version": 0}


    def test_08_sync_session(request, memdb, memdb_sync_session):
        assert memdb.isolation == "rollback"
        session = memdb_sync_session
        session.execute(text("INSERT INTO user (name) VALUES ('sync-kept')"))
        session.commit()
        with session.begin_nested():
            session.execute(text("INSERT INTO user (name) VALUES ('sync-nested')"))
        session.commit()
        session.execute(text("INSERT INTO user (name) VALUES ('sync-dropped')"))
        session.rollback()
        seen = list(session.execute(text("SELECT name FROM user ORDER BY id")).scalars())
        report("sync", request, memdb, rows="+".join(seen[3:]))
        assert seen == [*BASE, "sync-kept", "sync-nested"]


    def test_09_sync_nothing_leaked(request, memdb, memdb_sync_session):
        seen = sync_state(memdb_sync_session)
        report("after-sync", request, memdb, **seen)
        assert seen == {"count": 3, "tables": "user", "user_version": 0}


    async def test_10_leaves_a_session_open_mid_write(request, memdb, memdb_session):
        await insert(memdb_session, "committed")
        await memdb_session.commit()
        await insert(memdb_session, "pending")  # neither committed nor rolled back
        report("open-write", request, memdb, count=len(await names(memdb_session)))


    async def test_11_can_write_after_an_open_write(request, memdb, memdb_session):
        before = len(await names(memdb_session))
        await insert(memdb_session, "fresh")
        await memdb_session.commit()
        report("after-open-write", request, memdb, before=before)
        assert before == 3
        assert await names(memdb_session) == [*BASE, "fresh"]


    @pytest.mark.memdb(isolation="copy")
    async def test_12_template_is_pristine(request, memdb, memdb_session):
        assert memdb.isolation == "copy"
        seen = await state(memdb_session)
        report("template-copy", request, memdb, **seen)
        assert seen == {"count": 3, "tables": "user", "user_version": 0}
"""


@pytest.mark.parametrize("how", ["ini", "marker"])
def test_rollback_mode_undoes_commits_savepoints_and_ddl(
    pytester: pytest.Pytester, how: str
) -> None:
    if how == "ini":
        make_project(pytester, memdb_isolation="rollback")
        body = ROLLBACK_TESTS
    else:
        make_project(pytester, memdb_isolation="session")
        body = ROLLBACK_TESTS.replace(
            "\n    from memdb_checks",
            '\n    pytestmark = pytest.mark.memdb(isolation="rollback")\n    from memdb_checks',
            1,
        )
    pytester.makepyfile(test_rollback=body)
    result = pytester.runpytest("-rP")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(
        [
            "MEMDB trap worker=main isolation=rollback * count=5",
            f"MEMDB after-trap worker=main isolation=rollback * {PRISTINE}",
            "MEMDB nested-first * count=4",
            "MEMDB after-nested-first * count=3 *",
            "MEMDB commit-then-rollback * rows=kept",
            "MEMDB ddl * count=4 tables=extra,user user_version=7",
            f"MEMDB after-ddl * {PRISTINE}",
            "MEMDB sync worker=main isolation=rollback * rows=sync-kept+sync-nested",
            f"MEMDB after-sync * {PRISTINE}",
            "MEMDB open-write * count=5",
            "MEMDB after-open-write * before=3",
            f"MEMDB template-copy worker=main isolation=copy * {PRISTINE}",
        ],
        consecutive=False,
    )
    lines = memdb_lines(result.outlines)
    rollback = [f for label, f in lines.items() if label != "template-copy"]
    assert len(rollback) == 11
    template = lines["trap"]["template"]
    # Rollback-mode tests work inside a rolled-back transaction on the working database
    # they share with copy-mode tests, never on the template.
    assert all(f["template"] == template != f["name"] for f in rollback)
    assert {f["name"] for f in rollback} == {lines["template-copy"]["name"]}
    assert lines["template-copy"]["template"] == template


# --- session mode ------------------------------------------------------------------------

SESSION_TESTS = """
    import pytest

    from memdb_checks import insert, names, report


    async def test_1_writes(request, memdb, memdb_session):
        assert memdb.isolation == "session"
        await insert(memdb_session, "first")
        await memdb_session.commit()
        report("s1", request, memdb, count=len(await names(memdb_session)))


    async def test_2_sees_and_writes(request, memdb, memdb_session):
        before = len(await names(memdb_session))
        await insert(memdb_session, "second")
        await memdb_session.commit()
        report("s2", request, memdb, before=before)
        assert before == 4


    @pytest.mark.memdb(isolation="copy")
    async def test_3_copy_is_pristine(request, memdb, memdb_session):
        assert memdb.isolation == "copy"
        report("copy", request, memdb, count=len(await names(memdb_session)))
        assert await names(memdb_session) == ["ada", "brian", "grace"]


    @pytest.mark.memdb(isolation="rollback")
    async def test_4_rollback_is_pristine(request, memdb, memdb_session):
        assert memdb.isolation == "rollback"
        before = len(await names(memdb_session))
        await insert(memdb_session, "rolled-back")
        await memdb_session.commit()
        report("rollback", request, memdb, before=before)
        assert before == 3


    async def test_5_session_goes_on(request, memdb, memdb_session):
        seen = await names(memdb_session)
        report("s5", request, memdb, rows="+".join(seen[3:]))
        assert seen == ["ada", "brian", "grace", "first", "second"]
"""


def test_session_mode_persists_writes_but_copies_stay_pristine(pytester: pytest.Pytester) -> None:
    make_project(pytester, memdb_isolation="session")
    pytester.makepyfile(test_session=SESSION_TESTS)
    result = pytester.runpytest("-rP")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        [
            "MEMDB s1 worker=main isolation=session * count=4",
            "MEMDB s2 worker=main isolation=session * before=4",
            "MEMDB copy worker=main isolation=copy * count=3",
            "MEMDB rollback worker=main isolation=rollback * before=3",
            "MEMDB s5 worker=main isolation=session * rows=first+second",
        ],
        consecutive=False,
    )
    lines = memdb_lines(result.outlines)
    assert lines["s1"]["name"] == lines["s2"]["name"] == lines["s5"]["name"]
    template = lines["s1"]["template"]
    assert lines["s1"]["name"] != template, "session mode must not write to the template"
    assert lines["copy"]["name"] not in {template, lines["s1"]["name"]}
    assert lines["rollback"]["name"] == lines["copy"]["name"], "copy and rollback share one"


# --- concurrency -------------------------------------------------------------------------

CONCURRENCY_TESTS = """
    import asyncio

    from sqlalchemy import text

    from memdb_checks import insert, names, report

    MODE = {mode!r}


    async def test_1_fifty_concurrent_writers(request, memdb, memdb_sessionmaker):
        assert memdb.isolation == MODE

        async def writer(i):
            async with memdb_sessionmaker() as session:
                await session.execute(text("SELECT count(*) FROM user"))
                await insert(session, f"writer{{i}}")
                await session.commit()

        await asyncio.wait_for(asyncio.gather(*(writer(i) for i in range(50))), timeout=60)
        async with memdb_sessionmaker() as session:
            seen = await names(session)
        writers = sorted(name for name in seen if name.startswith("writer"))
        report("writers", request, memdb, count=len(seen), distinct=len(set(writers)))
        assert len(seen) == 53
        assert writers == sorted(f"writer{{i}}" for i in range(50))


    async def test_2_afterwards(request, memdb, memdb_session):
        report("afterwards", request, memdb, count=len(await names(memdb_session)))
"""


@pytest.mark.parametrize(("mode", "afterwards"), [("copy", 3), ("rollback", 3), ("session", 53)])
def test_fifty_concurrent_writers_in_one_test(
    pytester: pytest.Pytester, mode: str, afterwards: int
) -> None:
    make_project(pytester, memdb_isolation=mode)
    pytester.makepyfile(test_concurrency=CONCURRENCY_TESTS.format(mode=mode))
    # A subprocess with a timeout: a deadlock, or leaked non-daemon driver threads that
    # keep the interpreter from exiting, fail this test instead of hanging the suite.
    result = pytester.runpytest_subprocess("-rP", timeout=120)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"MEMDB writers worker=main isolation={mode} * count=53 distinct=50",
            f"MEMDB afterwards worker=main isolation={mode} * count={afterwards}",
        ],
        consecutive=False,
    )
    result.stdout.no_fnmatch_line("*is locked*")
    result.stderr.no_fnmatch_line("*is locked*")


# --- markers -----------------------------------------------------------------------------

CLASS_MARKER_TESTS = """
    import pytest

    from memdb_checks import insert, names, report


    @pytest.mark.memdb(isolation="rollback")
    class TestRollbackClass:
        async def test_a_writes(self, request, memdb, memdb_session):
            assert memdb.isolation == "rollback"
            await insert(memdb_session, "class")
            await memdb_session.commit()
            report("class-a", request, memdb, count=len(await names(memdb_session)))

        async def test_b_sees_nothing(self, request, memdb, memdb_session):
            report("class-b", request, memdb, count=len(await names(memdb_session)))
            assert memdb.isolation == "rollback"
            assert len(await names(memdb_session)) == 3
"""

MODULE_MARKER_TESTS = """
    import pytest

    from memdb_checks import insert, names, report

    pytestmark = pytest.mark.memdb(isolation="rollback")


    async def test_c_writes(request, memdb, memdb_session):
        assert memdb.isolation == "rollback"
        await insert(memdb_session, "module")
        await memdb_session.commit()
        report("module-c", request, memdb, count=len(await names(memdb_session)))


    async def test_d_sees_nothing(request, memdb, memdb_session):
        report("module-d", request, memdb, count=len(await names(memdb_session)))
        assert memdb.isolation == "rollback"
        assert len(await names(memdb_session)) == 3
"""

INI_TESTS = """
    from memdb_checks import insert, names, report


    async def test_e_writes(request, memdb, memdb_session):
        assert memdb.isolation == "session"
        before = len(await names(memdb_session))
        await insert(memdb_session, "ini")
        await memdb_session.commit()
        report("ini-e", request, memdb, before=before)
        assert before == 3


    async def test_f_sees_it(request, memdb, memdb_session):
        report("ini-f", request, memdb, count=len(await names(memdb_session)))
        assert len(await names(memdb_session)) == 4
"""


def test_class_and_module_markers_override_the_ini(pytester: pytest.Pytester) -> None:
    make_project(pytester, memdb_isolation="session")
    pytester.makepyfile(
        test_a_class=CLASS_MARKER_TESTS,
        test_b_module=MODULE_MARKER_TESTS,
        test_c_ini=INI_TESTS,
    )
    result = pytester.runpytest("--strict-markers", "-rP")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(
        [
            "MEMDB class-a worker=main isolation=rollback * count=4",
            "MEMDB class-b worker=main isolation=rollback * count=3",
            "MEMDB module-c worker=main isolation=rollback * count=4",
            "MEMDB module-d worker=main isolation=rollback * count=3",
            "MEMDB ini-e worker=main isolation=session * before=3",
            "MEMDB ini-f worker=main isolation=session * count=4",
        ],
        consecutive=False,
    )


def test_strict_markers_is_enforced_in_the_marker_run(pytester: pytest.Pytester) -> None:
    """Control for the test above: the same run does reject a marker nobody registered."""
    make_project(pytester, memdb_isolation="session")
    pytester.makepyfile(
        test_a_class=CLASS_MARKER_TESTS.replace("mark.memdb(", "mark.memdbx("),
    )
    result = pytester.runpytest("--strict-markers")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*'memdbx' not found in `markers` configuration option*"])


# --- xdist -------------------------------------------------------------------------------

XDIST_TESTS = """
    import pytest

    from memdb_checks import insert, names, report


    @pytest.mark.parametrize("n", range(6))
    async def test_copy(request, memdb, memdb_session, n):
        before = len(await names(memdb_session))
        await insert(memdb_session, f"copy{n}")
        await memdb_session.commit()
        report(f"copy{n}", request, memdb, before=before)
        assert memdb.isolation == "copy"
        assert before == 3


    @pytest.mark.memdb(isolation="rollback")
    @pytest.mark.parametrize("n", range(2))
    async def test_rollback(request, memdb, memdb_session, n):
        before = len(await names(memdb_session))
        await insert(memdb_session, f"rollback{n}")
        await memdb_session.commit()
        report(f"rollback{n}", request, memdb, before=before)
        assert memdb.isolation == "rollback"
        assert before == 3
"""


def test_xdist_workers_get_their_own_named_databases(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    pytester.makepyfile(test_xdist=XDIST_TESTS)
    result = pytester.runpytest("-n", "2", "-rP")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(
        ["*2 workers [[]8 items[]]*", "MEMDB copy* worker=gw* isolation=copy * before=3"],
        consecutive=False,
    )
    lines = memdb_lines(result.outlines)
    assert sorted(lines) == [f"copy{n}" for n in range(6)] + ["rollback0", "rollback1"]
    assert {fields["before"] for fields in lines.values()} == {"3"}
    assert {fields["worker"] for fields in lines.values()} == {"gw0", "gw1"}
    templates: dict[str, set[str]] = {}
    for label, fields in lines.items():
        tag = f"-{fields['worker']}-"
        assert tag in fields["name"], (label, fields)
        assert tag in fields["template"], (label, fields)
        templates.setdefault(fields["worker"], set()).add(fields["template"])
        assert fields["name"] != fields["template"], (label, fields)
    # One template per worker, and the two workers' templates are different databases.
    assert all(len(names) == 1 for names in templates.values()), templates
    assert templates["gw0"] != templates["gw1"]
    # Each worker's copy-mode tests take turns under one name of their own (fresh data each
    # time, shown by before=3 above); the two workers' names differ.
    copies: dict[str, set[str]] = {}
    for label, fields in lines.items():
        if label.startswith("copy"):
            copies.setdefault(fields["worker"], set()).add(fields["name"])
    assert all(len(names) == 1 for names in copies.values()), copies
    assert copies["gw0"] != copies["gw1"]
    assert set.union(*copies.values()).isdisjoint(set.union(*templates.values()))
