"""Per-connection SQLite settings (``memdb_pragmas``), checked at start-up.

SQLite silently ignores a pragma it does not know and many bad values, which
would turn a typo into a test suite that runs with settings nobody asked for.
So every pragma is tried once on a scratch in-memory connection and read back.
Standard library only: this runs in ``pytest_configure``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pytest_memdb.errors import MemdbError
from pytest_memdb.messages import BAD_PRAGMA

if TYPE_CHECKING:
    import sqlite3

Pragmas = tuple[tuple[str, str], ...]
"""``(name, value)`` pairs, applied in order on every connection."""

_NAME = re.compile(r"^[A-Za-z_]+$")
_VALUE = re.compile(r"^(-?\d+|[A-Za-z_][\w]*)$")
_BOOLEANS = {"on": 1, "true": 1, "yes": 1, "1": 1, "off": 0, "false": 0, "no": 0, "0": 0}
_ENUMS = {
    "synchronous": {"off": 0, "normal": 1, "full": 2, "extra": 3},
    "temp_store": {"default": 0, "file": 1, "memory": 2},
    "secure_delete": {"fast": 2},
}
_WRITES = (
    "it writes to the database, so every new connection would wait on the test's open "
    "writes (set it in the fixture file or a memdb_load step instead)"
)
_NOT_PER_CONNECTION = {
    "journal_mode": "an in-memory database always keeps its journal in memory",
    "locking_mode": "an exclusive lock would keep the app's own connections out",
    "page_size": "the page size is the fixture file's",
    "auto_vacuum": "auto_vacuum is a property of the fixture file",
    "encoding": "the encoding is the fixture file's",
    "schema_version": "writing it corrupts the schema cache",
    "writable_schema": "it allows corrupting the database",
    "user_version": _WRITES,
    "application_id": _WRITES,
    "optimize": _WRITES,
    "incremental_vacuum": _WRITES,
    "wal_checkpoint": _WRITES,
}


def parse_pragmas(lines: Iterable[str], origin: str) -> Pragmas:
    """``name=value`` lines into pairs, each one proven to take effect in SQLite."""
    pairs: list[tuple[str, str]] = []
    entries = [raw.strip() for raw in lines]
    entries = [line for line in entries if line and not line.startswith("#")]
    if not entries:  # the usual case, in every pytest run: no sqlite3 import, no probe
        return ()
    import sqlite3

    probe = sqlite3.connect(":memory:")
    try:
        known = {row[0] for row in probe.execute("PRAGMA pragma_list")}
        for line in entries:
            name, sep, value = (part.strip() for part in line.partition("="))
            name = name.lower()
            if not sep or not _NAME.match(name) or not _VALUE.match(value):
                raise MemdbError(
                    BAD_PRAGMA(
                        origin=origin,
                        problem=f"{line!r} is not a 'name=value' pragma (for example "
                        "foreign_keys=ON).",
                    )
                )
            if name not in known:
                raise MemdbError(
                    BAD_PRAGMA(
                        origin=origin,
                        problem=f"unknown pragma {name!r} in {line!r} (SQLite would silently "
                        "ignore it).",
                    )
                )
            if name in _NOT_PER_CONNECTION:
                raise MemdbError(
                    BAD_PRAGMA(
                        origin=origin,
                        problem=f"{line!r} cannot be set per connection: "
                        f"{_NOT_PER_CONNECTION[name]}.",
                    )
                )
            _check_takes_effect(probe, name, value, line, origin)
            pairs.append((name, value))
    finally:
        probe.close()
    return tuple(pairs)


def _check_takes_effect(
    probe: sqlite3.Connection, name: str, value: str, line: str, origin: str
) -> None:
    import sqlite3

    try:
        probe.execute(f"PRAGMA {name}={value}").fetchall()
        after: Sequence[object] | None = probe.execute(f"PRAGMA {name}").fetchone()
    except sqlite3.Error as exc:
        raise MemdbError(
            BAD_PRAGMA(origin=origin, problem=f"{line!r} failed in SQLite: {exc}.")
        ) from None
    if after is None:  # a pragma without a value to read back (for example optimize)
        return
    got = after[0]
    wanted: object = value
    if isinstance(got, int) and value.lower() in _BOOLEANS and got in (0, 1):
        wanted = _BOOLEANS[value.lower()]
    elif isinstance(got, int):
        numeric = re.fullmatch(r"-?\d+", value)
        wanted = int(value) if numeric else _ENUMS.get(name, {}).get(value.lower(), value)
    else:
        got, wanted = str(got).lower(), value.lower()
    if got != wanted:
        raise MemdbError(
            BAD_PRAGMA(
                origin=origin,
                problem=f"SQLite did not accept {line!r} (reading {name} back gave "
                f"{after[0]!r}); check the value.",
            )
        )


class _DBAPIConnection(Protocol):
    def cursor(self) -> Any: ...


def apply_pragmas(connection: _DBAPIConnection, pragmas: Pragmas) -> None:
    """Set ``pragmas`` on a fresh DBAPI connection (before it starts any transaction)."""
    if not pragmas:
        return
    cursor = connection.cursor()
    try:
        for name, value in pragmas:
            cursor.execute(f"PRAGMA {name}={value}")
    finally:
        cursor.close()
