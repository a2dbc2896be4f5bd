"""What a template is made of, on any backend: your models' tables, seed steps, a hook.

Built once per session (per xdist worker) when a test first asks for it, so that
models which test modules add to a ``Base`` during collection are included. Each backend
runs :func:`seed` inside its own build (SQLite's, with a fixture file and migrations:
:mod:`pytest_memdb.sqlite.build`; PostgreSQL's: :mod:`pytest_memdb.postgresql.backend`).
Imports SQLAlchemy: load lazily.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, MetaData

from pytest_memdb.core.config import LoadStep, Target
from pytest_memdb.core.importing import describe, import_object
from pytest_memdb.errors import MemdbError
from pytest_memdb.messages import SEEDING_FAILED

TemplateHook = Callable[[Connection, Target], None]
"""Runs the ``pytest_memdb_template`` hook implementations on the seeding connection."""


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
