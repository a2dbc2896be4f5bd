"""``PRAGMA foreign_keys = ...`` run inside a rollback-mode test: SQLite ignores it, say so.

SQLite documents that this pragma "is a no-op within a transaction", and rollback
isolation runs every test inside one (:mod:`pytest_memdb.sqlite.savepoints`). An app that turns
foreign keys on itself (at start-up, per session, in a dependency) therefore runs its
tests without them, and a test that should fail on a dangling reference passes. The
plugin's own ``memdb_pragmas`` are set on the connection before any transaction begins,
so that is the fix this warning names.

Looked at only for statements that may leave per-connection state (which rollback mode
already asks of every statement, from a cache: :func:`leaves_connection_state`), and only
the ones that set ``foreign_keys`` read the current value back.
"""

from __future__ import annotations

import re

import pytest

from pytest_memdb.core.statements import from_first_keyword
from pytest_memdb.errors import MemdbWarning
from pytest_memdb.messages import IGNORED_PRAGMA

_SETTING = re.compile(
    r"PRAGMA\s+(?:main\s*\.\s*)?foreign_keys\s*(?:=\s*|\(\s*)['\"]?(\w+)",
    re.IGNORECASE,
)
_VALUES = {"on": 1, "true": 1, "yes": 1, "1": 1, "off": 0, "false": 0, "no": 0, "0": 0}


class IgnoredPragmaWarning(MemdbWarning, pytest.PytestWarning):
    """A PRAGMA the test or the app ran did nothing, because of the plugin's isolation."""


def foreign_keys_setting(statement: str) -> int | None:
    """The value ``statement`` sets ``foreign_keys`` to (1 or 0); None if it sets nothing
    (another statement, a read of the pragma, a value SQLite would not take)."""
    match = _SETTING.match(from_first_keyword(statement))
    return _VALUES.get(match.group(1).lower()) if match else None


def ignored(statement: str, wanted: int, current: int) -> IgnoredPragmaWarning:
    """The warning for ``statement``, which asked for ``wanted`` and left ``current``."""
    shown = " ".join(statement.split())[:200]
    state = "ON" if current else "OFF"
    setting = "ON" if wanted else "OFF"
    return IgnoredPragmaWarning(IGNORED_PRAGMA(statement=shown, state=state, setting=setting))
