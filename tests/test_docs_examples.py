"""Every example of the docs runs, and every page shows examples only from files that do.

The docs site (``mkdocs.yml``, ``docs/``) shows code only by including files with
pymdownx.snippets (``--8<-- "docs/examples/<name>/..."``); those files are complete
project folders under ``docs/examples/``, plus ``conftest_example/`` (the example project
of the README's "Try it"). This module checks, for each folder:

- it runs: copied into a temporary folder, ``python -P -m pytest -p no:cacheprovider``
  there (the current interpreter; ``-P`` keeps the folder off ``sys.path``, as a user
  typing ``pytest`` has it, so a missing ``pythonpath = .`` fails here too; pytest's cache
  plugin stays on for a folder whose ``pytest.ini`` turns ``memdb_cache`` on, the cache
  being that example's point), with the outer run's ``PYTEST_ADDOPTS`` and ``PYTHONPATH``
  cleared. The final counts are those of its ``expected.txt`` (``3 passed``), or, without
  one, only passes, at least one, and no warning. Its own files are byte-identical
  afterwards and no file appears (an app's database created by an engine that was not
  swapped), but those its ``.gitignore`` lists;
- its ``requirements.txt`` lists exactly what its code imports: every import outside the
  standard library and the folder's own modules is provided by a listed distribution (its
  own modules, or those of the distributions it requires, so ``pytest-memdb`` provides
  ``pytest``, ``sqlalchemy``...), and every listed distribution is imported, or is a pytest
  plugin, or a driver or client used without an import (``USED_WITHOUT_IMPORT``);
- a ``make_data.py`` beside a shipped data file makes that file again, row for row; one
  called at run time (from ``conftest.py``, the file shipped by no one) makes a file that
  the folder's ``.gitignore`` lists.

And over the pages (``docs/**/*.md``):

- every fenced block is a ``console``, ``bash`` or ``text`` block (commands, output), or
  only ``--8<--`` includes of files that exist;
- every file of an example folder is included by a page, or (an empty file, a binary data
  file) named on a page that includes another file of the folder; ``requirements.txt``
  matches a ``pip install`` line on each page that includes its folder;
- ``mkdocs build --strict`` passes (the ``docs`` extra installs MkDocs; without it this
  fails, it does not skip).

The timeouts are hang guards, not timing assertions.
"""

from __future__ import annotations

import ast
import configparser
import fnmatch
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
CONFTEST_EXAMPLE = ROOT / "conftest_example"

SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache"}
"""Caches: neither example files nor files a run may not create."""
HARNESS_FILES = {"expected.txt", ".gitignore"}
"""Files of an example folder that the harness reads and the user does not need."""
ALLOWED_LANGS = {"console", "bash", "text"}
"""Fenced blocks that need not be included from a file: commands and their output."""
USED_WITHOUT_IMPORT = {
    "aiosqlite": "the driver of sqlite+aiosqlite:// URLs",
    "httpx": "Starlette's TestClient (fastapi.testclient) runs on it",
    "httpx2": "Starlette's TestClient (fastapi.testclient) runs on it",
}
"""Distributions a folder may list without importing them, and why."""
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)(?P<rest>.*)$")
INCLUDE = re.compile(r'^\s*-{1,2}8<-{1,2}\s+"(?P<path>[^"]+)"\s*$')


def example_folders() -> list[Path]:
    found = EXAMPLES.iterdir() if EXAMPLES.is_dir() else iter(())
    folders = sorted(p for p in found if p.is_dir() and not p.name.startswith((".", "_")))
    return [*folders, CONFTEST_EXAMPLE]


def folder_id(folder: Path) -> str:
    return folder.name if folder.parent == EXAMPLES else str(folder.relative_to(ROOT))


FOLDERS = example_folders()


def example_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not SKIPPED_PARTS & set(path.relative_to(folder).parts)
    )


# --- running an example ------------------------------------------------------------------


def uses_the_cache(folder: Path) -> bool:
    """Whether the folder's ``pytest.ini`` turns ``memdb_cache`` on: that option needs pytest's
    cache plugin (without it the run warns and builds as without the option)."""
    ini = folder / "pytest.ini"
    if not ini.is_file():
        return False
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ini, encoding="utf-8")
    value = parser.get("pytest", "memdb_cache", fallback="false")
    return value.strip().lower() in {"true", "1", "yes", "on"}


