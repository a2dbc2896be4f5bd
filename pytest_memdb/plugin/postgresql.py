"""The PostgreSQL switch (``memdb_postgresql``): one server for the run, shared by its xdist
workers.

The controller (or a run without xdist) gets the server ready in ``pytest_configure``: it
starts a throwaway one (``start``: :mod:`pytest_memdb.postgresql.server`, about 1.5 s here)
or takes the URL given, drops what crashed runs of the plugin left on it
(:func:`pytest_memdb.postgresql.clones.sweep`), and hands the URL and the run's id to each
worker (``workerinput``); every worker makes its own databases under its own prefix. The
server is stopped after the last cleanup, the databases dropped before it (pytest runs
cleanups last-in first-out, and the registry's is added after this one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pytest_memdb.core.config import MemdbConfig
from pytest_memdb.errors import MemdbError

if TYPE_CHECKING:
    from pytest_memdb.postgresql.backend import PgBackend

url_key = pytest.StashKey[str]()
run_id_key = pytest.StashKey[str]()
described_key = pytest.StashKey[str]()
URL_INPUT = "memdb_postgresql_url"
RUN_ID_INPUT = "memdb_postgresql_run"


def configure(config: pytest.Config, settings: MemdbConfig) -> None:
    """Get the run's server ready (the controller), or take the controller's (a worker)."""
    if settings.postgresql is None:
        return
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None and URL_INPUT in workerinput:
        config.stash[url_key] = workerinput[URL_INPUT]
        config.stash[run_id_key] = workerinput[RUN_ID_INPUT]
        return
    try:
        _install_hint()
        from pytest_memdb.postgresql.backend import new_run_id
        from pytest_memdb.postgresql.clones import role_that_cannot_create, sweep

        if settings.postgresql == "start":
            from pytest_memdb.postgresql.server import start_server

            server = start_server(stop_at_exit=True)
            config.add_cleanup(server.stop)
            url = server.url("postgres", "psycopg")
            version = server.binaries.version().replace("postgres (PostgreSQL) ", "")
            described = (
                f"a throwaway PostgreSQL {version.split()[0]} server in "
                f"{server.folder} (started in {server.startup_seconds:.1f} s)"
            )
        else:
            url = settings.postgresql
            described = f"the PostgreSQL server of {settings.postgresql_origin}"
        sweep(url)
        role = role_that_cannot_create(url)
        if role is not None:
            raise MemdbError(
                f"pytest-memdb: {settings.postgresql_origin}: the role {role!r} may not create "
                "databases, and the plugin makes one for each template and each test: "
                f"ALTER ROLE {role} CREATEDB, or give a URL whose role may."
            )
    except MemdbError as exc:
        raise pytest.UsageError(str(exc)) from None
    except Exception as exc:  # a server that cannot be reached, a bad URL
        raise pytest.UsageError(
            f"pytest-memdb: {settings.postgresql_origin}: the PostgreSQL server could not be "
            f"used: {type(exc).__name__}: {exc}"
        ) from None
    config.stash[url_key] = url
    config.stash[run_id_key] = new_run_id()
    config.stash[described_key] = f"memdb: on {described} ({settings.postgresql_origin})"


def _install_hint() -> None:
    """psycopg is an extra: say which one when it is missing."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise MemdbError(
            "pytest-memdb: memdb_postgresql needs psycopg: pip install 'pytest-memdb[postgresql]'"
        ) from None


def configure_node(config: pytest.Config, node: Any) -> None:
    """An xdist worker gets the controller's server and run id."""
    url = config.stash.get(url_key, None)
    if url is not None:
        node.workerinput[URL_INPUT] = url
        node.workerinput[RUN_ID_INPUT] = config.stash[run_id_key]


def header(config: pytest.Config) -> str | None:
    """The report header's line about the server, if the switch is on."""
    return config.stash.get(described_key, None)


def backend_factory(config: pytest.Config, settings: MemdbConfig, worker: str) -> Any:
    """What makes the run's :class:`~pytest_memdb.postgresql.backend.PgBackend` (at the
    first template), or None on SQLite."""
    url = config.stash.get(url_key, None)
    if url is None:
        return None
    run_id = config.stash[run_id_key]

    def make() -> PgBackend:
        from pytest_memdb.postgresql.backend import PgBackend

        return PgBackend(url, settings, run_id=run_id, worker=worker)

    return make
