"""What a cached template's key is made of: everything its build reads or runs.

Imports SQLAlchemy: load lazily. When in doubt, rebuild: a part that cannot be seen
without running the build (an ``after_create`` listener that reads from the database)
makes the template uncacheable (:class:`Uncacheable`), never a guess. The parts:

* the fixture file's identity (resolved path, size, mtime and ctime in ns, inode; its
  ``-wal`` too): hashing a 100 MB file would cost more (129 ms) than building from it.
  A file changed less than :data:`RACY_S` ago is hashed as well: on a file system with
  a coarse clock, two writes within one tick keep the same ``stat`` (ext4 here gave 2000
  distinct mtimes to 2000 writes in a row; FAT's tick is 2 s, HFS+'s 1 s);
* every statement ``metadata.create_all`` would run, replayed on a mock connection
  (``checkfirst=False``): ``CREATE TABLE`` and ``CREATE INDEX`` as compiled for SQLite,
  and what ``before_create``/``after_create`` events add (a ``DDL`` trigger, view or
  seed row, a listener's ``connection.execute``), with their parameters;
* for Alembic, the bytes of the ``alembic.ini``, ``env.py`` and ``script.py.mako``, of
  every revision file Alembic loads (its own ``ScriptDirectory.walk_revisions``), and of
  every file in every version location (``version_locations`` outside the script folder
  and symlinked folders included, paths resolved), and the revision;
* the bytes of every ``.sql`` load step; for a callable load step and for each
  ``pytest_memdb_template`` hook implementation, the source of its module;
* with a hook, every field of the :class:`Target` it is given (``target.fixture``
  included: ``memdb`` and a ``memdb_factory`` fixture on one source are two templates
  when a hook can tell them apart); without one, only what the build reads;
* ``memdb_pragmas``, and the versions of SQLite, SQLAlchemy, Alembic and pytest-memdb
  (and the source of the plugin's modules that build, for an editable install).

Not seen: what the hook reads from ``config`` or the environment, what a seed callable,
hook or ``env.py`` imports from other modules or reads from other files at run time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import inspect
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pytest_memdb.core.config import Target
from pytest_memdb.errors import MemdbError
from pytest_memdb.sqlite.loading import file_identity
from pytest_memdb.sqlite.pragmas import Pragmas

FORMAT = 2
"""The layout of entries and keys; a change makes every old entry unreachable."""

RACY_S = 3.0
"""A fixture file changed (mtime or ctime) this recently is hashed, not only ``stat``-ed:
file systems with a coarse clock (2 s on FAT, 1 s on HFS+) keep both across two writes."""

_BUILDING_MODULES = (
    "core.templates",
    "core.migrations",
    "sqlite.build",
    "sqlite.loading",
    "sqlite.migrating",
    "sqlite.cache_key",
    "sqlite.cache_entries",
)
"""The modules that build a template, by their names under ``pytest_memdb`` (a name that
is not a module would hash as itself: an edit to it would not be seen)."""


class Uncacheable(Exception):
    """A part of the build cannot be seen without running it; the message says which."""


def template_key(
    target: Target,
    *,
    base_dir: Path,
    pragmas: Pragmas,
    hooks: Sequence[Callable[..., Any]],
) -> str:
    """The hash of everything that builds ``target``'s template (see the module doc)."""
    digest = hashlib.sha256()

    def add(label: str, value: object) -> None:
        digest.update(f"{label}={value!r}\n".encode("utf-8", "surrogatepass"))

    add("format", FORMAT)
    for package in ("pytest-memdb", "SQLAlchemy", "alembic"):
        add(package, _version(package))
    for module in _BUILDING_MODULES:  # an editable install's changes
        add(module, module_hash(f"pytest_memdb.{module}"))
    add("sqlite", sqlite3.sqlite_version)
    add("pragmas", pragmas)
    if target.file is not None:
        add("file", _file_state(target.file))
    if target.metadata is not None:
        from pytest_memdb.core.importing import import_metadata

        metadata = import_metadata(target.metadata, target.metadata_origin, base_dir)
        add("create_all", create_all_statements(metadata, target.metadata))
    if target.alembic is not None:
        add("alembic", target.alembic_revision)
        for part in alembic_inputs(target.alembic):
            add("alembic file", part)
    for step in target.load:
        if step.script is not None:
            add(str(step.script), file_hash(step.script))
        elif step.callable is not None:
            module = step.callable.partition(":")[0]
            add(step.callable, module_hash(module, base_dir))
    for function in hooks:
        add("hook", _source_hash(function))
    if hooks:  # what the hook is given, it may branch on
        for field in dataclasses.fields(target):
            add(f"target.{field.name}", getattr(target, field.name))
    return digest.hexdigest()[:32]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _file_state(path: Path) -> tuple[object, ...]:
    """The file's identity; its content's hash too when it changed within :data:`RACY_S`."""
    identity = file_identity(path)
    times = [t for part in identity if isinstance(part, list) for t in part[2:4]]
    # mtime and ctime in ns of the file and its -wal; the kernel sets ctime on every
    # write (touch -d cannot turn it back), so an old ctime means a later write shows
    if any(isinstance(t, int) and time.time_ns() - t < RACY_S * 1e9 for t in times):
        real = Path(os.path.realpath(path))
        return (identity, file_hash(real), file_hash(Path(f"{real}-wal")))
    return identity


