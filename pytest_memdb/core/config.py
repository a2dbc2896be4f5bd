"""Settings, read once from pytest's options: the command line wins over the ini file.

Imports nothing heavy: this module is loaded by every pytest run in an
environment where the plugin is installed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from pytest_memdb.errors import MemdbError
from pytest_memdb.integrations.takeover_patterns import TakeoverPattern, parse_takeover
from pytest_memdb.messages import (
    BAD_BOOL,
    BAD_DOTTED_PATH,
    BAD_VALUE,
    FACTORIES_NOT_INSTALLED,
    NO_SOURCE,
    UNKNOWN_OPTION,
)
from pytest_memdb.options import BOOL_INI_OPTIONS, INI_OPTIONS
from pytest_memdb.options import ISOLATION_MODES as ISOLATION_MODES
from pytest_memdb.options import RESTORE_WAYS as RESTORE_WAYS
from pytest_memdb.options import Isolation as Isolation
from pytest_memdb.options import Restore as Restore
from pytest_memdb.sqlite.pragmas import Pragmas, parse_pragmas

DEFAULT_ISOLATION: Isolation = "copy"
MARKER_ARGS = ("file", "metadata", "load", "isolation", "bind", "alembic")
DEFAULT_FIXTURE = "memdb"

LAYER_FIXTURES: dict[str, str] = {
    "session": "memdb_suite",
    "module": "memdb_module",
    "class": "memdb_class",
}
"""The layer fixture of each pytest scope, outermost first (:mod:`pytest_memdb.core.layers`)."""
_DOTTED = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
FACTORY_LIBRARIES = ("factory", "polyfactory")
"""The import names of factory_boy and polyfactory (``memdb_factories`` needs one)."""


@dataclass(frozen=True)
class LoadStep:
    """One seeding step: a ``.sql`` script or a ``package.module:callable``."""

    entry: str
    """As the user wrote it, for error messages."""
    origin: str
    script: Path | None = None
    callable: str | None = None

    def describe(self) -> str:
        if self.script is not None:
            return f"SQL script {str(self.script)!r} (entry {self.entry!r} in {self.origin})"
        return f"callable {self.callable!r} (from {self.origin})"


@dataclass(frozen=True)
class Target:
    """What one database fixture of one test is built from and how it is isolated, and why."""

    file: Path | None
    file_origin: str
    isolation: Isolation
    metadata: str | None = None
    metadata_origin: str = ""
    load: tuple[LoadStep, ...] = ()
    fixture: str = DEFAULT_FIXTURE
    """The fixture that asked (``memdb`` or a ``memdb_factory`` name): each has its own
    templates, so two factory fixtures in one test are two databases."""
    alembic: Path | None = None
    """An ``alembic.ini`` whose migrations build the template (after the file, if any)."""
    alembic_revision: str = "head"
    alembic_origin: str = ""
    bind: tuple[str, ...] = ()
    """``package.module:attr`` of the app's engines and sessionmakers to point at the test's
    database for each test (:mod:`pytest_memdb.integrations.binding`)."""
    bind_origin: str = ""

    def template_key(self) -> tuple[object, ...]:
        """Tests whose targets share this key share one template."""
        return (
            self.fixture,
            _identity(self.file) if self.file is not None else None,
            self.metadata,
            tuple((step.script, step.callable) for step in self.load),
            _identity(self.alembic) if self.alembic is not None else None,
            self.alembic_revision,
        )

    def describe(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(f"file {str(self.file)!r}")
        if self.metadata is not None:
            parts.append(f"metadata {self.metadata!r}")
        if self.alembic is not None:
            parts.append(f"migrations of {str(self.alembic)!r} to {self.alembic_revision!r}")
        if self.load:
            parts.append(f"{len(self.load)} load step(s)")
        return ", ".join(parts)


@dataclass(frozen=True)
class MemdbConfig:
    """The plugin's settings for one pytest run."""

    file: Path | None
    file_origin: str
    isolation: Isolation
    echo: bool
    base_dir: Path
    """Where relative paths from the ini file and markers start: the ini file's folder."""
    metadata: str | None = None
    metadata_origin: str = ""
    load: tuple[LoadStep, ...] = ()
    pragmas: Pragmas = ()
    keep_failed: Path | None = None
    alembic: Path | None = None
    alembic_origin: str = ""
    alembic_revision: str = "head"
    bind: tuple[str, ...] = ()
    bind_origin: str = ""
    session_class: str | None = None
    """``module:Class`` of the ``AsyncSession`` subclass every session is made with."""
    sync_session_class: str | None = None
    strict: bool = False
    """Fail a test that opens a SQLite database that is not one of its memdb databases."""
    takeover: tuple[TakeoverPattern, ...] = ()
    """SQLite URLs whose connections open the test's database
    (:mod:`pytest_memdb.integrations.takeover`)."""
    takeover_origin: str = ""
    ini_name: str = "the ini file"
    cache: bool = False
    """Keep built templates in pytest's cache folder (:mod:`pytest_memdb.sqlite.cache`)."""
    rebuild: bool = False
    factories: tuple[str, ...] = ()
    """Modules whose factory_boy / polyfactory factories write through each test's session
    (:mod:`pytest_memdb.integrations.factory_binding`)."""
    factories_origin: str = ""
    restore: Restore = "auto"
    """How copy and rollback restore the working database: ``pages`` written (where the
    page-recording VFS is available, else a usage error), ``backup`` of the whole template,
    ``auto`` (the default): pages where available, else backups."""
    postgresql: str | None = None
    """``start`` or a server's URL: the databases are PostgreSQL's
    (:mod:`pytest_memdb.postgresql`); None: in-memory SQLite."""
    postgresql_origin: str = ""

    @classmethod
    def from_pytest(cls, config: pytest.Config) -> MemdbConfig:
        """Read and check every option; a bad value stops the run at start-up."""
        try:
            return cls._read(config)
        except MemdbError as exc:
            raise pytest.UsageError(str(exc)) from None

    @classmethod
    def _read(cls, config: pytest.Config) -> MemdbConfig:
        base_dir = config.inipath.parent if config.inipath else config.rootpath
        ini_name = config.inipath.name if config.inipath else "the ini file"

        def where(name: str) -> str:
            return _where(config, name, ini_name)

        check_ini_keys(_unknown_ini_keys(config), ini_name)
        cwd = config.invocation_params.dir
        cli_file = config.getoption("memdb_file")
        ini_file = str(config.getini("memdb_file") or "").strip()
        file: Path | None
        if cli_file:
            file, origin = _resolve(cli_file, cwd, "--memdb-file"), "--memdb-file"
        elif ini_file:
            origin = where("memdb_file")
            file = _resolve(ini_file, base_dir, origin)
        else:
            file, origin = None, ""
        cli_metadata = config.getoption("memdb_metadata")
        ini_metadata = str(config.getini("memdb_metadata") or "").strip()
        metadata: str | None
        if cli_metadata:
            metadata = check_dotted(cli_metadata, "--memdb-metadata")
            metadata_origin = "--memdb-metadata"
        elif ini_metadata:
            metadata_origin = where("memdb_metadata")
            metadata = check_dotted(ini_metadata, metadata_origin)
        else:
            metadata, metadata_origin = None, ""
        load = parse_load(config.getini("memdb_load"), where("memdb_load"), base_dir)
        cli_isolation = config.getoption("memdb_isolation")
        isolation_origin = "--memdb-isolation" if cli_isolation else "memdb_isolation"
        raw_isolation = cli_isolation or str(config.getini("memdb_isolation") or "").strip()
        isolation = parse_isolation(raw_isolation or DEFAULT_ISOLATION, isolation_origin)
        echo = bool(config.getoption("memdb_echo")) or _ini_bool(config, "memdb_echo", ini_name)
        pragmas = parse_pragmas(config.getini("memdb_pragmas"), where("memdb_pragmas"))
        keep = config.getoption("memdb_keep_failed")
        keep_failed = _resolve(keep, cwd, "--memdb-keep-failed") if keep else None
        raw_alembic = str(config.getini("memdb_alembic") or "").strip()
        alembic_origin = where("memdb_alembic")
        alembic = _resolve(raw_alembic, base_dir, alembic_origin) if raw_alembic else None
        revision = str(config.getini("memdb_alembic_revision") or "").strip() or "head"
        bind_origin = where("memdb_bind")
        bind = parse_bind(config.getini("memdb_bind"), bind_origin)
        session_class = _optional_dotted(config, "memdb_session_class", ini_name)
        sync_session_class = _optional_dotted(config, "memdb_sync_session_class", ini_name)
        factories_origin = where("memdb_factories")
        factories = parse_factories(config.getini("memdb_factories"), factories_origin)
        takeover_origin = where("memdb_takeover")
        takeover = parse_takeover(config.getini("memdb_takeover"), takeover_origin)
        cli_postgresql = config.getoption("memdb_postgresql")
        ini_postgresql = str(config.getini("memdb_postgresql") or "").strip()
        postgresql_origin = "--memdb-postgresql" if cli_postgresql else (where("memdb_postgresql"))
        postgresql = parse_postgresql(cli_postgresql or ini_postgresql, postgresql_origin)
        if postgresql is not None and takeover:
            raise MemdbError(
                f"pytest-memdb: {takeover_origin} works on SQLite only, and {postgresql_origin} "
                "runs the databases on PostgreSQL: name the app's engines or sessionmakers in "
                "memdb_bind instead (module:attribute), "
                "or build them from the memdb_url fixture; or leave the switch off for this run."
            )
        return cls(
            file,
            origin,
            isolation,
            echo,
            base_dir,
            metadata,
            metadata_origin,
            load,
            pragmas,
            keep_failed,
            alembic=alembic,
            alembic_origin=alembic_origin,
            alembic_revision=revision,
            bind=bind,
            bind_origin=bind_origin,
            session_class=session_class,
            sync_session_class=sync_session_class,
            strict=_ini_bool(config, "memdb_strict", ini_name),
            takeover=takeover,
            takeover_origin=takeover_origin,
            ini_name=ini_name,
            cache=bool(config.getoption("memdb_cache"))
            or _ini_bool(config, "memdb_cache", ini_name),
            rebuild=bool(config.getoption("memdb_rebuild")),
            factories=factories,
            factories_origin=factories_origin,
            restore=parse_restore(
                str(config.getini("memdb_restore") or "").strip() or "auto",
                where("memdb_restore"),
            ),
            postgresql=postgresql,
            postgresql_origin=postgresql_origin if postgresql else "",
        )

    def default_target(self) -> Target:
        """What ``memdb`` is built from for a test with no ``memdb`` marker."""
        return self._target(None)

    def target_for(self, node: pytest.Item) -> Target:
        """What ``memdb`` is built from for one test: its ``memdb`` marker over the options."""
        return self._target(node.get_closest_marker("memdb"))

    def _target(self, marker: pytest.Mark | None) -> Target:
        kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
        unknown = sorted(set(kwargs) - set(MARKER_ARGS))
        if marker is not None and (unknown or marker.args):
            raise MemdbError(
                "pytest-memdb: @pytest.mark.memdb takes only keyword arguments "
                f"{', '.join(MARKER_ARGS)}; got "
                f"{', '.join([repr(a) for a in marker.args] + unknown)}."
            )
        file, file_origin = self.file, self.file_origin
        if kwargs.get("file") is not None:
            file_origin = "@pytest.mark.memdb(file=...)"
            file = _resolve(str(kwargs["file"]), self.base_dir, file_origin)
        metadata, metadata_origin = self.metadata, self.metadata_origin
        if kwargs.get("metadata") is not None:
            metadata_origin = "@pytest.mark.memdb(metadata=...)"
            metadata = check_dotted(kwargs["metadata"], metadata_origin)
        load = self.load
        if kwargs.get("load") is not None:
            load = parse_load(kwargs["load"], "@pytest.mark.memdb(load=...)", self.base_dir)
        isolation = self.isolation
        if kwargs.get("isolation") is not None:
            isolation = parse_isolation(kwargs["isolation"], "@pytest.mark.memdb(isolation=...)")
        alembic, alembic_origin = self.alembic, self.alembic_origin
        if kwargs.get("alembic") is not None:
            alembic_origin = "@pytest.mark.memdb(alembic=...)"
            alembic = _resolve(str(kwargs["alembic"]), self.base_dir, alembic_origin)
        bind, bind_origin = self.bind, self.bind_origin
        if kwargs.get("bind") is not None:
            bind_origin = "@pytest.mark.memdb(bind=...)"
            bind = parse_bind(kwargs["bind"], bind_origin)
        # memdb_takeover alone: a suite that makes its own tables starts from an empty one
        if file is None and metadata is None and alembic is None and not load and not self.takeover:
            raise MemdbError(NO_SOURCE())
        return Target(
            file,
            file_origin,
            isolation,
            metadata,
            metadata_origin,
            load,
            alembic=alembic,
            alembic_revision=self.alembic_revision,
            alembic_origin=alembic_origin,
            bind=bind,
            bind_origin=bind_origin,
        )

    def factory_target(self, name: str, options: Mapping[str, Any]) -> Target:
        """What a ``memdb_factory(name, ...)`` fixture is built from: its own arguments only.

        The ini's file, metadata and load describe the ``memdb`` database, so they do not
        leak into a factory's; its isolation defaults to the run's.
        """
        origin = f"memdb_factory({name!r})"
        file = options.get("file")
        metadata = options.get("metadata")
        isolation = options.get("isolation")
        alembic = options.get("alembic")
        if file is None and metadata is None and alembic is None:
            raise MemdbError(
                f"pytest-memdb: {origin} needs file=..., metadata=... or alembic=... (or more)."
            )
        return Target(
            file=_resolve(str(file), self.base_dir, f"{origin}, file=")
            if file is not None
            else None,
            file_origin=f"{origin}, file=",
            isolation=self.isolation
            if isolation is None
            else parse_isolation(isolation, f"{origin}, isolation="),
            metadata=check_dotted(metadata, f"{origin}, metadata=") if metadata else None,
            metadata_origin=f"{origin}, metadata=",
            load=parse_load(options.get("load") or (), f"{origin}, load=", self.base_dir),
            fixture=name,
            alembic=_resolve(str(alembic), self.base_dir, f"{origin}, alembic=")
            if alembic is not None
            else None,
            alembic_revision=self.alembic_revision,
            alembic_origin=f"{origin}, alembic=",
            bind=parse_bind(options.get("bind") or (), f"{origin}, bind="),
            bind_origin=f"{origin}, bind=",
        )


