"""The test suite against the oldest and newest supported versions of what the plugin needs.

    pip install nox
    nox                      # every set below
    nox -s "tests(oldest)"   # one set (nox -l lists them)

nox looks for ``python3.11`` ... ``python3.13`` on ``PATH``; with pyenv, make them all
visible first (``PYENV_VERSION=3.11.7:3.12.1:3.13.0 nox``).

Each set installs the project with its ``test`` extra into a fresh virtual environment,
pins the runtime dependencies and the extras' (``.ci/floor.txt`` holds the lower bounds of
``pyproject.toml``, which ``tests/test_versions.py`` checks), prints what it got, and runs
the example suite and the whole suite, slow tests included, as CI does. ``.ci/run`` runs
``newest`` and ``oldest`` on every change.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False


def _pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a pins file, by name (comments and blank lines skipped)."""
    lines = (line.partition("#")[0].strip() for line in path.read_text().splitlines())
    return {line.partition("==")[0].lower(): line for line in lines if line}


OLDEST = _pins(Path(__file__).parent / ".ci" / "floor.txt")
NEWEST: dict[str, str] = {}  # whatever pip picks for `-e .[test]`: the newest releases

SETS = {
    # Every dependency at its lower bound, on the oldest Python: CI's second pass.
    "oldest": ("3.11", OLDEST),
    # pytest 9 with the rest at its lower bound (pytest-asyncio 1.4 accepts pytest 8.4 to 9).
    "pytest9-oldest-rest": ("3.11", {**OLDEST, "pytest": "pytest>=9"}),
    # The newest pytest 8 with everything else newest.
    "pytest8": ("3.12", {**NEWEST, "pytest": "pytest<9"}),
    # The newest of everything, on the newest Python: CI's first pass.
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
        "-n",
        "2",
        "--run-slow",
        "-W",
        "error::ResourceWarning",
        *session.posargs,
    )
