"""Every Python, ini, TOML and SQL snippet of README.md runs, as a file of a real project.

The snippets are read from README.md itself, so none can rot. Each fenced block whose
language is ``python``, ``ini``, ``toml`` or ``sql`` must be preceded, on the line right
before its opening fence, by one HTML comment (invisible on GitHub and PyPI) saying where
it goes::

    <!-- project: quickstart; file: tests/test_books.py -->
    <!-- project: fastapi; extends: quickstart; file: myapp/main.py -->
    <!-- project: pragmas; extends: quickstart; merge: pytest.ini -->
    <!-- project: before after; file: tests/test_shelf.py -->
    <!-- project: factories; extends: quickstart; fixture: tests/data/analytics.sqlite -->

``project``   one or more project names (space or comma separated): the block is a file of
              each of them.
``file``      the block is that file, as pasted.
``merge``     the block is ini options (``[pytest]`` ...) merged into that ini file of the
              project (its keys added or replaced): for snippets that show only the options
              a section is about. ``file`` or ``merge``, exactly one.
``extends``   the project starts with every file of another project; its own blocks add
              files, replace them (``file``) or add options to them (``merge``).
``fixture``   a data file the harness generates into the project (the snippets' stand-in
              for the SQLite file an app ships); the kind comes from its name, see
              ``FIXTURES``.

A block without an annotation fails ``test_every_snippet_is_annotated``, so a new snippet
cannot be left out; a fence without a language fails too (it could hide code). A path-like
name in a block's first comment line (``# tests/conftest.py``), which readers see, must be
the annotated one. Each project is then written into a pytester folder and run in a
subprocess: it must pass, with at least one test and no failure or error, and leave the
folder as it was (no app database file created, the fixture files byte-identical).

Not run: ``bash`` and ``console`` blocks (commands and their output), and ``text`` blocks
(error messages, listings).
"""

from __future__ import annotations

import ast
import configparser
import io
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_LANGS = {"python", "ini", "toml", "sql"}
KEYS = {"project", "file", "merge", "extends", "fixture"}
FENCE = re.compile(r"^(`{3,})(.*)$")
COMMENT = re.compile(r"^<!--(.*)-->\s*$")
PATH_LIKE = re.compile(r"[\w./-]+\.(?:py|ini|toml|sql|cfg)\b")

# Projects that cannot pass yet because the feature they show is still being built.
# Each entry must fail (strict xfail): remove it once the feature lands.
XFAIL: dict[str, str] = {}


@dataclass
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    annotation: str | None

    def where(self) -> str:
        return f"README.md:{self.line} ({self.lang} block)"


@dataclass
class Project:
    name: str
    extends: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    merges: list[tuple[str, str, Block]] = field(default_factory=list)
    fixtures: list[str] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)


def read_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, with the HTML comment right before each."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, lang = match.group(1), match.group(2).strip()
        before = lines[i - 1].strip() if i else ""
        comment = COMMENT.match(before)
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md:{start + 1}: a fence that is never closed")
        blocks.append(
            Block(lang, "\n".join(body) + "\n", start + 1, comment.group(1) if comment else None)
        )
        i += 1
    return blocks


def parse_annotation(block: Block) -> dict[str, list[str]]:
    """``key: value; key: value`` into lists of values; any mistake is an AssertionError."""
    if block.annotation is None:
        raise AssertionError(
            f"{block.where()} has no annotation: put a line like "
            "`<!-- project: NAME; file: PATH -->` right before its fence (see tests/test_readme.py)"
        )
    result: dict[str, list[str]] = {}
    for part in block.annotation.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition(":")
        key = key.strip()
        if not sep or key not in KEYS:
            raise AssertionError(f"{block.where()}: {part.strip()!r} is not one of {sorted(KEYS)}")
        if key in result:
            raise AssertionError(f"{block.where()}: {key!r} given twice")
        values = [v for v in re.split(r"[,\s]+", value.strip()) if v]
        if not values:
            raise AssertionError(f"{block.where()}: {key!r} has no value")
        result[key] = values
    if "project" not in result:
        raise AssertionError(f"{block.where()}: the annotation names no project")
    if ("file" in result) == ("merge" in result):
        raise AssertionError(f"{block.where()}: give exactly one of 'file' and 'merge'")
    for key in ("file", "merge", "extends"):
        if len(result.get(key, [])) > 1:
            raise AssertionError(f"{block.where()}: {key!r} takes one value")
    if "merge" in result and block.lang != "ini":
        raise AssertionError(f"{block.where()}: only ini blocks can be merged")
    target = (result.get("file") or result["merge"])[0]
    first = block.text.splitlines()[0] if block.text.strip() else ""
    if first.lstrip().startswith(("#", "--")):
        named = PATH_LIKE.findall(first)
        if named and named[0] != target:
            raise AssertionError(
                f"{block.where()}: its first line names {named[0]!r}, the annotation {target!r}"
            )
    for fixture in result.get("fixture", []):
        if Path(fixture).name not in FIXTURES:
            raise AssertionError(
                f"{block.where()}: no generator for fixture {fixture!r} "
                f"(known names: {sorted(FIXTURES)})"
            )
    return result


