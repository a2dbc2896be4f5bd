"""The plugin's command-line and ini options (``pytest_addoption``), with their help text.

Imports nothing heavy: loaded by every pytest run where the plugin is installed. The
values are read and checked in :mod:`pytest_memdb.core.config`. The ini options are one table,
:data:`INI`: what is registered with pytest and what the typo check knows
(:data:`INI_OPTIONS`) cannot drift apart (0.3's hand-kept list lacked ``memdb_restore``,
so ``memdb_restor`` was answered with "Did you mean 'memdb_strict'?").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

Isolation = Literal["copy", "rollback", "session"]
ISOLATION_MODES: tuple[Isolation, ...] = ("copy", "rollback", "session")
Restore = Literal["auto", "pages", "backup"]
RESTORE_WAYS: tuple[Restore, ...] = ("auto", "pages", "backup")


@dataclass(frozen=True)
class IniOption:
    """One ini option: what ``parser.addini`` is given."""

    name: str
    help: str
    type: Literal["linelist", "bool"] | None = None
    """None: a string."""
    default: str | bool | tuple[str, ...] = ""


def add_options(parser: pytest.Parser) -> None:
    """Every command-line and ini option, with its help text (``pytest --help`` shows them)."""
    for option in INI:
        default = list(option.default) if isinstance(option.default, tuple) else option.default
        parser.addini(option.name, option.help, type=option.type, default=default)
    group = parser.getgroup("memdb", "in-memory SQLite databases for tests (pytest-memdb)")
    group.addoption(
        "--memdb-file",
        dest="memdb_file",
        metavar="PATH",
        help="SQLite fixture file to copy into memory (overrides the memdb_file ini option; "
        "a relative path is relative to the current directory).",
    )
    group.addoption(
        "--memdb-metadata",
        dest="memdb_metadata",
        metavar="MODULE:NAME",
        help="DeclarativeBase subclass or MetaData whose tables the template gets "
        "(overrides memdb_metadata), e.g. myapp.models:Base.",
    )
    group.addoption(
        "--memdb-isolation",
        dest="memdb_isolation",
        metavar="MODE",
        help=f"How tests are kept apart: {', '.join(ISOLATION_MODES)} "
        "(overrides memdb_isolation; default copy).",
    )
    group.addoption(
        "--memdb-echo",
        dest="memdb_echo",
        action="store_true",
        default=False,
        help="Log every SQL statement of memdb engines (SQLAlchemy echo=True).",
    )
    group.addoption(
        "--memdb-keep-failed",
        dest="memdb_keep_failed",
        metavar="DIR",
        help="Write the database of each failing test to DIR/<test id>.sqlite, as it was "
        "at the failure (on PostgreSQL: DIR/<test id>.sql, by pg_dump).",
    )
    group.addoption(
        "--memdb-cache",
        dest="memdb_cache",
        action="store_true",
        default=False,
        help="Keep built templates in pytest's cache folder and reuse them across xdist "
        "workers and runs until an input changes (overrides memdb_cache).",
    )
    group.addoption(
        "--memdb-postgresql",
        dest="memdb_postgresql",
        metavar="URL",
        help="Run the memdb databases on PostgreSQL instead of in-memory SQLite: a server's "
        "URL (postgresql+psycopg://user@host/postgres), or 'start' for a throwaway server "
        "the plugin starts and removes (overrides memdb_postgresql).",
    )
    group.addoption(
        "--memdb-rebuild",
        dest="memdb_rebuild",
        action="store_true",
        default=False,
        help="Build every cached template again (once per run) and replace it in the cache.",
    )


INI: tuple[IniOption, ...] = (
    IniOption(
        "memdb_file",
        "SQLite fixture file copied into memory once per session; relative to the ini "
        "file's folder.",
        default="",
    ),
    IniOption(
        "memdb_metadata",
        "package.module:Name of a DeclarativeBase subclass or MetaData, importable from the "
        "ini file's folder: its tables are created in the template (after memdb_file).",
        default="",
    ),
    IniOption(
        "memdb_load",
        "Seed steps run once on the template, in one transaction: .sql files (relative to "
        "the ini file's folder) or package.module:callable taking a sync Connection.",
        type="linelist",
        default=(),
    ),
    IniOption(
        "memdb_pragmas",
        "name=value SQLite pragmas set on every connection, one per line (e.g. foreign_keys=ON).",
        type="linelist",
        default=(),
    ),
    IniOption(
        "memdb_isolation",
        "copy (a fresh copy per test, default), rollback (a transaction rolled back after "
        "each test) or session (one database for the session).",
        default="copy",
    ),
    IniOption("memdb_echo", "Log the SQL of memdb engines.", type="bool", default=False),
    IniOption(
        "memdb_bind",
        "package.module:attr of the app's Engine, AsyncEngine, sessionmaker, "
        "async_sessionmaker, scoped_session or async_scoped_session, one per line: pointed at "
        "each test's database while it runs, put back after.",
        type="linelist",
        default=(),
    ),
    IniOption(
        "memdb_session_class",
        "module:Class of an AsyncSession subclass for every async session the plugin makes "
        "(default: SQLModel's when memdb_metadata is SQLModel's, else AsyncSession).",
        default="",
    ),
    IniOption(
        "memdb_sync_session_class",
        "module:Class of a Session subclass for every sync session the plugin makes.",
        default="",
    ),
    IniOption(
        "memdb_alembic",
        "Path to an alembic.ini (relative to the ini file's folder): its migrations build the "
        "template, after memdb_file and before memdb_load (needs pytest-memdb[alembic]).",
        default="",
    ),
    IniOption(
        "memdb_alembic_revision",
        "The revision memdb_alembic migrates the template to (default head).",
        default="head",
    ),
    IniOption(
        "memdb_cache",
        "Keep built templates in pytest's cache folder, keyed by everything that built them: "
        "xdist workers build each once between them, later runs reuse it.",
        type="bool",
        default=False,
    ),
    IniOption(
        "memdb_takeover",
        "SQLite URLs the suite's own engines use (sqlite:///./test.db; * for any characters: "
        "sqlite+aiosqlite:///*), one per line: a connection to one of them made while a test "
        "runs opens that test's memdb database instead, in every isolation mode; one made "
        "outside a test opens a scratch copy of the template that no test sees.",
        type="linelist",
        default=(),
    ),
    IniOption(
        "memdb_restore",
        "How copy and rollback put the working database back after a test that wrote: "
        "auto (the default: only the pages it wrote, where SQLite's VFS interface allows; "
        "else a backup of the whole template), pages (the same, or a usage error where not "
        "available) or backup (the whole template, as in 0.3).",
        default="auto",
    ),
    IniOption(
        "memdb_factories",
        "Modules (package.module, importable from the ini file's folder), one per line: "
        "their factory_boy SQLAlchemyModelFactory and polyfactory SQLAlchemyFactory "
        "factories write through each test's session, and are put back after (needs "
        "pytest-memdb[factories]).",
        type="linelist",
        default=(),
    ),
    IniOption(
        "memdb_postgresql",
        "Run the memdb databases on PostgreSQL instead of in-memory SQLite (the default): a "
        "server's URL (postgresql+psycopg://user@host/postgres: the plugin makes and drops "
        "its own databases there), or 'start' for a throwaway server the plugin starts and "
        "removes (needs PostgreSQL's server binaries and pytest-memdb[postgresql]).",
        default="",
    ),
    IniOption(
        "memdb_strict",
        "Fail a test that opens, through SQLAlchemy, a SQLite database that is not one of its "
        "memdb databases (an engine a swap missed, the app's real file).",
        type="bool",
        default=False,
    ),
)
"""Every ini option, registered with pytest by :func:`add_options`."""
INI_OPTIONS: tuple[str, ...] = tuple(option.name for option in INI)
"""Their names: any other ``memdb_*`` key in the ini file is a typo
(:func:`pytest_memdb.core.config.check_ini_keys`)."""
BOOL_INI_OPTIONS: tuple[str, ...] = tuple(option.name for option in INI if option.type == "bool")
