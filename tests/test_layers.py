"""Layers: data set up once per session, module or class, with every test still isolated.

Real pytest runs on a real template (three users, from the models and a seed script), in
every isolation mode, in order, under pytest-randomly and under xdist's ``--dist load``
(which interleave modules, so layers are torn down and built again), on SQLite and on
PostgreSQL (the ``switch`` fixture). Each inner test asserts what it sees itself.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import SLOW_ON_POSTGRESQL, USERS_MODELS, write_seeded_ini

MODELS = USERS_MODELS

CONFTEST = """
    import pytest
    from sqlalchemy import text

    from models import User

    BASE = ["ada", "brian", "grace"]


    @pytest.fixture(scope="session")
    def suite_rows(memdb_suite):
        with memdb_suite.sync_session() as session:
            session.add(User(name="suite"))
            session.commit()


    def names_sync(session):
        return list(session.execute(text("SELECT name FROM app_user ORDER BY id")).scalars())


    async def names(session):
        result = await session.execute(text("SELECT name FROM app_user ORDER BY id"))
        return list(result.scalars())
"""

MODULE_A = """
    import pytest
    import pytest_asyncio
    from sqlalchemy import text

    from conftest import BASE, names, names_sync
    from models import User

    def module_rows(*asked):
        # A test sees the rows of exactly the layer fixtures it asks for, whatever ran before.
        return [*BASE, "suite", "mod0", "mod1", *asked]


    @pytest.fixture(scope="module")
    def module_users(memdb_module, suite_rows):
        with memdb_module.sync_session() as session:
            users = [User(name="mod0"), User(name="mod1")]
            session.add_all(users)
            session.commit()
        return users


    @pytest_asyncio.fixture(scope="module", loop_scope="module")
    async def module_async_row(memdb_module, module_users):
        async with memdb_module.session() as session:
            row = User(name="async-mod")
            session.add(row)
            await session.commit()
        return row


    @pytest.fixture(scope="class")
    def class_row(memdb_class, module_users, module_async_row):
        # asks for every module fixture whose rows the module layer holds by then
        with memdb_class.sync_session() as session:
            session.add(User(name="cls"))
            session.commit()


    async def test_a1_sees_the_module_layer(memdb, memdb_session, module_users):
        assert await names(memdb_session) == module_rows()
        # The layer's objects: detached, with their ids and loaded attributes.
        assert [u.id for u in module_users] == [5, 6]
        assert module_users[1].name == "mod1"
        memdb_session.add(User(name="a1"))
        await memdb_session.commit()
        assert await names(memdb_session) == [*module_rows(), "a1"]


    async def test_a2_does_not_see_a1(memdb, memdb_session, module_users):
        seen = await names(memdb_session)
        if memdb.isolation == "session":
            assert seen[:6] == module_rows()[:6]
        else:
            assert seen == module_rows()


    def test_a3_sync_test_sees_the_module_layer(memdb, memdb_sync_session, module_users):
        seen = names_sync(memdb_sync_session)
        if memdb.isolation != "session":
            assert seen == module_rows()
        memdb_sync_session.execute(text("DELETE FROM app_user"))
        memdb_sync_session.commit()


    def test_a4_without_the_layer_sees_the_template(memdb, memdb_sync_session):
        seen = names_sync(memdb_sync_session)
        if memdb.isolation != "session":
            assert seen == BASE


    async def test_a5_a_layer_fixture_set_up_late(memdb, memdb_session, module_async_row):
        seen = await names(memdb_session)
        if memdb.isolation != "session":
            assert seen == module_rows("async-mod")
        assert module_async_row.name == "async-mod" and module_async_row.id == 7


    class TestClassLayer:
        async def test_c1_sees_module_and_class_layers(self, memdb, memdb_session, class_row):
            if memdb.isolation != "session":
                assert await names(memdb_session) == [*module_rows("async-mod"), "cls"]
            await memdb_session.execute(text("UPDATE app_user SET name = 'changed'"))
            await memdb_session.commit()

        def test_c2_does_not_see_c1(self, memdb, memdb_sync_session, class_row):
            if memdb.isolation != "session":
                assert names_sync(memdb_sync_session) == [*module_rows("async-mod"), "cls"]


    async def test_a6_the_class_layer_is_gone(memdb, memdb_session, module_async_row):
        if memdb.isolation != "session":
            assert await names(memdb_session) == module_rows("async-mod")
"""

MODULE_B = """
    from conftest import BASE, names, names_sync


    async def test_b1_another_module_sees_no_module_layer(memdb, memdb_session):
        if memdb.isolation != "session":
            assert await names(memdb_session) == BASE


    def test_b2_the_suite_layer(memdb, memdb_sync_session, suite_rows):
        if memdb.isolation != "session":
            assert names_sync(memdb_sync_session) == [*BASE, "suite"]