def parse_postgresql(value: str | None, origin: str) -> str | None:
    """``start``, a PostgreSQL URL, or nothing (SQLite); anything else says what is wanted."""
    value = (value or "").strip()
    if not value:
        return None
    if value.lower() == "start":
        return "start"
    scheme = value.partition("://")[0].lower()
    if "://" not in value or not (scheme == "postgresql" or scheme.startswith("postgresql+")):
        raise MemdbError(
            f"pytest-memdb: {origin} is {value!r}: give a PostgreSQL URL "
            "(postgresql+psycopg://user@host:5432/postgres, postgresql+asyncpg://...), or "
            "'start' for a throwaway server the plugin starts itself."
        )
    return value


def parse_isolation(value: object, origin: str) -> Isolation:
    """Check an isolation name, listing the allowed ones when it is wrong."""
    if isinstance(value, str) and value.strip().lower() in ISOLATION_MODES:
        return cast(Isolation, value.strip().lower())
    raise MemdbError(BAD_VALUE(origin=origin, value=value, allowed=", ".join(ISOLATION_MODES)))


def parse_restore(value: str, origin: str) -> Restore:
    """Check a ``memdb_restore`` value; ``pages`` where the page-recording VFS cannot be
    made is an error that says why, rather than a quiet backup."""
    way = value.strip().lower()
    if way not in RESTORE_WAYS:
        raise MemdbError(BAD_VALUE(origin=origin, value=value, allowed=", ".join(RESTORE_WAYS)))
    if way == "pages":
        from pytest_memdb.sqlite import pages

        if pages.page_vfs() is None:
            raise MemdbError(
                f"pytest-memdb: {origin} asks for page restores, but this interpreter's "
                f"SQLite does not allow them ({pages.unavailable_reason}). Use "
                "memdb_restore = auto (page restores where available, else backups) or "
                "backup."
            )
    return way


