"""The test suite against the oldest and newest supported versions of what the plugin needs.

    pip install nox
    nox                      # every set below
    nox -s "tests(oldest)"   # one set (nox -l lists them)

nox looks for ``python3.10`` ... ``python3.13`` on ``PATH``; with pyenv, make them all
visible first (``PYENV_VERSION=3.10.13:3.11.7:3.12.1:3.13.0 nox``).

Each set installs the project with its ``test`` extra into a fresh virtual environment,
pins the four runtime dependencies, prints what it got, and runs the whole suite as CI
does. ``newest`` is also what ``.ci/run`` installs on every change. The lower bounds here
are the ones in ``pyproject.toml``; change both together.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False

OLDEST = {
    "pytest": "pytest==8.4.0",
    "pytest-asyncio": "pytest-asyncio==1.4.0",
    "sqlalchemy": "sqlalchemy[asyncio]==2.0.30",
    "aiosqlite": "aiosqlite==0.22.0",
}
NEWEST = {
    "pytest": "pytest",
    "pytest-asyncio": "pytest-asyncio",
    "sqlalchemy": "sqlalchemy[asyncio]",
    "aiosqlite": "aiosqlite",
}

SETS = {
    # Every dependency at its lower bound, on the oldest Python.
    "oldest": ("3.10", OLDEST),
    # pytest 9 with the rest at its lower bound (pytest-asyncio 1.4 accepts pytest 8.4 to 9).
    "pytest9-oldest-rest": ("3.10", {**OLDEST, "pytest": "pytest>=9"}),
    # The newest pytest 8 with everything else newest.
    "pytest8": ("3.12", {**NEWEST, "pytest": "pytest<9"}),
    # The newest of everything, on the newest Python here (CI runs this set on 3.11).
    "newest": ("3.13", NEWEST),
}


@nox.session
@nox.parametrize(("python", "pins"), list(SETS.values()), ids=list(SETS))
def tests(session: nox.Session, pins: dict[str, str]) -> None:
    session.install("-e", ".[test]", *pins.values())
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    session.run("python", "-m", "pytest", "conftest_example", "-p", "no:cacheprovider")
    session.run(
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-W",
        "error::ResourceWarning",
        *session.posargs,
    )
