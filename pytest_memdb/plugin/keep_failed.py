"""``--memdb-keep-failed``: the databases of a failing test, written where the user asked.

Standard library only (and pytest). The images are taken before the test's teardown,
so each is the database as the test left it.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_memdb.errors import MemdbError

if TYPE_CHECKING:
    from pytest_memdb.core.janitor import MemdbHandle

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_PLAIN_NODEID = re.compile(r"[A-Za-z0-9_./-]+(?:::[A-Za-z0-9_.-]+)*")
"""A test id whose sanitized form is readable and unlikely to meet another's as is."""
MAX_STEM = 120


def dump_path(directory: Path, nodeid: str, fixture: str, suffix: str = ".sqlite") -> Path:
    """``DIR/<sanitized test id>.sqlite`` (plus ``-<fixture>`` for a factory's database);
    ``suffix`` is the backend's (PostgreSQL's files are ``.sql``).

    Sanitizing loses information (``test[a/b]``, ``test[a b]`` and ``test[a_b]`` all
    read ``test_a_b``), so an id with anything but letters, digits, ``_.-``, ``/`` and
    ``::`` in it, and one cut short to keep the name legal, gets a hash of the full id:
    two tests never share a file.
    """
    sanitized = _UNSAFE.sub("_", nodeid)
    stem = sanitized.strip("_.") or "test"
    if stem != sanitized or not _PLAIN_NODEID.fullmatch(nodeid) or len(stem) > MAX_STEM:
        digest = hashlib.sha1(nodeid.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        stem = f"{stem[: MAX_STEM - 11].rstrip('_.')}-{digest}"
    if fixture != "memdb":
        stem = f"{stem}-{_UNSAFE.sub('_', fixture)}"
    return directory / f"{stem}{suffix}"


def keep_databases(
    held: Sequence[tuple[str, MemdbHandle]], directory: Path, item: pytest.Item
) -> list[str]:
    """Write each database a failing test holds; one report line per database."""
    lines = []
    for fixture, handle in held:
        path = dump_path(directory, item.nodeid, fixture, handle.dump_suffix)
        try:
            what = handle.save(path)
        except MemdbError as exc:  # a database it cannot write (no pg_dump): say why, go on
            lines.append(f"{fixture}: {exc}")
        except (OSError, sqlite3.Error) as exc:
            lines.append(f"{fixture}: could not write the database to {path}: {exc}")
        else:
            lines.append(f"{fixture}: {what} is in {path}")
    return lines
