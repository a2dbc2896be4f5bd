"""Mistakes a new user makes, as they make them, and the messages that explain them.

Each inner run is the user's project as it was reported: an async test with pytest-asyncio
left in strict mode, a session fixture asking for ``memdb_session``, anyio tests on trio.
Each checks the whole message the plugin prints (rendered from
:mod:`pytest_memdb.messages`, with the user's names), and that the suites that were set
up right (marked tests, auto mode, anyio's plugin on asyncio, layers) still pass.
"""

from __future__ import annotations

import pytest

from pytest_memdb.messages import ASYNC_TEST_NOT_RUN, ASYNCIO_ONLY, SCOPE_MISMATCH
from tests.helpers import write_ini

INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
pytestmark = pytest.mark.usefixtures("app_db")

COUNT = """
from sqlalchemy import text


async def count(session):
    return (await session.execute(text("SELECT count(*) FROM user"))).scalar()
"""


def test_an_async_test_no_plugin_runs_says_what_to_set(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", asyncio_mode="strict")
    pytester.makepyfile(
        test_unmarked=COUNT
        + """
async def test_counts(memdb_session):
    assert await count(memdb_session) == 3


async def test_engine(memdb_engine):
    pass


async def test_not_ours():
    pass
""",
        test_marked=COUNT
        + """
import pytest


@pytest.mark.asyncio
async def test_marked(memdb_session):
    assert await count(memdb_session) == 3


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_anyio(memdb_session):
    assert await count(memdb_session) == 3
""",
    )

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=2, failed=3)
    output = result.stdout.str()
    for test, fixtures in (
        ("test_unmarked.py::test_counts", "memdb_session"),
        ("test_unmarked.py::test_engine", "memdb_engine"),
    ):
        assert ASYNC_TEST_NOT_RUN(test=test, fixtures=fixtures) in output
    # A test without memdb keeps pytest's own message: it is not the plugin's business.
    # (in the failure sections: the short summary repeats it in full when CI is set)
    sections = output.split("short test summary info")[0]
    assert sections.count("async def functions are not natively supported") == 1
    result.stdout.fnmatch_lines(["*_ test_not_ours _*", "async def functions are not natively*"])


def test_auto_mode_and_anyio_suites_are_untouched(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(
        test_auto=COUNT
        + """
import pytest


async def test_auto(memdb_session):
    assert await count(memdb_session) == 3


@pytest.fixture
def anyio_backend():
    return ("asyncio", {})


@pytest.mark.anyio
async def test_anyio(memdb_session, anyio_backend):
    assert await count(memdb_session) == 3
"""
    )

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*pytest-memdb:*")


def test_a_scoped_fixture_asking_for_a_test_database_points_at_the_layers(
    pytester: pytest.Pytester,
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makeconftest(
        """
        import pytest


        @pytest.fixture(scope="session")
        def authors(memdb_session):
            return []


        @pytest.fixture(scope="session")
        def everything(memdb_module):
            return []


        @pytest.fixture(scope="package")
        def package_data(memdb):
            return []


        @pytest.fixture(scope="module")
        def module_rows(memdb_module):  # right: through the module's layer
            with memdb_module.sync_session() as session:
                session.execute(__import__("sqlalchemy").text(
                    "INSERT INTO user (name) VALUES ('zoe')"
                ))
                session.commit()
        """
    )
    pytester.makepyfile(
        test_scopes=COUNT
        + """
async def test_authors(authors):
    pass


async def test_everything(everything):
    pass


async def test_package(package_data):
    pass


async def test_through_the_layer(module_rows, memdb_session):
    assert await count(memdb_session) == 4
"""
    )

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=1, errors=3)
    output = result.stdout.str()
    expected = [
        SCOPE_MISMATCH(
            scope="session",
            fixture="authors",
            wanted="memdb_session",
            wanted_scope="function",
            layer_scope="session",
            layer="memdb_suite",
        ),
        SCOPE_MISMATCH(
            scope="session",
            fixture="everything",
            wanted="memdb_module",
            wanted_scope="module",
            layer_scope="session",
            layer="memdb_suite",
        ),
        SCOPE_MISMATCH(
            scope="package",
            fixture="package_data",
            wanted="memdb",
            wanted_scope="function",
            layer_scope="module",
            layer="memdb_module",
        ),
    ]
    for message in expected:
        assert message in output
    assert "You tried to access" not in output  # pytest's own ScopeMismatch text


def test_anyio_on_trio_says_memdb_runs_on_asyncio_only(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", asyncio_mode="strict")
    pytester.makepyfile(
        test_backends=COUNT
        + """
import pytest

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio", ("trio", {})])
async def test_counts(memdb_session, anyio_backend):
    assert await count(memdb_session) == 3
"""
    )

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=1, errors=2)
    output = result.stdout.str()
    for backend in ("trio", "anyio_backend2"):
        test = f"test_backends.py::test_counts[{backend}]"
        assert ASYNCIO_ONLY(test=test, backend="trio") in output
    assert "no current event loop" not in output.replace('"There is no current event loop"', "")
