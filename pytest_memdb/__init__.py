"""pytest-memdb: isolated in-memory SQLite databases for async SQLAlchemy tests; a runtime class.

Names are imported lazily: the pytest plugin imports this package in every run,
and SQLAlchemy should only be loaded by runs that use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_memdb.errors import FixtureFileError, IsolationError, MemdbError, MemdbWarning

if TYPE_CHECKING:
    from pytest_memdb.core.janitor import MemdbHandle
    from pytest_memdb.core.layers import MemdbLayer
    from pytest_memdb.integrations.queries import CapturedQueries, QueryCounter
    from pytest_memdb.plugin.factories import memdb_factory
    from pytest_memdb.runtime import InMemoryDatabase
    from pytest_memdb.sqlite.ignored_pragmas import IgnoredPragmaWarning

__all__ = [
    "CapturedQueries",
    "FixtureFileError",
    "IgnoredPragmaWarning",
    "InMemoryDatabase",
    "IsolationError",
    "MemdbError",
    "MemdbHandle",
    "MemdbLayer",
    "MemdbWarning",
    "QueryCounter",
    "memdb_factory",
]
__version__ = "0.4.0"

_LAZY = {
    "IgnoredPragmaWarning": "pytest_memdb.sqlite.ignored_pragmas",
    "InMemoryDatabase": "pytest_memdb.runtime",
    "MemdbHandle": "pytest_memdb.core.janitor",
    "MemdbLayer": "pytest_memdb.core.layers",
    "memdb_factory": "pytest_memdb.plugin.factories",
    "QueryCounter": "pytest_memdb.integrations.queries",
    "CapturedQueries": "pytest_memdb.integrations.queries",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pytest_memdb' has no attribute {name!r}")
