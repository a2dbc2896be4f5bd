"""``memdb_strict``: a test that opens a database that is not one of its own fails.

Imports SQLAlchemy: load lazily (only runs with ``memdb_strict = true`` import it). A swap
onto memdb misses an engine now and then (a module the README's ``memdb_bind`` did not
name, a ``create_engine`` inside a function): its tests then read and write the app's real
database, or an empty SQLite file created beside it, and may still pass. One process-wide
``do_connect`` listener on SQLAlchemy's ``Engine`` class sees every connection any engine
is about to open (the plugin's own engines use creators and do not pass through it).
While a test runs, a connection to anything but that test's memdb databases is refused
before the driver connects (before SQLite opens, or creates, the file), and the test
fails at teardown too, so an app that swallows the error cannot hide it:

* a SQLite database, on either backend (on PostgreSQL none of the test's databases is a
  SQLite one: an engine still on the app's ``sqlite:///app.db`` missed the swap);
* with ``memdb_postgresql``, a PostgreSQL database too: the app's dev database URL from its
  settings, or the server's ``postgres`` database. The test's own are known by name
  (``memdb_<run>_...``, unique per run). The plugin's own admin and build connections
  (a clone made ahead in the background while a test runs) carry its
  ``application_name`` and pass. Without the switch, PostgreSQL connections are not
  checked: they are not a SQLite swap's to judge.

Not seen: connections opened without SQLAlchemy (``sqlite3.connect``,
``psycopg.connect``), and engines with a ``creator`` of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import URL

from pytest_memdb.core.callers import caller, fixture_running
from pytest_memdb.errors import MemdbError
from pytest_memdb.messages import STRICT

Names = Callable[[], Iterable[str]]

PLUGIN_APPLICATION = "pytest-memdb"
"""The ``application_name`` of the plugin's own PostgreSQL sessions
(:data:`pytest_memdb.postgresql.clones.APPLICATION`, not imported: psycopg may be missing)."""


class StrictGuard:
    """Which databases the running test may open; what it opened besides them."""

    def __init__(self, nested: str | None = None, *, postgresql: bool = False) -> None:
        """``nested``: the ini file of the pytest run this one runs inside, if it reads the
        same one (a suite that runs its docs' tests in a subprocess): said in the message.
        ``postgresql``: the run's databases are on PostgreSQL (``memdb_postgresql``), whose
        connections are checked too."""
        self._postgresql = postgresql
        self._nested = (
            ""
            if nested is None
            else f" This pytest run was started by a test of another run of the same ini file "
            f"({nested}), which memdb_strict applies to as well: if the databases it opens are "
            "its own business (a suite that runs its docs' tests), start it with "
            "-o memdb_strict=false."
        )
        self.allowed: set[str] | None = None
        """The running test's memdb database names; None between tests (nothing checked)."""
        self.violations: list[str] = []
        self._run_wide: dict[int, Names] = {}
        """Databases of the plugin's own allowed in every test while they live (a layer's:
        its scoped fixtures build engines from its URL), as callables naming them."""
        self._next = 0
        event.listen(Engine, "do_connect", self._do_connect)

    def begin(self) -> None:
        self.allowed, self.violations = set(), []

    def allow(self, name: str) -> None:
        if self.allowed is not None:
            self.allowed.add(name)

    def allow_for_run(self, names: Names) -> Callable[[], None]:
        """Allow, in every test, the databases ``names()`` names when a connection is made
        (a layer's, once it is laid: none before), until the function returned is called
        (when they are freed)."""
        key, self._next = self._next, self._next + 1
        self._run_wide[key] = names

        def forget() -> None:
            self._run_wide.pop(key, None)

        return forget

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing checked while the plugin builds a template (a migration's own database,
        a seed step reading another file): that is not the test's doing."""
        allowed, self.allowed = self.allowed, None
        try:
            yield
        finally:
            self.allowed = allowed

    def end(self) -> list[str]:
        """Stop checking; what the test opened that it should not have."""
        found, self.allowed, self.violations = self.violations, None, []
        return found

    def close(self) -> None:
        event.remove(Engine, "do_connect", self._do_connect)
        self._run_wide.clear()

    def _is_allowed(self, matches: Callable[[str], bool]) -> bool:
        """Whether a name the test may open (its own, a live layer's) ``matches``."""
        assert self.allowed is not None
        if any(matches(name) for name in self.allowed):
            return True
        return bool(self._run_wide) and any(matches(name) for name in self._run_wide_names())

    def _run_wide_names(self) -> set[str]:
        found: set[str] = set()
        for names in list(self._run_wide.values()):
            with contextlib.suppress(Exception):  # a database being freed: none
                found.update(names())
        return found

    def _do_connect(
        self, dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> None:
        if self.allowed is None:
            return
        if dialect.name == "sqlite":
            kind = "SQLite"
            database = str(cargs[0] if cargs else cparams.get("database", ""))
            if self._is_allowed(lambda name: f"/{name}?" in database):
                return
            database = database or ":memory:"
        elif dialect.name == "postgresql" and self._postgresql:
            if cparams.get("application_name") == PLUGIN_APPLICATION:
                return  # the plugin's own: a clone made ahead, a template's build
            kind = "PostgreSQL"
            name = cparams.get("dbname") or cparams.get("database")
            if name and self._is_allowed(lambda allowed: allowed == name):
                return
            database = _postgresql_url(dialect, cparams)
        else:
            return
        fixture = fixture_running()
        own = ", ".join(sorted(self.allowed)) or "it has none"
        # memdb_takeover is SQLite's: not offered on PostgreSQL, where it stops the run
        takeover = "" if self._postgresql else ", list its URL in memdb_takeover,"
        if fixture is None:
            who, whose = "this test", f"its memdb databases ({own})"
            advice = (
                "An engine the swap onto memdb missed? Name it (or the sessionmaker that uses "
                f"it) in memdb_bind{takeover or ','} or build it from memdb_url."
            )
        else:
            who, whose = fixture, f"this test's memdb databases ({own}) nor a live layer's"
            advice = (
                "An engine the swap onto memdb missed? Name it (or the sessionmaker that uses "
                f"it) in memdb_bind{takeover.rstrip(',').replace(', list', ', or list')}; in a "
                "function-scoped fixture, build it from memdb_url; in "
                "a scoped fixture, from its layer's URL (memdb_module.url or .sync_url, "
                "memdb_class's, memdb_suite's)."
            )
        message = STRICT(
            who=who,
            kind=kind,
            database=database,
            whose=whose,
            where=caller(),
            advice=advice,
            nested=self._nested,
        )
        self.violations.append(message)
        raise MemdbError(message)


def _postgresql_url(dialect: Any, cparams: dict[str, Any]) -> str:
    """The URL a PostgreSQL connection was going to (no password), as a user writes it: a
    unix socket's folder in ``?host=``."""
    host, port = cparams.get("host"), cparams.get("port")
    socket = host is not None and str(host).startswith("/")
    url = URL.create(
        f"postgresql+{dialect.driver}",
        username=cparams.get("user"),
        host=None if socket else host,
        port=None if socket or port is None else int(port),
        database=cparams.get("dbname") or cparams.get("database"),
    ).render_as_string(hide_password=True)
    if socket:  # as libpq and SQLAlchemy take it, unencoded
        url += f"?host={host}" + (f"&port={port}" if port else "")
    return url
