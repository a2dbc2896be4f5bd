"""What a template is made of: a fixture file, your models' tables, seed steps, a hook.

Built once per session (per xdist worker) when a test first asks for it, so that
models which test modules add to a ``Base`` during collection are included.
Imports SQLAlchemy: load lazily.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.pool import StaticPool

from pytest_memdb.core.config import LoadStep, Target
from pytest_memdb.core.importing import describe, import_metadata, import_object
from pytest_memdb.errors import MemdbError
from pytest_memdb.messages import SEEDING_FAILED
from pytest_memdb.sqlite.loading import CheckedFiles, load_file
from pytest_memdb.sqlite.memory import MemoryDatabase
from pytest_memdb.sqlite.pragmas import Pragmas, apply_pragmas

TemplateHook = Callable[[Connection, Target], None]
"""Runs the ``pytest_memdb_template`` hook implementations on the seeding connection."""


def build_template(
    target: Target,
    name: str,
    *,
    base_dir: Path,
    pragmas: Pragmas = (),
    hook: TemplateHook | None = None,
    checked: CheckedFiles | None = None,
) -> MemoryDatabase:
    """A new in-memory database called ``name`` with everything ``target`` asks for.

    The fixture file (if any) is copied first; then the Alembic migrations (if any) run
    on it; then, in ONE transaction, the metadata's missing tables are created, the load
    steps run in order, and the hook runs. Any failure rolls the transaction back, frees
    the database and raises a :class:`MemdbError` that names the step and carries the
    original exception.

    With migrations, the metadata's tables are not created: the migrations own the
    schema, and the models are checked against it instead (the drift check,
    :func:`pytest_memdb.core.migrations.check_drift`), so a missing migration fails the
    template rather than being papered over by ``create_all``.
    """
    if target.file is not None:
        database = load_file(
            target.file, name, origin=target.file_origin, shared=False, checked=checked
        )
    else:
        database = MemoryDatabase(name, shared=False)
    if target.metadata is None and not target.load and hook is None and target.alembic is None:
        return database
    try:
        metadata = (
            import_metadata(target.metadata, target.metadata_origin, base_dir)
            if target.metadata
            else None
        )
        if target.alembic is not None:
            _migrate(target, database, metadata)
        with _seeding_connection(database, pragmas) as conn, conn.begin():
            seed(conn, target, metadata, base_dir=base_dir, hook=hook)
    except BaseException:
        database.close()
        raise
    return database


def seed(
    conn: Connection,
    target: Target,
    metadata: MetaData | None,
    *,
    base_dir: Path,
    hook: TemplateHook | None = None,
) -> None:
    """The steps every backend runs on its template, inside the caller's transaction: the
    metadata's tables (unless migrations own the schema), the load steps in order, the
    hook. A failing step raises a :class:`MemdbError` naming it."""
    if metadata is not None and target.alembic is None:
        _step(f"creating the tables of {target.metadata!r}", metadata.create_all, conn)
    for step in target.load:
        _run_load_step(step, conn, base_dir)
    if hook is not None:
        hook(conn, target)


def _migrate(target: Target, database: MemoryDatabase, metadata: MetaData | None) -> None:
    """Run ``target``'s Alembic migrations on the template (Alembic is imported only here)."""
    from pytest_memdb.sqlite.migrating import run_migrations

    run_migrations(target, database, metadata=metadata)


class _Borrowed:
    """The template's anchor lent to SQLAlchemy for seeding: everything but ``close``."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self._raw = raw

    def close(self) -> None:
        """The anchor keeps the template alive: only :meth:`MemoryDatabase.close` closes it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


