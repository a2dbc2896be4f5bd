"""Whether this pytest run was started by a test of another run that reads the same ini file.

Standard library only. Some suites run their docs' tests (or a sample project's) in a
pytest subprocess from the same folder: that run reads the same ini file, so
``memdb_strict`` (and every other option) applies to it as well, and the databases it opens
on purpose are refused there. Each run of the plugin (not an xdist worker: it is the same
run) puts its ini file's path in :data:`OUTER_INI` for the processes its tests start; a run
that finds its own ini file there knows it is nested, says so in its report header, and
``memdb_strict``'s message says how to turn it off for that run (``-o memdb_strict=false``,
or ``PYTEST_ADDOPTS="-o memdb_strict=false"`` when the command is not yours to change).
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from pathlib import Path

OUTER_INI = "PYTEST_MEMDB_OUTER_INI"


def nested_in(inipath: Path | None, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """The ini file of the run this one was started from, when it is this run's own."""
    outer = environ.get(OUTER_INI)
    if inipath is None or not outer:
        return None
    return outer if os.path.normcase(outer) == os.path.normcase(str(inipath)) else None


def announce(
    inipath: Path | None, environ: MutableMapping[str, str] = os.environ
) -> Callable[[], None]:
    """Tell the processes this run's tests start which ini file it reads; returns what puts
    the environment back (at the end of the run: pytester runs in-process share it)."""
    if inipath is None:
        return lambda: None
    previous = environ.get(OUTER_INI)
    environ[OUTER_INI] = str(inipath)

    def restore() -> None:
        if previous is None:
            environ.pop(OUTER_INI, None)
        else:
            environ[OUTER_INI] = previous

    return restore