def collect_projects(blocks: list[Block]) -> dict[str, Project]:
    projects: dict[str, Project] = {}
    for block in blocks:
        if block.lang not in RUN_LANGS:
            continue
        note = parse_annotation(block)
        for name in note["project"]:
            project = projects.setdefault(name, Project(name))
            project.blocks.append(block)
            if "extends" in note:
                base = note["extends"][0]
                if project.extends not in (None, base):
                    raise AssertionError(f"{block.where()}: {name!r} extends two projects")
                project.extends = base
            project.fixtures.extend(note.get("fixture", []))
            if "file" in note:
                path = note["file"][0]
                if path in project.files:
                    raise AssertionError(f"{block.where()}: {path!r} twice in project {name!r}")
                project.files[path] = block.text
            else:
                project.merges.append((note["merge"][0], block.text, block))
    for project in projects.values():
        if project.extends is not None and project.extends not in projects:
            raise AssertionError(f"project {project.name!r} extends unknown {project.extends!r}")
    return projects


def merge_ini(base: str, extra: str, where: str) -> str:
    """``extra``'s ``[pytest]`` options added to (or replacing) those of ``base``."""
    parsed = []
    for text in (base, extra):
        parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#", ";"))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(text)
        if not parser.has_section("pytest"):
            raise AssertionError(f"{where}: no [pytest] section to merge")
        parsed.append(parser)
    merged, options = parsed
    for key, value in options.items("pytest"):
        merged.set("pytest", key, value)
    out = io.StringIO()
    out.write("[pytest]\n")
    for key, value in merged.items("pytest"):
        lines = value.strip().splitlines()
        if len(lines) > 1 or value.startswith("\n"):
            out.write(f"{key} =\n" + "".join(f"    {line.strip()}\n" for line in lines))
        else:
            out.write(f"{key} = {value.strip()}\n")
    return out.getvalue()


def resolve(projects: dict[str, Project], name: str, seen: tuple[str, ...] = ()) -> Project:
    """The project with everything it extends folded in."""
    if name in seen:
        raise AssertionError(f"projects extend each other in a loop: {' -> '.join((*seen, name))}")
    project = projects[name]
    files: dict[str, str] = {}
    fixtures: list[str] = []
    if project.extends is not None:
        base = resolve(projects, project.extends, (*seen, name))
        files.update(base.files)
        fixtures.extend(base.fixtures)
    files.update(project.files)
    for path, text, block in project.merges:
        if path not in files:
            raise AssertionError(f"{block.where()}: nothing to merge into: {name!r} has no {path}")
        files[path] = merge_ini(files[path], text, block.where())
    fixtures.extend(project.fixtures)
    return Project(name, project.extends, files, [], fixtures, project.blocks)


