"""``memdb_cache``: built templates kept in pytest's cache folder, across workers and runs.

Imports SQLAlchemy: load lazily. A template built from a migration chain or seed scripts
can take seconds, and every xdist worker builds its own, in every run. With the cache,
the first worker to need a template builds it and writes it to
``.pytest_cache/d/pytest-memdb/<key>.sqlite``; the other workers wait for it (a file lock,
bounded) and load it, and later runs load it until an input changes.

The key is a SHA-256 of everything that built the template:

* the fixture file's identity and ``stat`` (resolved path, size, mtime in ns, inode; its
  ``-wal`` too): hashing a 100 MB file would cost more (129 ms) than building from it;
* the DDL SQLite would get for the metadata's tables and indexes (``CREATE TABLE`` as
  compiled for SQLite), so a changed model changes the key;
* the bytes of the ``alembic.ini``, of ``env.py`` and of every file in the migration
  scripts' folder, and the revision;
* the bytes of every ``.sql`` load step; for a callable load step and for each
  ``pytest_memdb_template`` hook implementation, the source of the module it is defined
  in. Not seen: what such code reads at run time (another module it imports, a data
  file, an environment variable). Change the module, or run with ``--memdb-rebuild``;
* ``memdb_pragmas``, and the versions of SQLite, SQLAlchemy, Alembic and pytest-memdb.

``--cache-clear`` (pytest's) empties the folder; ``--memdb-rebuild`` builds every
template again once in the run (once for all xdist workers of the run) and replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import sqlite3
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_memdb.config import MemdbConfig, Target
from pytest_memdb.loading import load_file
from pytest_memdb.memory import MemoryDatabase
from pytest_memdb.pragmas import Pragmas

LOCK_WAIT_S = 600.0
"""How long a worker waits for another one to finish building a template before it
builds its own (a build is minutes at worst; a crashed worker's lock is released by the
system at once)."""


class QuickCheckCache:
    """Fixture files whose ``PRAGMA quick_check`` passed, kept in pytest's cache by identity
    (:func:`pytest_memdb.loading.file_identity`), so a later run skips the check."""

    KEY = "pytest-memdb/quick-check"
    LIMIT = 64
    """Identities kept (the newest): old files' entries should not pile up forever."""

    def __init__(self, cache: pytest.Cache) -> None:
        self._cache = cache
        self._known: list[str] = list(cache.get(self.KEY, []))

    def __contains__(self, identity: object) -> bool:
        return json.dumps(identity) in self._known

    def add(self, identity: tuple[object, ...]) -> None:
        self._known = [*self._known, json.dumps(identity)][-self.LIMIT :]
        self._cache.set(self.KEY, self._known)


class TemplateCache:
    """The cache folder of one run, and the inputs every key is made of."""

    def __init__(
        self,
        folder: Path,
        *,
        run_id: str,
        rebuild: bool,
        base_dir: Path,
        pragmas: Pragmas,
        hook_functions: Sequence[Callable[..., Any]],
    ) -> None:
        self.folder = folder
        self.run_id = run_id
        self.rebuild = rebuild
        self._base_dir = base_dir
        self._pragmas = pragmas
        self._hooks = hook_functions
        self.built = 0
        """Templates this process built (and wrote) during the run."""
        self.loaded = 0
        """Templates this process loaded from the cache."""

    def template(
        self, target: Target, name: str, build: Callable[[], MemoryDatabase]
    ) -> MemoryDatabase:
        """The template ``target`` describes: from the cache, or built and put there."""
        key = self.key(target)
        entry = self.folder / f"{key}.sqlite"
        stamp = self.folder / f"{key}.run"
        with _locked(self.folder / f"{key}.lock") as locked:
            if locked and self._valid(entry, stamp):
                self.loaded += 1
                return load_file(entry, name, origin="the memdb template cache", shared=False)
            database = build()
            if locked:
                _write(database, entry)
                stamp.write_text(self.run_id, encoding="utf-8")
            self.built += 1
            return database

    def _valid(self, entry: Path, stamp: Path) -> bool:
        if not entry.is_file():
            return False
        if not self.rebuild:
            return True
        try:  # --memdb-rebuild: only what this run built counts
            return stamp.read_text(encoding="utf-8") == self.run_id
        except OSError:
            return False

    def key(self, target: Target) -> str:
        """The hash of everything that builds ``target``'s template (see the module doc)."""
        digest = hashlib.sha256()

        def add(label: str, value: object) -> None:
            digest.update(f"{label}={value!r}\n".encode("utf-8", "surrogatepass"))

        for package in ("pytest-memdb", "SQLAlchemy", "alembic"):
            add(package, _version(package))
        for module in ("templates", "loading", "migrations"):  # an editable install's changes
            add(module, _module_hash(f"pytest_memdb.{module}"))
        add("sqlite", sqlite3.sqlite_version)
        add("pragmas", self._pragmas)
        if target.file is not None:
            for path in (target.file, Path(f"{target.file}-wal")):
                add("file", _identity(path))
        if target.metadata is not None:
            from pytest_memdb.importing import import_metadata

            metadata = import_metadata(target.metadata, target.metadata_origin, self._base_dir)
            add("ddl", _ddl(metadata))
        if target.alembic is not None:
            add("alembic", target.alembic_revision)
            for path in _alembic_files(target.alembic):
                add(str(path), _file_hash(path))
        for step in target.load:
            if step.script is not None:
                add(str(step.script), _file_hash(step.script))
            elif step.callable is not None:
                module = step.callable.partition(":")[0]
                add(step.callable, _module_hash(module, self._base_dir))
        for function in self._hooks:
            add("hook", _source_hash(function))
        return digest.hexdigest()[:32]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _identity(path: Path) -> tuple[object, ...]:
    try:
        info = path.stat()
    except OSError:
        return (str(path), None)
    return (os.path.realpath(path), info.st_size, info.st_mtime_ns, info.st_ino)