def run_pytest(folder: Path) -> tuple[int, str]:
    """``pytest -p no:cacheprovider`` in ``folder``, as typed in a shell there (without
    ``-p no:cacheprovider`` where the example is about the cache; the folder is a copy, and
    ``.pytest_cache`` is among the files a run may make)."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTEST_ADDOPTS"}}
    # As tests/conftest.py does for pytester: pytest-randomly and pytest-rerunfailures are
    # installed for the project's own tests, not by the examples' users.
    env["PYTEST_ADDOPTS"] = "-p no:randomly -p no:rerunfailures"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(
        [sys.executable, "-P", "-m", "pytest"]
        + ([] if uses_the_cache(folder) else ["-p", "no:cacheprovider"]),
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def outcomes(output: str) -> dict[str, int]:
    """The counts of pytest's final summary line (``3 passed, 1 warning in 0.5s``)."""
    for line in reversed(output.splitlines()):
        found = re.findall(r"(\d+) (\w+)", line)
        if line.startswith("=") and " in " in line and found:
            return {_plural(word): int(count) for count, word in found}
    return {}


def _plural(word: str) -> str:
    return {"error": "errors", "warning": "warnings"}.get(word, word)


def expected_outcomes(folder: Path) -> dict[str, int] | None:
    expected = folder / "expected.txt"
    if not expected.is_file():
        return None
    text = expected.read_text(encoding="utf-8").strip()
    counts = {_plural(word): int(count) for count, word in re.findall(r"(\d+) (\w+)", text)}
    assert counts, f"{expected}: no counts in {text!r} (write pytest's, e.g. `3 passed`)"
    return counts


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in example_files(folder)}


def ignored(folder: Path) -> list[str]:
    """The patterns of the folder's ``.gitignore``: files a run may make."""
    path = folder / ".gitignore"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip().strip("/") for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(relative: str, patterns: list[str]) -> bool:
    parts = Path(relative).parts
    return any(
        fnmatch.fnmatch(relative, pattern)
        or any(fnmatch.fnmatch(part, pattern) for part in parts)
        or relative.startswith(pattern + "/")
        for pattern in patterns
    )


ON_POSTGRESQL = {"postgresql", "postgresql-dump"}
"""Examples that start a PostgreSQL server (1.5-3 s) and pass 5 s on 2 cores: slow tests."""


@pytest.mark.parametrize(
    "folder",
    [pytest.param(f, marks=pytest.mark.slow) if f.name in ON_POSTGRESQL else f for f in FOLDERS],
    ids=folder_id,
)
def test_example_passes(folder: Path, tmp_path: Path) -> None:
    work = tmp_path / folder.name
    shutil.copytree(folder, work, ignore=shutil.ignore_patterns(*SKIPPED_PARTS))
    before = snapshot(work)
    start = time.monotonic()
    code, output = run_pytest(work)
    took = time.monotonic() - start
    where = f"{folder_id(folder)} (run in {work}, {took:.1f} s)"
    counts = outcomes(output)
    expected = expected_outcomes(folder)
    if expected is None:
        assert code == 0, f"{where} failed:\n{output}"
        assert counts.get("passed", 0) >= 1, f"{where} ran no test:\n{output}"
        assert set(counts) == {"passed"}, (
            f"{where}: {counts}; an example passes without warnings, or says in "
            f"expected.txt what it shows:\n{output}"
        )
    else:
        assert counts == expected, f"{where}: {counts}, expected.txt says {expected}:\n{output}"
    after = snapshot(work)
    changed = sorted(path for path in before if after.get(path) != before[path])
    assert not changed, f"{where} changed or removed its own files: {changed}\n{output}"
    patterns = ignored(work)
    new = sorted(path for path in set(after) - set(before) if not is_ignored(path, patterns))
    assert not new, (
        f"{where} made files: {new} (an engine the example did not swap? If the example "
        f"makes them on purpose, list them in its .gitignore)\n{output}"
    )


# --- what an example needs --------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    line: str
    requirement: Requirement

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)


def requirements(folder: Path) -> list[Listed]:
    path = folder / "requirements.txt"
    assert path.is_file(), f"{folder_id(folder)} has no requirements.txt"
    listed = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            listed.append(Listed(line, Requirement(line)))
    return listed


@cache
def _distributions_of_module() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            found.setdefault(module, set()).add(canonicalize_name(dist))
    return found


def modules_of(dist: str) -> set[str]:
    """The top-level modules a distribution installs (an editable install lists none: its
    name, as a module, then)."""
    modules = {m for m, dists in _distributions_of_module().items() if dist in dists}
    return modules or {dist.replace("-", "_")}


def provided(listed: Listed) -> set[str]:
    """What installing one line of requirements.txt makes importable: the distribution's
    modules and those of the distributions it requires (with the extras asked for)."""
    modules = modules_of(listed.name)
    try:
        requires = importlib.metadata.requires(listed.requirement.name) or []
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{listed.line!r} is not installed here: the example cannot run")
    extras = listed.requirement.extras or {""}
    for line in requires:
        needed = Requirement(line)
        if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in extras):
            modules |= modules_of(canonicalize_name(needed.name))
    return modules


