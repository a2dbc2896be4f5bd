"""What a PostgreSQL template is built from, beyond the models and load steps every backend
runs (:func:`pytest_memdb.core.templates.seed`): a ``.sql`` dump or a SQLite file as
``memdb_file``, and Alembic migrations (``memdb_alembic``).

In the order SQLite builds its template (:func:`pytest_memdb.core.templates.build_template`):

1. ``memdb_file``, the template's starting content:

   * a ``.sql`` dump (``pg_dump``'s plain format, or any SQL script) runs first, on a
     connection of its own, in one transaction (:func:`run_dump`). A dump without psql
     meta-commands runs through psycopg as one script (the simple query protocol takes
     many statements; PostgreSQL's error says the line); ``pg_dump``'s ``\\restrict`` and
     ``\\unrestrict`` lines are left out (they only guard psql). One with meta-commands
     (``COPY ... FROM stdin`` and its data) runs through ``psql``, found on ``PATH`` or
     beside the server programs, with ``ON_ERROR_STOP`` and ``--single-transaction``;
     ``\\connect`` (``pg_dump --create``) is refused, since it would fill another database.
     Measured, 150,000 rows (PostgreSQL 15, 2 loaded cores): ``pg_dump``'s default
     (``COPY``) through psql 0.4-0.7 s, ``--inserts`` through psycopg 4.3-5.6 s.
     Either way the dump's session ends with it, so its ``SET``\\ s and
     ``set_config('search_path', '', false)`` do not reach the steps after it;
   * a SQLite file's rows (:func:`copy_sqlite_file`) are copied inside the seeding
     transaction: the tables are the models' (``memdb_metadata``), and the file's own,
     reflected by SQLAlchemy with generic types, for tables the models do not have
     (every table when there are no models); the rows go table by table in foreign-key
     order, read through SQLAlchemy with the models' types and written by ``COPY`` with
     their bind processing (:func:`_copy_rows`), a refused row found by halving its
     batch; integer sequences are then set past the largest id. The file is read into
     memory first, read-only and left byte-identical
     (:func:`~pytest_memdb.sqlite.loading.load_file`).

2. the Alembic migrations (:class:`PgMigrationSite`) run on the template database itself,
   by URL: it is an ordinary database until it is sealed;
3. the models' missing tables, the load steps and the hook (``seed``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy import Connection, Engine, Integer, MetaData, Table, create_engine, event, select
from sqlalchemy import text as sql_text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool, StaticPool

from pytest_memdb.core.config import Target
from pytest_memdb.core.migrations import THREAD_NAME, run_migrations
from pytest_memdb.core.templates import TemplateHook, seed
from pytest_memdb.errors import MemdbError, MemdbWarning
from pytest_memdb.messages import SEEDING_FAILED
from pytest_memdb.postgresql.clones import APPLICATION
from pytest_memdb.postgresql.rollback import conninfo
from pytest_memdb.sqlite.loading import load_file
from pytest_memdb.sqlite.memory import Borrowed, unique_name

PSQL_TIMEOUT_S = 600.0
"""The bound on one dump's run through ``psql``."""
_ROWS_PER_BATCH = 10000
_SHOWN = 200


def is_dump(path: Path) -> bool:
    """Whether ``memdb_file`` names a SQL dump (by its suffix) rather than a SQLite file."""
    return path.suffix.lower() == ".sql"


def unsupported(target: Target) -> str | None:
    """What of ``target``'s sources cannot be combined on PostgreSQL, or None."""
    if target.file is not None and not is_dump(target.file) and target.alembic is not None:
        return (
            f"pytest-memdb: {target.file_origin} is a SQLite file and {target.alembic_origin} "
            "names Alembic migrations: on PostgreSQL the migrations cannot run on a SQLite "
            "file's content. Give memdb_file as a .sql dump instead (pg_dump of a database "
            "at one of your revisions, schema and rows: the migrations upgrade it), or leave "
            "the switch off."
        )
    return None


def build(
    engine: Engine,
    target: Target,
    metadata: MetaData | None,
    *,
    base_dir: Path,
    hook: TemplateHook | None,
) -> None:
    """Fill the template database ``engine`` reaches with everything ``target`` asks for
    (see the module's docstring for the order)."""
    sqlite_file = target.file is not None and not is_dump(target.file)
    if target.file is not None and not sqlite_file:
        run_dump(engine.url, target.file, target.file_origin)
    if target.alembic is not None:
        run_migrations(target, PgMigrationSite(engine.url), metadata=metadata)
    with engine.begin() as conn:
        if sqlite_file:
            assert target.file is not None
            if metadata is not None:
                _step(f"creating the tables of {target.metadata!r}", metadata.create_all, conn)
            copy_sqlite_file(conn, target.file, target.file_origin, metadata)
            metadata = None  # created above, before the rows
        seed(conn, target, metadata, base_dir=base_dir, hook=hook)