"""


def _project(pytester: pytest.Pytester, switch: list[str], isolation: str) -> None:
    write_seeded_ini(pytester, switch, memdb_isolation=isolation)
    pytester.makepyfile(
        models=MODELS, conftest=CONFTEST, test_layer_a=MODULE_A, test_layer_b=MODULE_B
    )


TESTS = 10


@pytest.mark.parametrize("switch", SLOW_ON_POSTGRESQL, indirect=True)
@pytest.mark.parametrize("isolation", ["copy", "rollback", "session"])
def test_layers_in_order(pytester: pytest.Pytester, switch: list[str], isolation: str) -> None:
    _project(pytester, switch, isolation)
    result = pytester.runpytest_subprocess(timeout=300)
    result.assert_outcomes(passed=TESTS)


@pytest.mark.parametrize("switch", SLOW_ON_POSTGRESQL, indirect=True)
@pytest.mark.parametrize("isolation", ["copy", "rollback"])
@pytest.mark.parametrize("seed", ["1", "2", "3"])
def test_layers_under_pytest_randomly(
    pytester: pytest.Pytester, switch: list[str], isolation: str, seed: str
) -> None:
    _project(pytester, switch, isolation)
    result = pytester.runpytest_subprocess("-p", "randomly", f"--randomly-seed={seed}", timeout=300)
    result.assert_outcomes(passed=TESTS)
    result.stdout.fnmatch_lines([f"Using --randomly-seed={seed}"])


@pytest.mark.parametrize("switch", SLOW_ON_POSTGRESQL, indirect=True)
@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_layers_under_xdist_dist_load(
    pytester: pytest.Pytester, switch: list[str], isolation: str
) -> None:
    """``--dist load`` hands tests of one module to both workers, interleaved with the
    other module's: each worker builds (and rebuilds) the layers it needs."""
    _project(pytester, switch, isolation)
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "load", timeout=300)
    result.assert_outcomes(passed=TESTS)


HOSTILE = """
    import pytest
    from sqlalchemy import text


    @pytest.fixture(scope="module")
    def rows(memdb_module):
        with memdb_module.sync_session() as session:
            session.execute(text("INSERT INTO app_user (name) VALUES ('mod')"))
            session.commit()
        return memdb_module


    def test_1_writes_to_the_layer_itself(memdb, rows):
        with rows.sync_session() as session:
            session.execute(text("INSERT INTO app_user (name) VALUES ('sneaky')"))
            session.commit()


    def test_2_next(memdb_sync_session, rows):
        count = memdb_sync_session.execute(text("SELECT count(*) FROM app_user")).scalar_one()
        assert count == 4  # the template's three and the fixture's: test 1's was put back


    @pytest.fixture(scope="module")
    def uncommitted(memdb_module):
        session = memdb_module.sync_session()
        session.execute(text("INSERT INTO app_user (name) VALUES ('pending')"))
        yield
        session.close()


    def test_3_a_layer_left_uncommitted(memdb, uncommitted):
        pass


    @pytest.mark.memdb(load=[])  # the tables without the seed: another template
    def test_4_another_template_than_the_layer(memdb, rows):
        pass
"""


@pytest.mark.parametrize("switch", SLOW_ON_POSTGRESQL, indirect=True)
def test_a_layer_is_not_written_by_tests_and_errors_say_why(
    pytester: pytest.Pytester, switch: list[str]
) -> None:
    write_seeded_ini(pytester, switch)
    pytester.makepyfile(models=MODELS, test_hostile=HOSTILE)
    result = pytester.runpytest_subprocess("-p", "no:randomly", timeout=300)
    result.assert_outcomes(passed=1, failed=1, errors=2)
    result.stdout.fnmatch_lines(
        [  # pytest shows errors before failures
            "*the fixture uncommitted left an uncommitted write on the module layer*",
            "*this test's memdb is built from *, but its module layer (memdb_module) from "
            "another template*",
            "*the test test_hostile.py::test_1_writes_to_the_layer_itself wrote to the module "
            "layer (memdb_module)*It was put back*",
        ]
    )