def create_all_statements(metadata: Any, name: str) -> list[str]:
    """Every statement ``metadata.create_all`` runs on SQLite, events included, compiled.

    Raises :class:`Uncacheable` when replaying it without a database fails (a listener
    that reads from the connection, or asks the database something).
    """
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.engine.mock import MockConnection

    dialect = sqlite.dialect()
    statements: list[str] = []

    def record(statement: Any, parameters: Any = None, *more: Any, **named: Any) -> None:
        text = statement if isinstance(statement, str) else str(statement.compile(dialect=dialect))
        statements.append(f"{text} -- {parameters!r} {more!r} {sorted(named.items())!r}")

    class Recorder(MockConnection):
        """A mock connection that also takes ``exec_driver_sql`` (listeners use it)."""

        def exec_driver_sql(self, statement: str, parameters: Any = None, *more: Any) -> None:
            record(statement, parameters, *more)

    try:
        metadata.create_all(Recorder(dialect, record), checkfirst=False)
    except Exception as exc:
        raise Uncacheable(
            f"replaying {name!r}'s create_all without a database failed "
            f"({type(exc).__name__}: {exc}), so what its events run cannot be keyed"
        ) from exc
    return statements


def alembic_inputs(ini: Path) -> list[tuple[str, str]]:
    """(resolved path, content hash) of every file Alembic reads to migrate (module doc).

    A project Alembic cannot load gives what could be read and the error: the build
    reports it, and a failed build is never cached.
    """
    parts = [(str(ini.resolve()), file_hash(ini))]
    try:
        from pytest_memdb.core.migrations import load_project, sys_path_kept

        _config, script = load_project(ini, str(ini))
    except (ImportError, MemdbError) as exc:
        return [*parts, ("cannot load", str(exc))]
    folder = Path(script.dir).resolve()
    for name in ("env.py", "script.py.mako"):
        parts.append((str(folder / name), file_hash(folder / name)))
    for location in _version_locations(script):
        parts.extend((str(path), file_hash(path)) for path in _files_under(location))
    try:
        with sys_path_kept():
            revisions = sorted(str(Path(each.path).resolve()) for each in script.walk_revisions())
    except Exception as exc:  # a broken chain: the build says what is wrong with it
        return [*parts, ("revisions", f"{type(exc).__name__}: {exc}")]
    parts.extend((path, file_hash(Path(path))) for path in revisions)
    return parts


def _version_locations(script: Any) -> list[Path]:
    """The version folders Alembic searches (its ``_version_locations``), resolved."""
    from alembic.util import coerce_resource_to_filename

    named = list(getattr(script, "version_locations", None) or [])
    if not named:
        return [(Path(script.dir) / "versions").resolve()]
    return [Path(coerce_resource_to_filename(str(each))).resolve() for each in named]


def _files_under(folder: Path) -> Iterator[Path]:
    """Every file below ``folder``, following symlinks (each real folder once)."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            yield Path(real, name)


def file_hash(path: Path) -> str:
    """The SHA-256 of the file's bytes; a missing or unreadable file says so instead."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable: {type(exc).__name__}"


def module_hash(module_name: str, base_dir: Path | None = None) -> str:
    """The hash of a module's source file, found without importing it (as the build would,
    from ``base_dir``)."""
    module = sys.modules.get(module_name)
    source = getattr(module, "__file__", None)
    if source is None:
        folder = str(base_dir) if base_dir is not None else None
        added = folder is not None and folder not in sys.path
        if added:
            sys.path.insert(0, str(folder))
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            spec = None
        finally:
            if added:
                sys.path.remove(str(folder))
        source = spec.origin if spec is not None else None
    return file_hash(Path(source)) if source else module_name


def _source_hash(function: Callable[..., Any]) -> str:
    try:
        source = inspect.getsourcefile(function)
    except TypeError:
        source = None
    return file_hash(Path(source)) if source else repr(function)
