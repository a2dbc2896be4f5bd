from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Import the plugin's heavy half once in the outer process: pytester restores sys.modules
# after every in-process run, so without this each inner run would import SQLAlchemy anew.
# The PostgreSQL backend too: SQLAlchemy's PostgreSQL dialect, imported anew by each inner
# run on PostgreSQL, warns that its functions are registered twice.
import pytest_memdb.core.registry
import pytest_memdb.postgresql.backend
import pytest_memdb.postgresql.dumps  # noqa: F401
from tests.helpers import INNER_ADDOPTS, make_sqlite

RUN_SLOW_ENV = "MEMDB_RUN_SLOW"
SLOW_REASON = (
    "slow test (soak, load, state machine, many inner runs): left out of the default run; "
    f"run it with --run-slow or {RUN_SLOW_ENV}=1 (CI does)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help=f"run the tests marked slow too (or set {RUN_SLOW_ENV}=1); CI runs them",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"slow: {SLOW_REASON}")


def run_slow(config: pytest.Config) -> bool:
    return bool(config.getoption("--run-slow")) or os.environ.get(RUN_SLOW_ENV, "") not in (
        "",
        "0",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if run_slow(config):
        return
    skip = pytest.mark.skip(reason=SLOW_REASON)
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str:
    if run_slow(config):
        return "slow tests: run (--run-slow or MEMDB_RUN_SLOW=1)"
    return f"slow tests: left out (skipped); run them with --run-slow or {RUN_SLOW_ENV}=1"


@pytest.fixture
def app_db(pytester: pytest.Pytester) -> Path:
    """A three-user fixture file inside the pytester project, at ``data/app.sqlite``."""
    return make_sqlite(pytester.path / "data" / "app.sqlite")


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester, with the installed plugins the inner runs do not need off unless a test
    turns them on (:data:`tests.helpers.INNER_ADDOPTS` says which, and why). pytester clears
    ``PYTEST_ADDOPTS`` when it is made, so it is set after."""
    monkeypatch.setenv("PYTEST_ADDOPTS", INNER_ADDOPTS)
    return pytester


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A throwaway PostgreSQL server (the plugin's own, :mod:`pytest_memdb.postgresql.server`)
    for the tests that hand inner runs ``--memdb-postgresql=URL``: started once per test
    process, when first asked for, and stopped at the end."""
    from pytest_memdb.postgresql.server import start_server

    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def switch(request: pytest.FixtureRequest) -> list[str]:
    """An inner run's arguments for one backend: nothing for SQLite, the switch to the
    ``pg_server`` fixture's server else (a test parametrized over both backends asks for it)."""
    if request.param == "sqlite":
        return []
    server = request.getfixturevalue("pg_server")
    return [f"--memdb-postgresql={server.url('postgres', 'psycopg')}"]