def check_dotted(value: object, origin: str) -> str:
    """A ``package.module:Name`` path, checked for shape only (importing waits for first use)."""
    if isinstance(value, str) and _DOTTED.match(value.strip()):
        return value.strip()
    raise MemdbError(BAD_DOTTED_PATH(origin=origin, value=value))


def parse_bind(entries: object, origin: str) -> tuple[str, ...]:
    """``package.module:attr`` paths, one per line (ini) or a list (marker, factory)."""
    if isinstance(entries, str):
        entries = entries.splitlines()
    if not isinstance(entries, Iterable):
        raise MemdbError(f"pytest-memdb: {origin} got {entries!r}; expected a list of paths.")
    paths = []
    for raw in entries:
        entry = raw.strip() if isinstance(raw, str) else raw
        if entry == "" or (isinstance(entry, str) and entry.startswith("#")):
            continue
        if not isinstance(entry, str) or not _DOTTED.match(entry):
            raise MemdbError(
                f"pytest-memdb: {origin} got {raw!r}; each entry is a 'package.module:attr' "
                "naming an Engine, AsyncEngine, sessionmaker, async_sessionmaker, "
                "scoped_session or async_scoped_session of your app (e.g. myapp.db:engine)."
            )
        paths.append(entry)
    return tuple(paths)