# Data files the snippets read, in place of the SQLite file an app ships. The books file
# fits the quick start's models (author, book); none of its rows is one the snippets add.
def make_books(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE author (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL UNIQUE);
            CREATE TABLE book (
                id INTEGER PRIMARY KEY,
                title VARCHAR NOT NULL,
                author_id INTEGER NOT NULL REFERENCES author (id)
            );
            INSERT INTO author (id, name) VALUES (1, 'Ursula K. Le Guin');
            INSERT INTO book (title, author_id) VALUES
                ('A Wizard of Earthsea', 1), ('The Dispossessed', 1);
            """
        )
    conn.close()


def make_analytics(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE page_view (id INTEGER PRIMARY KEY, path TEXT NOT NULL)")
        conn.executemany(
            "INSERT INTO page_view (path) VALUES (?)", [("/",), ("/books",), ("/books",)]
        )
    conn.close()


def make_alembic(path: Path) -> None:
    """What ``alembic init migrations`` writes (the generic env.py, unchanged), at ``path``."""
    from alembic import command
    from alembic.config import Config

    command.init(Config(str(path)), str(path.parent / "migrations"))


FIXTURES: dict[str, Callable[[Path], None]] = {
    "books.sqlite": make_books,
    "analytics.sqlite": make_analytics,
    "alembic.ini": make_alembic,
}

BLOCKS = read_blocks(README.read_text(encoding="utf-8"))


def _projects_or_none() -> dict[str, Project]:
    try:
        return collect_projects(BLOCKS)
    except AssertionError:
        return {}  # test_every_snippet_is_annotated reports it


PROJECTS = _projects_or_none()


def test_every_snippet_is_annotated() -> None:
    problems = []
    for block in BLOCKS:
        if not block.lang:
            problems.append(f"{block.where()}: a fence without a language (use text, bash, ...)")
        elif block.lang in RUN_LANGS:
            try:
                parse_annotation(block)
            except AssertionError as exc:
                problems.append(str(exc))
    if not problems:
        try:
            for name in collect_projects(BLOCKS):
                resolve(collect_projects(BLOCKS), name)
        except AssertionError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)
    assert PROJECTS, "no runnable snippet found in README.md"
    assert not set(XFAIL) - set(PROJECTS), "XFAIL names a project README.md no longer has"


def test_links_are_absolute() -> None:
    """The package index shows README.md without the repository: relative links break."""
    text = README.read_text(encoding="utf-8")
    prose = re.sub(r"^(`{3,}).*?^\1", "", text, flags=re.M | re.S)
    targets = re.findall(r"\]\(([^)\s]+)", prose) + re.findall(r"^\[[^\]]+\]:\s*(\S+)", prose)
    relative = [t for t in targets if not t.startswith(("https://", "http://", "mailto:"))]
    assert not relative, f"relative links in README.md: {relative}"


def _plugin_options() -> set[str]:
    tree = ast.parse((ROOT / "pytest_memdb" / "options.py").read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr in {"addini", "addoption"})
                or (isinstance(node.func, ast.Name) and node.func.id == "IniOption")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def test_the_reference_lists_every_option() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration reference", 1)[-1].split("\n## ", 1)[0]
    options = _plugin_options()
    assert "memdb_file" in options
    missing = sorted(name for name in options if f"`{name}" not in section)
    assert not missing, f"options of options.py missing from the configuration reference: {missing}"


def _pytest_command() -> list[str]:
    script = Path(sys.executable).with_name("pytest")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-P", "-m", "pytest"]  # -P: the folder is not on sys.path


PYTEST = _pytest_command()


def run_like_a_user(folder: Path) -> pytest.RunResult:
    """``pytest`` in ``folder``, as typed in a shell there.

    Not ``runpytest_subprocess``, nor ``python -m pytest``: both put the folder on
    ``sys.path`` (PYTHONPATH, ``-m``), which would hide a snippet's missing
    ``pythonpath = .``. The timeout is a hang guard, not a timing assertion.
    """
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTEST_ADDOPTS"}}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    start = time.monotonic()
    done = subprocess.run(
        [*PYTEST, "-p", "no:cacheprovider"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return pytest.RunResult(
        done.returncode,
        done.stdout.splitlines(),
        done.stderr.splitlines(),
        time.monotonic() - start,
    )


def _params() -> list[object]:
    params = []
    for name in sorted(PROJECTS):
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[name])] if name in XFAIL else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params or [pytest.param(None, id="none")]


@pytest.mark.parametrize("name", _params())
def test_readme_project_passes(pytester: pytest.Pytester, name: str | None) -> None:
    if name is None:
        pytest.fail("no project could be read from README.md (see test_every_snippet_is_annotated)")
    project = resolve(PROJECTS, name)
    # Generated files first (``alembic init`` wants an empty folder), the snippets over them.
    for fixture in project.fixtures:
        target = pytester.path / fixture
        target.parent.mkdir(parents=True, exist_ok=True)
        FIXTURES[Path(fixture).name](target)
    for path, text in project.files.items():
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    before = _files(pytester.path)
    result = run_like_a_user(pytester.path)
    output = result.stdout.str() + result.stderr.str()
    where = ", ".join(f"README.md:{b.line}" for b in project.blocks)
    outcomes = result.parseoutcomes()
    assert result.ret == 0, f"project {name!r} (blocks at {where}) failed:\n{output}"
    assert outcomes.get("passed", 0) >= 1, f"project {name!r} ran no test:\n{output}"
    bad = {k: v for k, v in outcomes.items() if k not in {"passed", "warnings", "warning"}}
    assert not bad, f"project {name!r}: {bad}\n{output}"
    # No database file (the app's own, a forgotten engine's) appeared; the fixtures are intact.
    assert _files(pytester.path) == before, f"project {name!r} left files behind:\n{output}"


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, but Python's caches and Hypothesis's example database."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and not {"__pycache__", ".hypothesis"} & set(path.parts)
    }
