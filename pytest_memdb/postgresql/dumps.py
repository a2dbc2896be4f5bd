"""``--memdb-keep-failed`` on PostgreSQL: a failing test's database written as a plain SQL
file (``psql -f`` loads it), by ``pg_dump``.

Imports psycopg and SQLAlchemy: load it lazily (the PostgreSQL backend does).

* **copy** and **session**: the test's clone is a database of its own; ``pg_dump`` reads
  it as it is, so the file holds what the test (and the app) *committed*. A session of the
  test that still holds uncommitted writes is not in it: no other connection can see
  them, and ``pg_dump`` is another connection. Bounded: ``--lock-wait-timeout`` (a test's
  uncommitted ``ALTER TABLE`` or ``TRUNCATE`` holds a lock ``pg_dump`` would wait on).
* **rollback**: everything the test did is in the held session's uncommitted outer
  transaction, and the working database takes no other connection. A snapshot exported
  from that session (``pg_export_snapshot()``, ``pg_dump --snapshot``) would not help: an
  exported snapshot shows what was *committed* when it was taken, never the exporting
  transaction's own writes. So the rows are read through the held session itself, inside
  a savepoint rolled back afterwards (the test's transaction is left as it was):
  ``COPY (SELECT ...) TO STDOUT`` per table, written as ``COPY ... FROM stdin`` blocks,
  and each sequence's value (``nextval`` is not transactional: the held session sees the
  test's). The schema around them is ``pg_dump``'s own, of a scratch clone of the template
  (``--section=pre-data`` before the rows, ``--section=post-data`` after: constraints,
  foreign keys and indexes come after the rows, as in any ``pg_dump`` file). The schema is
  therefore the template's: a table the test created inside its transaction is not in the
  file (it is named in the report line), nor a column it added.

``pg_dump`` is found as the server programs are (:mod:`pytest_memdb.postgresql.server`):
``PATH``, ``pg_config --bindir``, Debian's and Homebrew's folders; the first whose major
version is at least the server's (an older ``pg_dump`` refuses a newer server).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import psycopg
from psycopg import pq, sql
from sqlalchemy.engine import URL

from pytest_memdb.errors import MemdbError
from pytest_memdb.postgresql.rollback import conninfo
from pytest_memdb.postgresql.server import _candidates

SUFFIX = ".sql"
"""What a kept PostgreSQL database's file ends with."""
PG_DUMP_TIMEOUT_S = 120.0
"""The bound on one ``pg_dump`` run (a failure path: a large database may take a while)."""
LOCK_WAIT = "10s"
"""``pg_dump --lock-wait-timeout``: how long it waits for a table a test holds locked."""
READ_TIMEOUT_MS = 60_000
"""The bound on reading the rows through rollback's held session."""
SAVEPOINT = "memdb_keep_failed"

LOAD_HINT = "load it with: createdb NAME && psql -d NAME -f FILE"

