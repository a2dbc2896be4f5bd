"""``memdb_factory``: more databases per test, each a fixture of its own.

Modelled on pytest-postgresql's factories: a ``conftest.py`` line defines a
fixture, the plugin does the rest. Cheap to import (no SQLAlchemy).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_memdb.core.config import check_dotted, parse_bind, parse_isolation, parse_load
from pytest_memdb.errors import MemdbError

if TYPE_CHECKING:
    from pytest_memdb.core.janitor import MemdbHandle


def memdb_factory(
    name: str,
    *,
    file: str | os.PathLike[str] | None = None,
    metadata: str | None = None,
    load: Sequence[str] | str = (),
    isolation: str | None = None,
    alembic: str | os.PathLike[str] | None = None,
    bind: Sequence[str] | str = (),
) -> Callable[..., Iterator[MemdbHandle]]:
    """Define a fixture called ``name`` whose value is a database handle like ``memdb``'s.

    ``analytics_db = memdb_factory("analytics_db", file="data/analytics.sqlite")`` in a
    ``conftest.py``. ``file`` (relative to the ini file's folder), ``metadata``
    (``package.module:Base``) and ``load`` work as the ini options do but describe
    only this database; ``alembic`` (an ``alembic.ini``) and ``bind`` (the app's engines
    and sessionmakers to point at it) too; ``isolation`` defaults to the run's
    ``memdb_isolation``.
    Each factory has its own template, built once per session and shared by the
    tests that use it; two factory fixtures in one test are two databases.
    """
    origin = f"memdb_factory({name!r})"
    options: dict[str, Any] = {"file": file, "metadata": metadata, "load": load}
    options.update(isolation=isolation, alembic=alembic, bind=bind)
    try:  # check the shape now, so a typo fails where it was written, at import
        if not name.isidentifier() or name == "memdb":
            raise MemdbError(
                f"pytest-memdb: {origin}: the name must be a Python identifier other than 'memdb'."
            )
        if file is None and metadata is None and alembic is None:
            raise MemdbError(
                f"pytest-memdb: {origin} needs file=..., metadata=... or alembic=... (or more)."
            )
        if metadata is not None:
            check_dotted(metadata, f"{origin}, metadata=")
        if isolation is not None:
            parse_isolation(isolation, f"{origin}, isolation=")
        parse_load(load, f"{origin}, load=", Path())
        parse_bind(bind, f"{origin}, bind=")
    except MemdbError as exc:
        raise pytest.UsageError(str(exc)) from None

    @pytest.fixture(name=name)
    def factory_fixture(request: pytest.FixtureRequest) -> Iterator[MemdbHandle]:
        from pytest_memdb.plugin.opening import open_database
        from pytest_memdb.plugin.state import settings_key

        settings = request.config.stash[settings_key]
        yield from open_database(request, name, lambda: settings.factory_target(name, options))

    factory_fixture.__doc__ = f"A pytest-memdb database: {origin}."
    return factory_fixture