def _step(what: str, run: Any, *args: Any) -> None:
    try:
        run(*args)
    except MemdbError:
        raise
    except Exception as exc:
        raise MemdbError(
            SEEDING_FAILED(step=f"while {what}", error=f"{type(exc).__name__}: {exc}")
        ) from exc


# --- Alembic ---------------------------------------------------------------------------


class PgMigrationSite:
    """The template database itself, by URL, for every attempt (a failed attempt's
    transaction is rolled back: nothing is left to undo)."""

    def __init__(self, url: URL) -> None:
        # env.py's own engines are then the plugin's sessions: sealing ends any it left.
        self.url = url.update_query_dict({"application_name": APPLICATION})

    def build(self) -> PgBuild:
        return PgBuild(self.url)


class PgBuild:
    """The template database, as ``env.py`` sees it."""

    def __init__(self, url: URL) -> None:
        self.url = url

    @property
    def sync_url(self) -> str:
        return self.url.render_as_string(hide_password=False)

    @property
    def async_url(self) -> str:
        """The same URL: SQLAlchemy's ``postgresql+psycopg`` is sync and async."""
        return self.sync_url

    def engine(self) -> Engine:
        return create_engine(self.url, poolclass=NullPool)

    def allows(self, dialect: Any, cargs: Any, cparams: dict[str, Any]) -> bool:
        """``env.py``'s connections (its thread's) to the template database only; the
        plugin's own meanwhile (the clone pools' threads of templates already built) pass."""
        if threading.current_thread().name != THREAD_NAME:
            return True
        return dialect.name == "postgresql" and cparams.get("dbname") == self.url.database

    def finish(self, where: str) -> None:
        """Nothing to copy: the migrations committed on the template."""

    def close(self) -> None:
        """Nothing made per attempt."""


# --- a .sql dump ----------------------------------------------------------------------

_META = re.compile(r"^[ \t]*\\([A-Za-z!?]*)[^\n]*", re.M)
_SAFE_TO_DROP = ("restrict", "unrestrict")
_COPY_STDIN = re.compile(r"^[ \t]*COPY\b[^;]*?\bFROM\s+stdin\b", re.I | re.M)


def run_dump(url: URL, path: Path, origin: str) -> None:
    """Run the SQL dump at ``path`` into the database at ``url``, in one transaction, on a
    session of its own (its ``SET``\\ s end with it)."""
    where = f"the SQL dump {str(path)!r} ({origin})"
    try:
        script = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) else f"it is not UTF-8 text ({exc})"
        raise MemdbError(SEEDING_FAILED(step=f"while reading {where}", error=problem)) from None
    metas = list(_META.finditer(script))
    connect = next((m for m in metas if m.group(1) in ("c", "connect")), None)
    if connect is not None:
        raise MemdbError(
            f"pytest-memdb: {where}: line {_line(script, connect.start())} switches to "
            f"another database ({connect.group(0).strip()}): the dump must fill the template "
            "database pytest-memdb runs it in. Dump without --create (pg_dump's -C), or "
            "delete the CREATE DATABASE and \\connect lines."
        )
    for_psql = [m for m in metas if m.group(1) not in _SAFE_TO_DROP]
    copy = _COPY_STDIN.search(script)
    if copy is not None:
        for_psql.insert(0, copy)
    if not for_psql:
        # pg_dump's \restrict and \unrestrict (15.14+) only stop psql from running
        # meta-commands hidden in the data; psycopg runs none: the lines go (kept empty,
        # so PostgreSQL's line numbers stay the file's).
        _run_with_psycopg(url, _META.sub("", script), where)
        return
    first = min(for_psql, key=lambda m: m.start())
    shown, line = first.group(0).strip(), _line(script, first.start())
    psql = _find_psql()
    if psql is None:
        raise MemdbError(
            f"pytest-memdb: {where}: line {line} ({shown!r}) is for psql, PostgreSQL's client "
            "(a psql meta-command, or COPY ... FROM stdin with its data), and no psql was "
            "found (looked on PATH and beside the PostgreSQL server programs). Install "
            "PostgreSQL's client programs, or dump with pg_dump --inserts (plain INSERTs)."
        )
    _run_with_psql(psql, url, path, where)