_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname),
       (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attgenerated = '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND n.nspname <> 'information_schema'
   AND n.nspname NOT LIKE 'pg\\_%' AND c.relpersistence <> 't'
 ORDER BY 1
"""
"""The tables outside the system schemas (unlogged ones too, as ``pg_dump`` has them; not
temporary ones), with their columns as ``COPY`` lists them
(generated columns left out: ``COPY FROM`` refuses them)."""

_SEQUENCES = (
    "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences ORDER BY 1"
)
"""Every sequence and its value (None: never used)."""


def _major(version_text: str) -> int | None:
    found = re.search(r"(\d+)(?:\.\d+)?", version_text)
    return int(found.group(1)) if found else None


@functools.cache
def find_pg_dump(server_version: int) -> Path:
    """A ``pg_dump`` for a server of ``server_version`` (``150018`` for 15.18): the first
    found, in the server programs' order, whose major version is at least the server's.

    Raises :class:`MemdbError` listing every place looked at, and what was found there."""
    server_major = server_version // 10000
    looked: list[str] = []
    missing: list[str] = []
    seen: set[Path] = set()
    for how, folder in _candidates(None, None):
        program = folder / "pg_dump"
        if program in seen:
            continue
        seen.add(program)
        if not (program.is_file() and os.access(program, os.X_OK)):
            missing.append(str(folder))
            continue
        try:
            out = subprocess.run(
                [str(program), "--version"], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            looked.append(f"  - {program} ({how}): does not run ({exc})")
            continue
        major = _major(out)
        if major is not None and major >= server_major:
            return program
        looked.append(f"  - {program} ({how}): {out.strip() or 'no version'}, too old")
    raise MemdbError(
        f"pytest-memdb: --memdb-keep-failed writes a PostgreSQL database with pg_dump, and no "
        f"pg_dump of version {server_major} or later was found:\n"
        + "".join(f"{line}\n" for line in looked)
        + f"  - no pg_dump in {', '.join(missing)} (PATH, pg_config, the usual folders)\n"
        + f"Install PostgreSQL's client programs of version {server_major} or later "
        f"(Debian/Ubuntu: `apt-get install postgresql-client-{server_major}`; macOS: "
        "`brew install libpq`) and put their folder on PATH, or run without "
        "--memdb-keep-failed."
    )


def _pg_dump(program: Path, url: URL, *args: str) -> bytes:
    """Run ``pg_dump`` on ``url``'s database; its output. The password goes in the
    environment, not on the command line (which others can read)."""
    info = conninfo(url)
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    password = info.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    dsn = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    command = [
        str(program),
        f"--dbname={dsn}",
        f"--lock-wait-timeout={LOCK_WAIT}",
        "--no-owner",
        "--no-privileges",
        *args,
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, env=env, timeout=PG_DUMP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise MemdbError(
            f"pytest-memdb: pg_dump of {url.database!r} did not finish within "
            f"{PG_DUMP_TIMEOUT_S:g} s ({program})."
        ) from None
    if done.returncode != 0:
        raise MemdbError(
            f"pytest-memdb: pg_dump of {url.database!r} failed (exit status "
            f"{done.returncode}, {program}): {done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout


def _header(what: str) -> bytes:
    return f"-- pytest-memdb --memdb-keep-failed: {what}\n-- {LOAD_HINT}\n\n".encode()


@contextmanager
def _writing(path: Path) -> Iterator[BinaryIO]:
    """A scratch file next to ``path``, moved over it when complete (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as out:
            yield out
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def dump_database(program: Path, url: URL, path: Path) -> str:
    """``pg_dump`` of ``url``'s database (a copy or session clone) to ``path``; what the
    file holds, in words."""
    what = "the database as the test left it (committed writes only)"
    body = _pg_dump(program, url)
    with _writing(path) as out:
        out.write(_header(what))
        out.write(body)
    return what


def dump_held_session(
    program: Path, raw: psycopg.Connection[Any], schema_url: URL, path: Path
) -> str:
    """Write what rollback's held session ``raw`` sees (the test's uncommitted outer
    transaction included) to ``path``: ``schema_url``'s schema (a scratch clone of the
    template) by ``pg_dump``, with the rows read through ``raw``. What it holds, in words."""
    pre = _pg_dump(program, schema_url, "--section=pre-data")
    post = _pg_dump(program, schema_url, "--section=post-data")
    with psycopg.connect(**conninfo(schema_url), connect_timeout=10) as scratch:
        in_file = dict(scratch.execute(_TABLES).fetchall())
        sequences_in_file = {row[0] for row in scratch.execute(_SEQUENCES).fetchall()}
    status = raw.pgconn.transaction_status
    if status == pq.TransactionStatus.INERROR:
        raise MemdbError(
            "pytest-memdb: the test's transaction on rollback mode's held session is aborted "
            "(a failed statement it did not roll back): its rows cannot be read to keep them."
        )
    if status == pq.TransactionStatus.IDLE:
        begin, end = "BEGIN", "ROLLBACK"
    else:  # inside the test's transaction: read in a savepoint, leave it as it was
        begin = f"SAVEPOINT {SAVEPOINT}"
        end = f"ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"
    with _writing(path) as out:
        raw.execute(begin)
        try:
            raw.execute(f"SET LOCAL statement_timeout = {READ_TIMEOUT_MS}")
            seen = dict(raw.execute(_TABLES).fetchall())
            left_out = sorted(set(seen) - set(in_file))
            what = "the database as the test left it (uncommitted writes included"
            if left_out:  # made in the test's transaction: not in the template's schema
                what += f"; not the tables it created: {', '.join(left_out)}"
            what += ")"
            out.write(_header(what))
            out.write(pre)
            out.write(b"\n-- the rows, as the test's transaction saw them\n\n")
            with raw.cursor() as cursor:
                for table, columns in in_file.items():
                    if table not in seen or not columns:
                        continue
                    out.write(f"COPY {table} ({columns}) FROM stdin;\n".encode())
                    query = sql.SQL("COPY (SELECT {} FROM ONLY {}) TO STDOUT").format(
                        sql.SQL(columns), sql.SQL(table)
                    )
                    with cursor.copy(query) as copy:
                        for chunk in copy:
                            out.write(chunk)
                    out.write(b"\\.\n\n")
                for sequence, value in raw.execute(_SEQUENCES).fetchall():
                    if sequence in sequences_in_file and value is not None:
                        literal = sequence.replace("'", "''")
                        out.write(
                            f"SELECT pg_catalog.setval('{literal}', {value}, true);\n".encode()
                        )
            out.write(b"\n")
            out.write(post)
        finally:
            raw.execute(end)
    return what