WRITES = """
    import pytest
    from sqlalchemy import inspect, text


    @pytest.fixture(scope="module")
    def rows(memdb_module):
        with memdb_module.sync_session() as session:
            session.execute(text("INSERT INTO app_user (name) VALUES ('mod')"))
            session.commit()
        return memdb_module


    WRITES = {
        "update": ["UPDATE app_user SET name = 'renamed' WHERE name = 'mod'"],
        "delete": ["DELETE FROM app_user WHERE name = 'mod'"],
        "same-rows-after": [  # what is left is what was there: a write all the same
            "DELETE FROM app_user WHERE name = 'mod'",
            "INSERT INTO app_user (id, name) VALUES (4, 'mod')",
        ],
        "index": ["CREATE INDEX ix_name ON app_user (name)"],
        "column": ["ALTER TABLE app_user ADD COLUMN extra INTEGER"],
        "table": ["CREATE TABLE extra (id INTEGER)"],
        "database-state": {  # no row changes: a sequence, SQLite's header
            "postgresql": "SELECT setval('app_user_id_seq', 100)",
            "sqlite": "PRAGMA user_version = 5",
        },
    }


    WRITTEN_STATE = {"postgresql": 4, "sqlite": 0}  # the fixture's insert took id 4


    @pytest.mark.parametrize("write", sorted(WRITES))
    def test_writes_to_the_layer(memdb, rows, write):
        statements = WRITES[write]
        if isinstance(statements, dict):
            statements = [statements[rows.sync_engine.dialect.name]]
        with rows.sync_engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))


    def test_z_the_layer_and_its_tests_as_the_fixture_left_them(memdb_sync_session, rows):
        names = memdb_sync_session.execute(text("SELECT name FROM app_user ORDER BY id"))
        assert names.scalars().all() == ["ada", "brian", "grace", "mod"]
        with rows.sync_engine.connect() as conn:
            assert inspect(conn).get_table_names() == ["app_user"]
            assert [c["name"] for c in inspect(conn).get_columns("app_user")] == [
                "id", "name", "email"
            ]
            assert inspect(conn).get_indexes("app_user") == []
            if conn.dialect.name == "postgresql":
                state = "SELECT last_value FROM app_user_id_seq"
            else:
                state = "PRAGMA user_version"
            assert conn.execute(text(state)).scalar() == WRITTEN_STATE[conn.dialect.name]
"""


@pytest.mark.parametrize("switch", SLOW_ON_POSTGRESQL, indirect=True)
def test_every_kind_of_write_to_a_layer_is_caught_and_undone(
    pytester: pytest.Pytester, switch: list[str]
) -> None:
    """Rows changed, replaced by equal ones, schema changes, a sequence moved (PostgreSQL)
    or the header (SQLite): each is reported on the test that did it, and the layer is
    put back (verified on the layer itself, and on the next test's copy)."""
    write_seeded_ini(pytester, switch)
    pytester.makepyfile(models=MODELS, test_writes=WRITES)
    # -rN: no short summary (with CI set, pytest prints each message there again, whole)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-rN", timeout=300)
    result.assert_outcomes(passed=1, failed=7)
    assert result.stdout.str().count("wrote to the module layer (memdb_module)") == 7


LEAK = """
    import pytest
    from sqlalchemy import create_engine, text

    LEAKED = []


    @pytest.fixture(scope="module")
    def rows(memdb_module):
        with memdb_module.sync_session() as session:
            session.execute(text("INSERT INTO app_user (name) VALUES ('mod')"))
            session.commit()
        return memdb_module


    def test_1_leaks_a_connection_holding_the_layer(memdb, rows):
        conn = create_engine(rows.sync_url).connect()
        conn.execute(text("LOCK TABLE app_user IN ACCESS EXCLUSIVE MODE"))
        conn.execute(text("INSERT INTO app_user (name) VALUES ('leaked')"))
        LEAKED.append(conn)  # never committed, never closed


    def test_1b_leaks_one_holding_a_lock_only(memdb, rows):
        conn = create_engine(rows.sync_url).connect()
        conn.execute(text("LOCK TABLE app_user IN ACCESS EXCLUSIVE MODE"))  # no write, no xid
        LEAKED.append(conn)


    def test_2_the_next_test_sees_the_checkpoint(memdb_sync_session, rows):
        names = memdb_sync_session.execute(text("SELECT name FROM app_user ORDER BY id"))
        assert names.scalars().all() == ["ada", "brian", "grace", "mod"]


    def test_3_the_layer_is_put_back_and_usable(memdb, rows):
        with rows.sync_session() as session:
            names = session.execute(text("SELECT name FROM app_user ORDER BY id"))
            assert names.scalars().all() == ["ada", "brian", "grace", "mod"]
"""


@pytest.mark.slow  # 8-24 s on 2 cores
def test_a_connection_left_open_on_a_postgresql_layer_does_not_hold_it(
    pytester: pytest.Pytester, pg_server: Any
) -> None:
    """PostgreSQL only (SQLite cannot take a database back from a connection that holds a
    write on it: the layer is then reported broken): a test leaves a connection on the
    layer holding an uncommitted write and an exclusive lock, another one holding the lock
    alone (the layer cannot be read: that counts as a change). Each is reported, the layer is
    put back (``DROP DATABASE ... WITH (FORCE)`` ends that connection), and the next tests
    run on the checkpoint, through the layer too."""
    write_seeded_ini(pytester, [f"--memdb-postgresql={pg_server.url('postgres', 'psycopg')}"])
    pytester.makepyfile(models=MODELS, test_leak=LEAK)
    result = pytester.runpytest_subprocess("-p", "no:randomly", timeout=300)
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_1_leaks_a_connection_holding_the_layer wrote to the module layer*put back*",
            "*test_1b_leaks_one_holding_a_lock_only wrote to the module layer*put back*",
        ]
    )