def _line(script: str, offset: int) -> int:
    return script.count("\n", 0, offset) + 1


def _run_with_psycopg(url: URL, script: str, where: str) -> None:
    try:
        with psycopg.connect(
            **conninfo(url), application_name=APPLICATION, connect_timeout=10
        ) as conn:
            conn.execute(script.encode("utf-8"))  # no parameters: the simple protocol
    except psycopg.Error as exc:
        position = getattr(exc.diag, "statement_position", None)
        line = f" at line {_line(script, int(position) - 1)}" if position else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MemdbError(
            SEEDING_FAILED(
                step=f"while running {where}{line}", error=f"{type(exc).__name__}: {first}"
            )
        ) from None


def _find_psql() -> Path | None:
    found = shutil.which("psql")
    if found:
        return Path(found)
    from pytest_memdb.postgresql.server import PostgresNotFound, find_binaries

    try:
        candidate = find_binaries().tool("psql")
    except PostgresNotFound:
        return None
    return candidate if candidate.is_file() else None


def _run_with_psql(psql: Path, url: URL, path: Path, where: str) -> None:
    info = {**conninfo(url), "application_name": APPLICATION, "connect_timeout": 10}
    env = dict(os.environ)
    password = info.pop("password", None)
    if password is not None:  # not on the command line, where ps shows it
        env["PGPASSWORD"] = str(password)
    command = [
        str(psql),
        "--no-psqlrc",
        "--quiet",
        "--no-password",
        "--set=ON_ERROR_STOP=1",
        "--single-transaction",
        f"--file={path}",
        f"--dbname={make_conninfo(**{k: str(v) for k, v in info.items()})}",
    ]
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            env=env,
            capture_output=True,
            text=True,
            timeout=PSQL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise MemdbError(
            SEEDING_FAILED(
                step=f"while running {where} with {psql}",
                error=f"psql did not finish in {PSQL_TIMEOUT_S:g} s",
            )
        ) from None
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        raise MemdbError(
            SEEDING_FAILED(
                step=f"while running {where} with {psql}",
                error="\n".join(errors[-8:]) or f"psql exited with {result.returncode}",
            )
        )


# --- a SQLite file's rows --------------------------------------------------------------


@contextmanager
def _read_sqlite(path: Path, origin: str) -> Iterator[Connection]:
    """A SQLAlchemy connection on an in-memory copy of the user's file (read read-only)."""
    database = load_file(path, unique_name("pg", "source"), origin=origin, shared=False)
    try:
        engine = create_engine(
            "sqlite://", creator=lambda: Borrowed(database.anchor), poolclass=StaticPool
        )
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            engine.dispose()
    finally:
        database.close()


def _generic(inspector: Any, table: Table, column_info: dict[str, Any]) -> None:
    """SQLAlchemy's database-agnostic reflection: SQLite's ``DATETIME`` becomes
    ``DateTime`` (``TIMESTAMP`` on PostgreSQL, which has no ``DATETIME``)."""
    with suppress(NotImplementedError):
        column_info["type"] = column_info["type"].as_generic()


def copy_sqlite_file(conn: Connection, path: Path, origin: str, metadata: MetaData | None) -> None:
    """The rows of the SQLite file at ``path`` into the template, in ``conn``'s transaction
    (the models' tables already made); see the module's docstring."""
    where = f"the SQLite file {str(path)!r} ({origin})"
    with _read_sqlite(path, origin) as source:
        reflected = MetaData()
        event.listen(reflected, "column_reflect", _generic)
        try:
            reflected.reflect(source)
        except Exception as exc:
            raise MemdbError(
                SEEDING_FAILED(
                    step=f"while reading the tables of {where}",
                    error=f"{type(exc).__name__}: {exc}",
                )
            ) from exc
        _warn_left_out(source, where)
        models = metadata.tables if metadata is not None else {}
        own = [t for t in reflected.sorted_tables if t.name not in models]
        for table in own:
            _step(
                f"creating table {table.name!r} of {where} on PostgreSQL (its columns' types "
                "as SQLite reflects them; give the table in memdb_metadata's models instead)",
                table.create,
                conn,
            )
        pairs = [(models.get(t.name, t), t) for t in reflected.tables.values()]
        for target, found in _in_dependency_order(pairs):
            count = _copy_table(conn, source, target, found, where)
            if count:
                _sequences_past(conn, target)