def parse_factories(entries: object, origin: str) -> tuple[str, ...]:
    """Module paths, one per line, checked for shape; and factory_boy or polyfactory must be
    installed, or the run stops here rather than in every test.

    Whether a library is there is asked with ``find_spec``, which imports nothing: the
    modules themselves are imported at the first test that uses memdb.
    """
    if isinstance(entries, str):
        entries = entries.splitlines()
    if not isinstance(entries, Iterable):
        raise MemdbError(f"pytest-memdb: {origin} got {entries!r}; expected module paths.")
    modules = []
    for raw in entries:
        entry = raw.strip() if isinstance(raw, str) else raw
        if entry == "" or (isinstance(entry, str) and entry.startswith("#")):
            continue
        if not isinstance(entry, str) or not _MODULE.match(entry):
            raise MemdbError(
                f"pytest-memdb: {origin} got {raw!r}; each entry is a module path such as "
                "tests.factories (no colon, no .py), importable from the ini file's folder: "
                "its factory_boy and polyfactory factories write through each test's session."
            )
        modules.append(entry)
    if modules and not any(_installed(name) for name in FACTORY_LIBRARIES):
        raise MemdbError(FACTORIES_NOT_INSTALLED(origin=origin))
    return tuple(modules)


def _installed(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return False


def _ini_bool(config: pytest.Config, name: str, ini_name: str) -> bool:
    """A ``bool`` ini option; a value pytest cannot read as one is a usage error that names
    the option (pytest's own says only "invalid truth value 'maybe'")."""
    assert name in BOOL_INI_OPTIONS, name
    try:
        return bool(config.getini(name))
    except (ValueError, TypeError, pytest.UsageError) as exc:  # pytest 8.4, 9 (TOML), 9
        raise MemdbError(BAD_BOOL(name=name, ini_name=ini_name, error=exc)) from None


def _optional_dotted(config: pytest.Config, name: str, ini_name: str) -> str | None:
    raw = str(config.getini(name) or "").strip()
    return check_dotted(raw, _where(config, name, ini_name)) if raw else None


def _where(config: pytest.Config, name: str, ini_name: str) -> str:
    """Where ini option ``name``'s value comes from, as errors name it: the command line's
    ``-o name=...`` (pytest's override) when it was given there, else the ini file."""
    for item in config.getoption("override_ini", None) or ():
        if str(item).split("=", 1)[0].strip() == name:
            return f"-o {name}"
    return f"{name} in {ini_name}"


def _unknown_ini_keys(config: pytest.Config) -> Iterable[str]:
    """The ini file's keys no plugin registered (pytest's own list; ``inicfg`` is deprecated
    in pytest 9, the private helper exists since pytest 6)."""
    unknown = getattr(config, "_get_unknown_ini_keys", None)
    if callable(unknown):
        return sorted(unknown())
    return sorted(getattr(config, "inicfg", {}))


def check_ini_keys(inicfg: Iterable[str], ini_name: str) -> None:
    """An unknown ``memdb_*`` key is a typo that would silently do nothing: stop the run."""
    import difflib

    for key in inicfg:
        if key.startswith("memdb_") and key not in INI_OPTIONS:
            close = difflib.get_close_matches(key, INI_OPTIONS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise MemdbError(
                UNKNOWN_OPTION(
                    key=key, ini_name=ini_name, hint=hint, options=", ".join(INI_OPTIONS)
                )
            )


def parse_load(entries: object, origin: str, base_dir: Path) -> tuple[LoadStep, ...]:
    """Seeding steps, in order: ``*.sql`` scripts (relative to ``base_dir``) or callables."""
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, Iterable):
        raise MemdbError(f"pytest-memdb: {origin} got {entries!r}; expected a list of entries.")
    steps = []
    for raw in entries:
        entry = str(raw).strip() if isinstance(raw, (str, Path)) else raw
        if not isinstance(entry, str):
            raise MemdbError(
                f"pytest-memdb: {origin} got {raw!r}; each entry is a path to a .sql file or "
                "a 'package.module:callable'."
            )
        if not entry:
            continue
        if entry.lower().endswith(".sql"):
            steps.append(LoadStep(entry, origin, script=_resolve(entry, base_dir, origin)))
        elif _DOTTED.match(entry):
            steps.append(LoadStep(entry, origin, callable=entry))
        else:
            raise MemdbError(
                f"pytest-memdb: {origin} got {entry!r}; each entry is a path to a .sql file "
                "(ending in .sql) or a 'package.module:callable' taking a sync SQLAlchemy "
                "Connection."
            )
    return tuple(steps)


def _resolve(raw: str, base: Path, origin: str) -> Path:
    if "\x00" in raw:
        raise MemdbError(f"pytest-memdb: {origin} got {raw!r}; a path cannot hold a NUL character.")
    try:
        path = Path(raw).expanduser()
    except RuntimeError:  # ``~name`` for a user this system does not know
        raise MemdbError(
            f"pytest-memdb: {origin} got {raw!r}; {raw.split('/', 1)[0]!r} is not the home "
            "folder of any user on this system."
        ) from None
    return path if path.is_absolute() else base / path


@functools.lru_cache(maxsize=256)
def _identity(path: Path) -> Path:
    """The path two spellings of one file share (a symlink loop keeps its own spelling).

    Asked for every test (a template's key); resolving costs about 40 us, so it is cached
    for the run.
    """
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return Path(str(path)).absolute()