def imports(folder: Path) -> dict[str, list[str]]:
    """The top-level modules the folder's Python files import, with where."""
    found: dict[str, list[str]] = {}
    for path in example_files(folder):
        if path.suffix != ".py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                where = f"{path.relative_to(folder)}:{node.lineno}"
                found.setdefault(name.split(".")[0], []).append(where)
    return found


def local_modules(folder: Path) -> set[str]:
    """Modules of the folder itself: any file's stem, any folder's name."""
    folders = {p.name for p in folder.rglob("*") if p.is_dir()}
    return {p.stem for p in folder.rglob("*.py")} | folders


def is_plugin(dist: str) -> bool:
    try:
        entry_points = importlib.metadata.distribution(dist).entry_points
    except importlib.metadata.PackageNotFoundError:
        return False
    return any(ep.group == "pytest11" for ep in entry_points)


@pytest.mark.parametrize("folder", FOLDERS, ids=folder_id)
def test_requirements_list_what_the_example_imports(folder: Path) -> None:
    listed = requirements(folder)
    assert listed, f"{folder_id(folder)}/requirements.txt is empty"
    assert listed[0].name == "pytest-memdb", (
        f"{folder_id(folder)}/requirements.txt: pytest-memdb comes first, not {listed[0].line!r}"
    )
    found = imports(folder)
    third_party = {
        name: where
        for name, where in found.items()
        if name not in sys.stdlib_module_names and name not in local_modules(folder)
    }
    covered: set[str] = set()
    for line in listed:
        covered |= provided(line)
    missing = {name: where for name, where in third_party.items() if name not in covered}
    assert not missing, (
        f"{folder_id(folder)} imports what its requirements.txt does not install: {missing}"
    )
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in example_files(folder))
    unused = [
        line.line
        for line in listed
        if not modules_of(line.name) & set(found)
        and not is_plugin(line.name)
        and not (line.name in USED_WITHOUT_IMPORT and _used_without_import(line.name, text))
    ]
    assert not unused, (
        f"{folder_id(folder)}/requirements.txt lists what its code never uses: {unused}"
    )


def _used_without_import(dist: str, text: str) -> bool:
    if dist == "aiosqlite":
        return "aiosqlite" in text
    return "testclient" in text  # httpx, httpx2: Starlette's TestClient


@pytest.mark.parametrize("folder", FOLDERS, ids=folder_id)
def test_example_is_a_whole_project(folder: Path) -> None:
    """A whole ini file (never a fragment) and tests, as DOCS.md asks."""
    ini = folder / "pytest.ini"
    toml = folder / "pyproject.toml"
    assert ini.is_file() or toml.is_file(), f"{folder_id(folder)}: no pytest.ini or pyproject.toml"
    if ini.is_file():
        assert ini.read_text(encoding="utf-8").lstrip().startswith(("[pytest]", "#")), ini
    tests = [p for p in example_files(folder) if re.fullmatch(r"test_.*\.py", p.name)]
    assert tests, f"{folder_id(folder)} has no test_*.py"


MAKE_DATA = [f for f in FOLDERS if (f / "make_data.py").is_file()]


def dump(path: Path) -> list[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        lines = list(conn.iterdump())
    conn.close()
    return lines


@pytest.mark.parametrize("folder", MAKE_DATA, ids=folder_id)
def test_make_data_makes_the_shipped_file(folder: Path, tmp_path: Path) -> None:
    """The page shows ``python make_data.py``; the file it makes is the one shipped, or, for
    an example that makes it at run time (DOCS.md allows a ``make_data.py`` called from
    ``conftest.py``), one its ``.gitignore`` lists."""
    work = tmp_path / folder.name
    shutil.copytree(folder, work, ignore=shutil.ignore_patterns(*SKIPPED_PARTS))
    shipped = {p.relative_to(work): dump(p) for p in work.rglob("*.sqlite")}
    for path in shipped:
        (work / path).unlink()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "make_data.py"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    made = {p.relative_to(work): dump(p) for p in work.rglob("*.sqlite")}
    assert made, f"{folder_id(folder)}: make_data.py made no .sqlite file"
    if shipped:
        assert made == shipped, f"{folder_id(folder)}: make_data.py does not make the shipped file"
        return
    patterns = ignored(work)
    unlisted = sorted(str(p) for p in made if not is_ignored(str(p), patterns))
    assert not unlisted, (
        f"{folder_id(folder)} ships no .sqlite file and its make_data.py makes {unlisted}, which "
        "its .gitignore does not list: ship the file, or list it there (conftest.py makes it)"
    )


# --- the pages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PageBlock:
    page: Path
    line: int
    lang: str
    body: list[str]

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} ({self.lang or 'no language'})"


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if EXAMPLES not in p.parents)


