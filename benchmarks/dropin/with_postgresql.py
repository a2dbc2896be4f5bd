"""Run a command with a fresh PostgreSQL database of its own: the drop-in's reference run.

``python with_postgresql.py [--export NAME]... COMMAND...`` starts a throwaway server
(:func:`pytest_memdb.postgresql.server.start_server`, the one ``--memdb-postgresql=start``
starts), creates one empty database in it, runs COMMAND with ``DROPIN_PG_URL`` (its
SQLAlchemy URL, ``postgresql+psycopg://``, which ``create_engine`` and
``create_async_engine`` both take) and every ``--export NAME`` set to that URL in its
environment (a project that reads its own variable, such as ``DATABASE_URL``), stops the
server, and exits with COMMAND's status.

Why it exists: a public project's suite may have tests that fail on PostgreSQL for reasons
that are the database's (a negative ``LIMIT`` is an error there, SQLite takes it as "no
limit"). ``run_dropin.sh`` runs the project's original suite, its own fixtures pointed at
this database, to learn which tests those are; a swapped run on PostgreSQL is then held to
that run, not to the SQLite one. The server start (about 1.5 s here) is inside the timed
command, as it is in a swapped run's ``--memdb-postgresql=start``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg

from pytest_memdb.postgresql.server import start_server

DATABASE = "dropin"


def main(argv: list[str]) -> int:
    """Start the server, make the database, run the command, stop the server."""
    names = ["DROPIN_PG_URL"]
    while len(argv) >= 2 and argv[0] == "--export":
        names.append(argv[1])
        argv = argv[2:]
    if not argv:
        print("usage: with_postgresql.py [--export NAME]... COMMAND [ARGS...]", file=sys.stderr)
        return 2
    server = start_server(stop_at_exit=True)
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        url = server.url(DATABASE, driver="psycopg")
        env = {**os.environ, **dict.fromkeys(names, url)}
        return subprocess.run(argv, env=env, check=False).returncode
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
