"""One supported range, written the same everywhere it is written.

``pyproject.toml`` states the lower bounds; CI's floor pass installs ``.ci/floor.txt``
(noxfile's ``oldest`` set too), so a pin that drifted from its bound would test another
floor than the one users are promised. The Python floor is also in the classifiers and the
ruff and mypy targets; the version is written once, in ``pytest_memdb/__init__.py``, and has
its CHANGELOG entry.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

import pytest_memdb

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
FLOOR_PYTHON = "3.11"
NEWEST_PYTHON = "3.13"

FLOORED = {
    "pytest",
    "pytest-asyncio",
    "sqlalchemy",
    "aiosqlite",
    "alembic",
    "factory-boy",
    "polyfactory",
    "sqlmodel",
    "filelock",
    "psycopg",
    "asyncpg",
}
"""The dependencies of the package and of its extras (sqlmodel: the plugin's sessions know
SQLModel's), whose lower bounds the floor set installs."""


def _lower_bound(specifier: SpecifierSet) -> Version:
    bounds = [Version(spec.version) for spec in specifier if spec.operator == ">="]
    assert len(bounds) == 1, f"{specifier}: one '>=' bound expected"
    return bounds[0]


def _bounds() -> dict[str, Version]:
    project = PYPROJECT["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    bounds: dict[str, Version] = {}
    for line in lines:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name in FLOORED:
            bound = _lower_bound(requirement.specifier)
            assert bounds.setdefault(name, bound) == bound, f"two lower bounds for {name}"
    return bounds


def _floor_pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / ".ci" / "floor.txt").read_text(encoding="utf-8").splitlines():
        line = line.partition("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f".ci/floor.txt: {line!r} is not name==version"
            pins[canonicalize_name(Requirement(name).name)] = Version(version)  # extras off
    return pins


def test_the_floor_pins_are_the_lower_bounds_of_pyproject() -> None:
    bounds = _bounds()
    assert set(bounds) == FLOORED, f"no lower bound in pyproject.toml for {FLOORED - set(bounds)}"
    assert _floor_pins() == bounds


def test_the_python_floor_is_the_same_everywhere() -> None:
    project = PYPROJECT["project"]
    assert project["requires-python"] == f">={FLOOR_PYTHON}"
    listed = {
        line.rpartition(" :: ")[2]
        for line in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", line)
    }
    assert listed == {FLOOR_PYTHON, "3.12", NEWEST_PYTHON}
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + FLOOR_PYTHON.replace(".", "")
    assert PYPROJECT["tool"]["mypy"]["python_version"] == FLOOR_PYTHON
    noxfile = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    assert f'"oldest": ("{FLOOR_PYTHON}", OLDEST)' in noxfile
    assert f'"newest": ("{NEWEST_PYTHON}", NEWEST)' in noxfile


def test_the_version_is_written_once_and_has_a_changelog_entry() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project
    assert project["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "pytest_memdb/__init__.py"
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    version = re.escape(pytest_memdb.__version__)
    # Released: "## 0.4.0 (2026-12-05)"; while it is being made: "## Unreleased (0.5.0)".
    heading = rf"^## (?:{version} \(\d{{4}}-\d{{2}}-\d{{2}}\)|Unreleased \({version}\))$"
    assert re.search(heading, changelog, re.MULTILINE), (
        f"CHANGELOG.md has no entry for {pytest_memdb.__version__} (__version__)"
    )