def page_blocks(page: Path) -> Iterator[PageBlock]:
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        assert i < len(lines), f"{page.relative_to(ROOT)}:{start + 1}: a fence never closed"
        yield PageBlock(page, start + 1, match["lang"], body)
        i += 1


def included_path(spec: str) -> Path:
    """The file a ``--8<--`` spec names (``path``, ``path:section``, ``path:3:9``)."""
    path = ROOT / spec
    while not path.exists() and ":" in spec:
        spec = spec.rsplit(":", 1)[0]
        path = ROOT / spec
    return path


def includes(block: PageBlock) -> list[Path] | None:
    """The files the block includes, or None when it holds anything else."""
    lines = [line for line in block.body if line.strip()]
    found = [INCLUDE.match(line) for line in lines]
    if not lines or not all(found):
        return None
    return [included_path(m["path"]) for m in found if m]


def test_every_code_block_is_an_include_or_a_command() -> None:
    problems = []
    for page in pages():
        for block in page_blocks(page):
            if block.lang in ALLOWED_LANGS:
                continue
            files = includes(block)
            if files is None:
                problems.append(
                    f"{block.where()}: a code block must include a file of docs/examples "
                    '(--8<-- "docs/examples/<name>/<path>") or be a console, bash or text block'
                )
                continue
            problems.extend(
                f"{block.where()}: includes {f.relative_to(ROOT)}, which does not exist"
                for f in files
                if not f.is_file()
            )
    assert not problems, "\n".join(problems)


def page_includes() -> dict[Path, set[Path]]:
    shown: dict[Path, set[Path]] = {}
    for page in pages():
        for block in page_blocks(page):
            files = includes(block) if block.lang not in ALLOWED_LANGS else None
            for path in files or []:
                shown.setdefault(page, set()).add(path.resolve())
    return shown


def folder_of(path: Path) -> Path | None:
    for folder in FOLDERS:
        if folder.resolve() in path.parents:
            return folder.resolve()
    return None


def test_every_example_file_is_shown_on_a_page() -> None:
    shown = page_includes()
    everything = set().union(*shown.values()) if shown else set()
    problems = []
    for folder in FOLDERS:
        if folder.parent != EXAMPLES:
            continue  # conftest_example: a folder on GitHub, linked from the README
        files = example_files(folder)
        pages_of_folder = [
            page for page, paths in shown.items() if folder.resolve() in map(folder_of, paths)
        ]
        if not pages_of_folder:
            problems.append(f"{folder_id(folder)}: no page includes any of its files")
            continue
        texts = "\n".join(p.read_text(encoding="utf-8") for p in pages_of_folder)
        for path in files:
            relative = str(path.relative_to(folder))
            if path.resolve() in everything or path.name in HARNESS_FILES:
                continue
            if relative == "requirements.txt":
                continue  # test_pip_install_lines_match_requirements
            data = path.read_bytes()
            if (not data.strip() or _binary(data)) and f"`{relative}`" in texts:
                continue  # an empty file or a data file, named where the folder is shown
            problems.append(
                f"{folder_id(folder)}/{relative}: no page includes it"
                + (" (or names it in backticks)" if not data.strip() or _binary(data) else "")
            )
    assert not problems, "\n".join(problems)


def _binary(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\0" in data


def pip_lines(page: Path) -> list[set[str]]:
    """The packages of each ``pip install`` command in the page's console and bash blocks."""
    found = []
    for block in page_blocks(page):
        if block.lang not in {"console", "bash"}:
            continue
        for line in block.body:
            command = line.strip().removeprefix("$").strip()
            if "pip install" not in command:
                continue
            words = shlex.split(command.split("pip install", 1)[1].split("&&")[0])
            found.append({canonical(w) for w in words if not w.startswith("-") and "/" not in w})
    return found


def canonical(spec: str) -> str:
    requirement = Requirement(spec)
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return canonicalize_name(requirement.name) + extras


def test_pip_install_lines_match_requirements() -> None:
    """Each page that shows an example says what to install for it, as its
    requirements.txt does."""
    problems = []
    for page, paths in page_includes().items():
        folders = {folder_of(p) for p in paths} - {None}
        lines = pip_lines(page)
        for folder in sorted(f for f in folders if f is not None):
            wanted = {canonical(listed.line) for listed in requirements(folder)}
            if not any(wanted <= line for line in lines):
                problems.append(
                    f"{page.relative_to(ROOT)} shows {folder_id(folder)}, but no `pip install` "
                    f"line on it installs its requirements.txt: {' '.join(sorted(wanted))}"
                )
    assert not problems, "\n".join(problems)


# --- the site ------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    missing = [m for m in ("mkdocs", "material") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: install pytest-memdb[docs] "
            "(pip install -e '.[test,docs]') to build the docs site, which this test checks"
        )
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"