def _warn_left_out(source: Connection, where: str) -> None:
    rows = source.exec_driver_sql(
        "SELECT type, name FROM sqlite_master WHERE type IN ('view', 'trigger') "
        "AND name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).all()
    if rows:
        shown = ", ".join(f"{kind} {name!r}" for kind, name in rows)
        warnings.warn(
            MemdbWarning(
                f"pytest-memdb: {where}: its rows are copied into PostgreSQL, not its "
                f"{shown}: SQLite's SQL is not PostgreSQL's. Create them in a load step "
                "(memdb_load) or the pytest_memdb_template hook."
            ),
            stacklevel=2,
        )


def _in_dependency_order(pairs: Sequence[tuple[Table, Table]]) -> list[tuple[Table, Table]]:
    """Referenced tables first, by the foreign keys of the models and of the file (by table
    name: the two are different ``Table`` objects); a cycle keeps the file's order."""
    by_name = {found.name: (target, found) for target, found in pairs}
    needs: dict[str, set[str]] = {name: set() for name in by_name}
    for target, found in pairs:
        for table in (target, found):
            for fk in table.foreign_keys:
                parent = fk.target_fullname.rsplit(".", 1)[0].rsplit(".", 1)[-1]
                if parent in by_name and parent != found.name:
                    needs[found.name].add(parent)
    ordered: list[str] = []
    done: set[str] = set()
    while len(ordered) < len(by_name):
        ready = [n for n in by_name if n not in done and needs[n] <= done]
        if not ready:  # a cycle: the rest as the file lists them
            ready = [n for n in by_name if n not in done]
        for name in ready:
            ordered.append(name)
            done.add(name)
    return [by_name[name] for name in ordered]


def _copy_table(
    conn: Connection, source: Connection, target: Table, found: Table, where: str
) -> int:
    """Copy one table's rows; returns how many. A row PostgreSQL refuses is an error naming
    the table, the row and why."""
    names = [column.name for column in found.columns]
    extra = sorted(set(names) - {column.name for column in target.columns})
    if extra:
        raise MemdbError(
            f"pytest-memdb: {where}: table {found.name!r} has columns the models do not "
            f"have: {', '.join(extra)}; their data would be lost. Add them to the models "
            "(memdb_metadata), or drop them from the file."
        )
    columns = [next(c for c in target.columns if c.name == name) for name in names]
    query = select(*columns).select_from(target)
    # A foreign key is checked at the end of its statement: one COPY of a table that refers
    # to itself accepts its rows in any order (a parent after its child, as SQLite allows).
    refers_to_itself = any(
        fk.column.table is table for table in (target, found) for fk in table.foreign_keys
    )
    limit = 0 if refers_to_itself else _ROWS_PER_BATCH
    number = 0
    batch: list[dict[str, Any]] = []
    try:
        rows: Iterable[Any] = source.execute(query).mappings()
        for row in rows:
            number += 1
            batch.append(dict(row))
            if len(batch) == limit:
                _insert(conn, target, batch, number - len(batch), where)
                batch = []
    except MemdbError:
        raise
    except Exception as exc:
        raise MemdbError(
            SEEDING_FAILED(
                step=f"while reading row {number + 1} of table {found.name!r} of {where} "
                "with the models' column types",
                error=f"{type(exc).__name__}: {exc}",
            )
        ) from exc
    if batch:
        _insert(conn, target, batch, number - len(batch), where)
    return number


def _insert(
    conn: Connection, table: Table, batch: list[dict[str, Any]], before: int, where: str
) -> None:
    """Copy ``batch`` (rows ``before + 1`` on of the table) in a savepoint. Refused, the row
    is named: the one PostgreSQL's error points at (:func:`_culprit`), else found by
    halving the batch (14 halvings for a whole one)."""
    try:
        with conn.begin_nested():
            _copy_rows(conn, table, batch)
        return
    except Exception as exc:
        error: BaseException = getattr(exc, "orig", None) or exc
        found = 0 if len(batch) == 1 else _culprit(error, table, batch)
        if found is None:
            middle = len(batch) // 2
            _insert(conn, table, batch[:middle], before, where)
            _insert(conn, table, batch[middle:], before + middle, where)
            raise MemdbError(  # pragma: no cover - a batch refused, each half accepted
                f"pytest-memdb: {where}: PostgreSQL refused the rows {before + 1}-"
                f"{before + len(batch)} of table {table.name!r} together, and each half "
                f"alone: {type(error).__name__}: {error}"
            ) from None
    diag = getattr(error, "diag", None)
    reason = getattr(diag, "message_primary", None) or str(error).strip().split("\n")[0]
    detail = getattr(diag, "message_detail", None)
    values = repr(batch[found])
    if len(values) > _SHOWN:
        values = values[:_SHOWN] + "...}"
    raise MemdbError(
        f"pytest-memdb: {where}: PostgreSQL refused row {before + found + 1} of table "
        f"{table.name!r} {values}: {type(error).__name__}: {reason}"
        f"{f' ({detail})' if detail else ''}. Fix the row in the file, or the models' "
        "constraint (SQLite does not check a VARCHAR's length, and checks foreign keys "
        "only with foreign_keys=ON)."
    )


_COPY_LINE = re.compile(r"^COPY .*, line (\d+)")
_MISSING_KEY = re.compile(r"^Key \((.+)\)=\((.*)\) is not present in table ")


def _culprit(error: BaseException, table: Table, batch: list[dict[str, Any]]) -> int | None:
    """The index in ``batch`` of the row PostgreSQL's error names, or None: a value it could
    not take names its ``COPY`` line (``CONTEXT: COPY author, line 2, column name``); a
    foreign key, checked when the ``COPY`` ends, names the missing key (``DETAIL: Key
    (author_id)=(99) is not present``), whose first row is found. Halving the batch instead
    would blame a row whose parent, in the same table, fell in the other half."""
    diag = getattr(error, "diag", None)
    line = _COPY_LINE.match(getattr(diag, "context", None) or "")
    if line is not None and 0 < int(line.group(1)) <= len(batch):
        return int(line.group(1)) - 1
    missing = _MISSING_KEY.match(getattr(diag, "message_detail", None) or "")
    if missing is None:
        return None
    names = [name.strip().strip('"') for name in missing.group(1).split(",")]
    wanted = [value.strip() for value in missing.group(2).split(",")]
    keys = {column.name: key for key, column in table.c.items()}
    if len(names) != len(wanted) or any(name not in keys for name in names):
        return None
    for index, row in enumerate(batch):
        if [str(row.get(keys[name])) for name in names] == wanted:
            return index
    return None


def _copy_rows(conn: Connection, table: Table, batch: list[dict[str, Any]]) -> None:
    """``COPY ... FROM STDIN`` (psycopg's ``Cursor.copy``) of ``batch``, each value through
    its column type's bind processing for PostgreSQL (``JSON`` serialised, a
    ``TypeDecorator``'s ``process_bind_param``) as an ``INSERT`` would; a SQL ``NULL`` stays
    one (a ``JSON`` column's insert would write JSON ``null``).

    Measured (150,000 rows in two tables, the second with a foreign key to the first;
    PostgreSQL 15 on the same 2 cores, loaded): SQLAlchemy's ``executemany`` (psycopg's
    pipeline, a statement per row, batches of 1,000) took 9.4-10.2 s, ``COPY`` in batches
    of 1,000 4.9-5.4 s, in batches of 10,000 3.4-4.1 s. Most of the rest is the server's
    foreign-key checks, one per row: ``pg_dump`` adds the constraints after the data, and
    its plain dump of the same rows loads through psql in 0.4-0.7 s."""
    dialect = conn.dialect
    keys = list(batch[0])
    columns = [table.c[key] for key in keys]
    processors = [column.type.dialect_impl(dialect).bind_processor(dialect) for column in columns]
    prep = dialect.identifier_preparer
    names = ", ".join(prep.quote(column.name) for column in columns)
    statement = f"COPY {prep.format_table(table)} ({names}) FROM STDIN"
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        for row in batch:
            values = []
            for key, process in zip(keys, processors, strict=True):
                value = row[key]
                values.append(value if value is None or process is None else process(value))
            copy.write_row(values)


def _sequences_past(conn: Connection, table: Table) -> None:
    """Every sequence owned by an integer column (``SERIAL``, ``IDENTITY``) set to the
    column's largest value, so the next insert without an id does not collide."""
    name = conn.dialect.identifier_preparer.format_table(table)
    for column in table.columns:
        if not isinstance(column.type, Integer):
            continue
        sequence = conn.execute(
            sql_text("SELECT pg_get_serial_sequence(:table, :column)"),
            {"table": name, "column": column.name},
        ).scalar_one()
        if sequence is None:
            continue
        quoted = conn.dialect.identifier_preparer.quote(column.name)
        conn.execute(
            sql_text(
                f"SELECT setval(:sequence, m) FROM (SELECT max({quoted}) AS m FROM {name}) s "
                "WHERE m IS NOT NULL"
            ),
            {"sequence": sequence},
        )
