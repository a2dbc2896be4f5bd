"""Settings, read once from pytest's options: the command line wins over the ini file.

Imports nothing heavy: this module is loaded by every pytest run in an
environment where the plugin is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import pytest

from pytest_memdb.errors import MemdbError

Isolation = Literal["copy", "rollback", "session"]
ISOLATION_MODES: tuple[Isolation, ...] = ("copy", "rollback", "session")
DEFAULT_ISOLATION: Isolation = "copy"
MARKER_ARGS = ("file", "isolation")

HOW_TO_SET_FILE = (
    "Set it in your ini file:\n"
    "    [pytest]\n"
    "    memdb_file = tests/data/app.sqlite\n"
    "or on the command line: pytest --memdb-file tests/data/app.sqlite\n"
    "or for one test: @pytest.mark.memdb(file='tests/data/app.sqlite')"
)


@dataclass(frozen=True)
class Target:
    """Which file a test's database comes from and how it is isolated, and why."""

    file: Path
    file_origin: str
    isolation: Isolation


@dataclass(frozen=True)
class MemdbConfig:
    """The plugin's settings for one pytest run."""

    file: Path | None
    file_origin: str
    isolation: Isolation
    echo: bool
    base_dir: Path
    """Where relative paths from the ini file and markers start: the ini file's folder."""

    @classmethod
    def from_pytest(cls, config: pytest.Config) -> MemdbConfig:
        """Read and check every option; a bad isolation name stops the run at start-up."""
        base_dir = config.inipath.parent if config.inipath else config.rootpath
        cli_file = config.getoption("memdb_file")
        ini_file = str(config.getini("memdb_file") or "").strip()
        file: Path | None
        cli_isolation = config.getoption("memdb_isolation")
        isolation_origin = "--memdb-isolation" if cli_isolation else "memdb_isolation"
        raw_isolation = cli_isolation or str(config.getini("memdb_isolation") or "").strip()
        try:
            if cli_file:
                origin = "--memdb-file"
                file = _resolve(cli_file, config.invocation_params.dir, origin)
            elif ini_file:
                origin = "memdb_file in " + (
                    config.inipath.name if config.inipath else "the ini file"
                )
                file = _resolve(ini_file, base_dir, origin)
            else:
                file, origin = None, ""
            isolation = parse_isolation(raw_isolation or DEFAULT_ISOLATION, isolation_origin)
        except MemdbError as exc:
            raise pytest.UsageError(str(exc)) from None
        echo = bool(config.getoption("memdb_echo")) or bool(config.getini("memdb_echo"))
        return cls(file, origin, isolation, echo, base_dir)

    def target_for(self, node: pytest.Item) -> Target:
        """The file and isolation for one test: its ``memdb`` marker over the options."""
        marker = node.get_closest_marker("memdb")
        kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
        unknown = sorted(set(kwargs) - set(MARKER_ARGS))
        if marker is not None and (unknown or marker.args):
            raise MemdbError(
                "pytest-memdb: @pytest.mark.memdb takes only keyword arguments "
                f"{', '.join(MARKER_ARGS)}; got "
                f"{', '.join([repr(a) for a in marker.args] + unknown)}."
            )
        file, origin = self.file, self.file_origin
        if kwargs.get("file") is not None:
            origin = "@pytest.mark.memdb(file=...)"
            file = _resolve(str(kwargs["file"]), self.base_dir, origin)
        if file is None:
            raise MemdbError(
                "pytest-memdb: no SQLite fixture file is configured (ini option memdb_file, "
                "command line --memdb-file).\n" + HOW_TO_SET_FILE
            )
        isolation = self.isolation
        if kwargs.get("isolation") is not None:
            isolation = parse_isolation(kwargs["isolation"], "@pytest.mark.memdb(isolation=...)")
        return Target(file, origin, isolation)


def parse_isolation(value: object, origin: str) -> Isolation:
    """Check an isolation name, listing the allowed ones when it is wrong."""
    if isinstance(value, str) and value.strip().lower() in ISOLATION_MODES:
        return cast(Isolation, value.strip().lower())
    raise MemdbError(
        f"pytest-memdb: {origin} got {value!r}; allowed values: {', '.join(ISOLATION_MODES)}."
    )


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