def _ddl(metadata: Any) -> list[str]:
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable

    dialect = sqlite.dialect()
    statements = []
    for table in metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=dialect)))
        statements.extend(
            str(CreateIndex(index).compile(dialect=dialect))
            for index in sorted(table.indexes, key=lambda index: str(index.name))
        )
    return statements


def _alembic_files(ini: Path) -> list[Path]:
    """The ``alembic.ini`` and every file of its script folder (``env.py``, versions)."""
    files = [ini]
    try:
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        folder = Path(ScriptDirectory.from_config(Config(str(ini))).dir)
    except Exception:  # the build reports a broken setup, with the reason
        return files
    files.extend(
        sorted(
            path for path in folder.rglob("*") if path.is_file() and "__pycache__" not in path.parts
        )
    )
    return files


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def _module_hash(module_name: str, base_dir: Path | None = None) -> str:
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
    return _file_hash(Path(source)) if source else module_name


def _source_hash(function: Callable[..., Any]) -> str:
    try:
        source = inspect.getsourcefile(function)
    except TypeError:
        source = None
    return _file_hash(Path(source)) if source else repr(function)


def _write(database: MemoryDatabase, entry: Path) -> None:
    """Write the template to ``entry`` whole or not at all (a reader never sees half)."""
    partial = entry.with_name(f"{entry.name}.{os.getpid()}.partial")
    target = sqlite3.connect(partial)
    try:
        database.anchor.backup(target)
    finally:
        target.close()
    os.replace(partial, entry)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (True), or give up after :data:`LOCK_WAIT_S`
    (False: build without writing to the cache)."""
    try:
        import fcntl
    except ImportError:  # not on Windows: no lock, every worker builds and writes in turn
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    warnings.warn(
                        f"pytest-memdb: waited {LOCK_WAIT_S:.0f} s for another worker to "
                        f"build the template cached at {path.with_suffix('.sqlite')}; "
                        "building it here instead.",
                        pytest.PytestWarning,
                        stacklevel=3,
                    )
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def quick_check_cache(config: pytest.Config) -> QuickCheckCache | None:
    """Fixture files known to pass ``quick_check``, in pytest's cache (None without one)."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return None
    return QuickCheckCache(cache)


def template_cache(config: pytest.Config, settings: MemdbConfig) -> TemplateCache | None:
    """The run's :class:`TemplateCache`, or None (with a warning) without pytest's cache."""
    cache = getattr(config, "cache", None)
    if cache is None:
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                "pytest-memdb: memdb_cache needs pytest's cache (it is off: -p no:cacheprovider); "
                "templates are built as without it."
            ),
            stacklevel=2,
        )
        return None
    workerinput = getattr(config, "workerinput", {})
    return TemplateCache(
        cache.mkdir("pytest-memdb"),
        run_id=workerinput.get("testrunuid") or uuid.uuid4().hex,
        rebuild=settings.rebuild,
        base_dir=settings.base_dir,
        pragmas=settings.pragmas,
        hook_functions=[
            impl.function for impl in config.hook.pytest_memdb_template.get_hookimpls()
        ],
    )