@contextmanager
def _seeding_connection(database: MemoryDatabase, pragmas: Pragmas) -> Iterator[Connection]:
    """A sync connection on the template's anchor whose ``BEGIN``/``COMMIT`` SQLAlchemy
    emits itself (the template is private: no other connection can reach it).

    With the driver in charge, DDL would run outside the transaction and a failing
    step would leave the steps before it applied (SQLAlchemy's SQLite docs,
    "Serializable isolation / Savepoints / Transactional DDL").
    """
    raw = database.anchor
    previous = raw.isolation_level
    raw.isolation_level = None
    apply_pragmas(raw, pragmas)
    engine: Engine = create_engine(
        "sqlite://", creator=lambda: _Borrowed(raw), poolclass=StaticPool
    )

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raw.isolation_level = previous


def _step(what: str, run: Callable[..., Any], *args: Any) -> Any:
    try:
        return run(*args)
    except MemdbError:
        raise
    except Exception as exc:
        raise MemdbError(
            SEEDING_FAILED(step=f"while {what}", error=f"{type(exc).__name__}: {exc}")
        ) from exc


def _run_load_step(step: LoadStep, conn: Connection, base_dir: Path) -> None:
    if step.script is not None:
        try:
            script = step.script.read_text(encoding="utf-8")
        except OSError as exc:
            raise MemdbError(
                SEEDING_FAILED(
                    step=f"while reading the {step.describe()}", error=exc.strerror or exc
                )
            ) from None
        for number, statement in enumerate(split_sql(script), 1):
            shown = re.sub(r"\s+", " ", statement).rstrip(";")[:200]
            what = f"running statement {number} of the {step.describe()}: {shown}"
            _step(what, _sql, conn, statement)
        return
    assert step.callable is not None
    function = import_object(step.callable, step.origin, base_dir)
    if not callable(function):
        raise MemdbError(
            f"pytest-memdb: {step.origin}: {step.callable!r} is {describe(function)}, not a "
            "callable taking a sync SQLAlchemy Connection."
        )
    result = _step(f"running the {step.describe()}", function, conn)
    if hasattr(result, "__await__"):
        close = getattr(result, "close", None)
        if close is not None:
            close()  # no "coroutine was never awaited" warning on top of our error
        raise MemdbError(
            f"pytest-memdb: {step.origin}: {step.callable!r} is async; load steps get a sync "
            "SQLAlchemy Connection (use conn.execute(...), no await)."
        )


def _sql(conn: Connection, statement: str) -> None:
    conn.exec_driver_sql(statement)


def split_sql(script: str) -> list[str]:
    """A script's statements, split where SQLite's own tokenizer says one is complete.

    ``executescript`` cannot be used: it commits any open transaction first.
    Semicolons inside strings, comments and trigger bodies do not split.
    """
    statements: list[str] = []
    start = 0
    for match in re.finditer(";", script):
        candidate = script[start : match.end()]
        if sqlite3.complete_statement(candidate):
            statements.append(candidate.strip())
            start = match.end()
    rest = script[start:].strip()
    if rest and sqlite3.complete_statement(rest + "\n;") and _has_code(rest):
        statements.append(rest)
    return [s for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    without_comments = re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.S)
    return bool(without_comments.strip(" \t\r\n;"))


def hook_runner(caller: Any, config: Any) -> TemplateHook:
    """Call the ``pytest_memdb_template`` implementations, naming the one that fails."""

    def run(conn: Connection, target: Target) -> None:
        try:
            caller(connection=conn, config=config, target=target)
        except Exception as exc:
            raise MemdbError(
                SEEDING_FAILED(
                    step="in the pytest_memdb_template hook " + _hookimpl_at_fault(caller, exc),
                    error=f"{type(exc).__name__}: {exc}",
                )
            ) from exc

    return run


def _hookimpl_at_fault(caller: Any, exc: BaseException) -> str:
    codes = {impl.function.__code__: impl for impl in caller.get_hookimpls()}
    tb = exc.__traceback__
    culprit = None
    while tb is not None:
        culprit = codes.get(tb.tb_frame.f_code, culprit)
        tb = tb.tb_next
    if culprit is None:
        return "implementation"
    code = culprit.function.__code__
    return f"implementation {culprit.function.__name__} ({code.co_filename}:{code.co_firstlineno})"
