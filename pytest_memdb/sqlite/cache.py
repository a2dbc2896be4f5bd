"""``memdb_cache``: built templates kept in pytest's cache folder, across workers and runs.

A template built from a migration chain or seed scripts can take seconds, and every
xdist worker builds its own, in every run. With the cache, the first process to need a
template builds it and writes it to ``.pytest_cache/d/pytest-memdb/<key>.sqlite``; the
others wait for it (its lock, bounded) and load it, and later runs load it until an
input changes. The template is built (or loaded) once per process and never written
again; the cache only ever reads it, to write the entry.

When in doubt, rebuild:

* the key is made of everything the build reads or runs (:mod:`pytest_memdb.sqlite.cache_key`:
  the file's identity, every statement ``create_all`` runs with its events, every file
  Alembic loads, the seed steps, the hooks' modules and, with a hook, every field of the
  target it is given); a template whose build cannot be seen whole is not cached;
* an entry is verified on every read (size and SHA-256 against its manifest,
  :mod:`pytest_memdb.sqlite.cache_entries`); a bad one is built again and replaced, with a
  warning saying what was wrong;
* a valid entry is read with no lock; only a process that builds takes the entry's lock
  (:mod:`pytest_memdb.sqlite.cache_lock`), and a wait of more than a few seconds says what it
  waits for, whom, and how to get out; after :data:`~pytest_memdb.sqlite.cache_lock.WAIT_S` it
  builds without the cache;
* a cache folder that cannot be made, read or written means building without the cache
  for the rest of the run, with one warning.

``--cache-clear`` (pytest's) empties the folder; ``--memdb-rebuild`` builds every
template again once in the run (once for all xdist workers of the run) and replaces it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_memdb.core.config import MemdbConfig, Target
from pytest_memdb.errors import MemdbError
from pytest_memdb.sqlite.cache_entries import Bad, Entry, Good
from pytest_memdb.sqlite.cache_lock import NOTICE_S, WAIT_S, building
from pytest_memdb.sqlite.loading import load_file
from pytest_memdb.sqlite.memory import MemoryDatabase
from pytest_memdb.sqlite.pragmas import Pragmas


class QuickCheckCache:
    """Fixture files whose ``PRAGMA quick_check`` passed, kept in pytest's cache by identity
    (:func:`pytest_memdb.sqlite.loading.file_identity`), so a later run skips the check."""

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
    """The cache folder of one run (one process of it), and the inputs every key is made of.

    ``warn`` gets what went wrong (a bad entry, a folder that cannot be used, a template
    that cannot be keyed), each message once; ``announce`` what must be seen while it
    happens (a long wait for another process's lock).
    """

    def __init__(
        self,
        folder: Path,
        *,
        run_id: str,
        rebuild: bool,
        base_dir: Path,
        pragmas: Pragmas,
        hook_functions: Sequence[Callable[..., Any]],
        worker: str = "",
        warn: Callable[[str], None] | None = None,
        announce: Callable[[str], None] | None = None,
        unusable: OSError | None = None,
        wait_s: float = WAIT_S,
        notice_s: float = NOTICE_S,
    ) -> None:
        self.folder = folder
        self.run_id = run_id
        self.rebuild = rebuild
        self._base_dir = base_dir
        self._pragmas = pragmas
        self._hooks = hook_functions
        self._worker = worker
        self._warn = warn or _warn
        self._announce = announce or self._warn
        self._wait_s = wait_s
        self._notice_s = notice_s
        self._said: set[str] = set()
        self._unusable: OSError | None = unusable
        """Why the folder cannot be used (then every template is built without it)."""
        self._told_unusable = False
        self.built = 0
        """Templates this process built (and wrote) during the run."""
        self.loaded = 0
        """Templates this process loaded from the cache."""

    def template(
        self, target: Target, name: str, build: Callable[[], MemoryDatabase]
    ) -> MemoryDatabase:
        """The template ``target`` describes: from the cache, or built and put there."""
        if self._unusable is not None:
            return self._without_cache(build)
        from pytest_memdb.sqlite.cache_key import Uncacheable

        try:
            key = self.key(target)
        except Uncacheable as exc:
            self._say(
                f"pytest-memdb: memdb_cache: the template of {target.describe()} is built "
                f"without the cache: {exc}."
            )
            return build()
        entry = Entry(self.folder, key)
        try:  # no lock: entries are renamed into place whole, and verified
            found = self._load(entry.read(), name)
        except OSError as exc:
            return self._without_cache(build, exc)
        if isinstance(found, MemoryDatabase):
            return found
        return self._build_and_write(entry, name, build)

    def _build_and_write(
        self, entry: Entry, name: str, build: Callable[[], MemoryDatabase]
    ) -> MemoryDatabase:
        with contextlib.ExitStack() as held:
            try:
                locked = held.enter_context(
                    building(
                        entry,
                        tell=self._announce,
                        worker=self._worker,
                        wait_s=self._wait_s,
                        notice_s=self._notice_s,
                    )
                )
                found = self._load(entry.read(), name) if locked else None
            except OSError as exc:
                failure: OSError | None = exc
            else:
                failure = None
                if not locked:
                    return build()
                if isinstance(found, MemoryDatabase):  # another process built it meanwhile
                    return found
                database = build()
                try:
                    entry.write(database.anchor, self.run_id)
                except OSError as exc:
                    self._cannot_use(exc)
                    return database
                self.built += 1
                if isinstance(found, Bad):
                    self._say(
                        f"pytest-memdb: the cached template {found.path} was bad "
                        f"({found.reason}); built it again and replaced it."
                    )
                return database
        return self._without_cache(build, failure)

    def _load(self, found: Good | Bad | None, name: str) -> MemoryDatabase | Bad | None:
        """The verified entry loaded; a :class:`Bad` one, or None (none, or an older
        run's under ``--memdb-rebuild``), to be built."""
        if not isinstance(found, Good):
            return found
        if self.rebuild and found.run_id != self.run_id:
            return None
        try:
            database = load_file(found.path, name, origin="the memdb template cache", shared=False)
        except MemdbError as exc:  # whole and as written, yet SQLite refuses it
            return Bad(found.path, str(exc))
        self.loaded += 1
        return database

    def _without_cache(
        self, build: Callable[[], MemoryDatabase], error: OSError | None = None
    ) -> MemoryDatabase:
        self._cannot_use(error or self._unusable)
        return build()

    def _cannot_use(self, error: OSError | None) -> None:
        """Say once in the run that the folder cannot be used, and stop using it."""
        if self._told_unusable or error is None:
            return
        self._unusable, self._told_unusable = error, True
        self._say(
            f"pytest-memdb: memdb_cache cannot use its folder {self.folder} "
            f"({type(error).__name__}: {error}); templates are built without it for the "
            "rest of this run."
        )

    def _say(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            self._warn(message)

    def key(self, target: Target) -> str:
        """The hash of everything that builds ``target``'s template
        (:func:`pytest_memdb.sqlite.cache_key.template_key`)."""
        from pytest_memdb.sqlite.cache_key import template_key

        return template_key(
            target, base_dir=self._base_dir, pragmas=self._pragmas, hooks=self._hooks
        )


def _warn(message: str) -> None:
    """A warning for pytest's summary, placed at the plugin rather than at a line of it."""
    warnings.warn_explicit(message, pytest.PytestWarning, filename="pytest-memdb", lineno=0)


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
    unusable = None
    try:  # pytest's own mkdir: it also writes the cache folder's .gitignore and README
        folder = cache.mkdir("pytest-memdb")
    except OSError as exc:  # pytest itself only warns when it cannot write its cache
        unusable = exc
        folder = Path(getattr(cache, "_cachedir", ".pytest_cache"), "d", "pytest-memdb")
    return TemplateCache(
        folder,
        run_id=workerinput.get("testrunuid") or uuid.uuid4().hex,
        rebuild=settings.rebuild,
        base_dir=settings.base_dir,
        pragmas=settings.pragmas,
        hook_functions=[
            impl.function for impl in config.hook.pytest_memdb_template.get_hookimpls()
        ],
        worker=workerinput.get("workerid", ""),
        announce=_announcer(config),
        unusable=unusable,
    )


def _announcer(config: pytest.Config) -> Callable[[str], None]:
    """Print a message at once, past pytest's capture, and warn it (the summary)."""

    def announce(message: str) -> None:
        capture: Any = config.pluginmanager.getplugin("capturemanager")
        reporter: Any = config.pluginmanager.getplugin("terminalreporter")
        paused = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
        with paused:
            if reporter is not None and not hasattr(config, "workerinput"):
                reporter.write_line(message)
            else:  # an xdist worker: its stderr is the terminal's
                sys.stderr.write(message + "\n")
                sys.stderr.flush()
        _warn(message)

    return announce
