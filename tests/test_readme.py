"""README.md is the landing page; its quick start is a docs example, pasted whole.

The README is shown on GitHub and on the package index, where snippets cannot be included
from files; so each ``python``, ``ini``, ``toml`` or ``sql`` block of it carries, on the
line right before its fence, an HTML comment (invisible there) naming the file of
``docs/examples/`` it is::

    <!-- example: docs/examples/quickstart/myapp/models.py -->

and must be that file, byte for byte. The folder itself runs in
``tests/test_docs_examples.py`` with every other example, so the quick start a reader
pastes is a project that passes. Every file of the folder is in the README (the quick
start is whole files), and the README's ``pip install`` installs its requirements.txt.

Also: every fence has a language (a fence without one could hide code), every link is
absolute (the package index shows the README without the repository), and the README
stays a landing page, under 200 lines: the rest is the docs site.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_docs_examples import EXAMPLES, FOLDERS, canonical, requirements

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
QUICKSTART = EXAMPLES / "quickstart"
RUN_LANGS = {"python", "ini", "toml", "sql"}
FENCE = re.compile(r"^(`{3,})(.*)$")
ANNOTATION = re.compile(r"^<!-- example: (\S+) -->$")
MAX_LINES = 200


def blocks() -> list[tuple[int, str, str, str | None]]:
    """(line, language, text, the annotation's path) of each fenced block."""
    lines = README.read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, lang = match.group(1), match.group(2).strip()
        note = ANNOTATION.match(lines[i - 1].strip()) if i else None
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"README.md:{start + 1}: a fence that is never closed"
        found.append((start + 1, lang, "\n".join(body) + "\n", note.group(1) if note else None))
        i += 1
    return found


def test_every_code_block_is_an_example_file() -> None:
    problems = []
    shown = set()
    for line, lang, text, path in blocks():
        if not lang:
            problems.append(f"README.md:{line}: a fence without a language (text, bash, ...)")
        if lang not in RUN_LANGS:
            continue
        if path is None:
            problems.append(
                f"README.md:{line} ({lang}): put `<!-- example: docs/examples/<name>/<path> -->` "
                "right before its fence, naming the file it shows"
            )
            continue
        file = ROOT / path
        if not file.is_file():
            problems.append(f"README.md:{line}: {path} does not exist")
        elif file.read_text(encoding="utf-8") != text:
            problems.append(f"README.md:{line}: the block is not {path} as it is (copy it again)")
        shown.add(file.resolve())
    assert not problems, "\n".join(problems)
    assert shown, "README.md shows no example file"


def test_the_quick_start_is_whole_and_runs() -> None:
    """Every file of the quick start's folder is in the README, and the docs' harness runs
    that folder."""
    assert QUICKSTART in FOLDERS
    shown = {path for _, _, _, path in blocks() if path}
    text = README.read_text(encoding="utf-8")
    for file in sorted(QUICKSTART.rglob("*")):
        relative = file.relative_to(ROOT).as_posix()
        if not file.is_file() or "__pycache__" in file.parts:
            continue
        if file.name == "requirements.txt":
            wanted = {canonical(listed.line) for listed in requirements(QUICKSTART)}
            installs = [
                {canonical(w) for w in found.split() if re.fullmatch(r"\w[\w.\[\],-]*", w)}
                for found in re.findall(r"pip install ([^`\n&]+)", text)
            ]
            assert any(wanted <= words for words in installs), (
                f"no `pip install` in README.md installs {sorted(wanted)}"
            )
            continue
        assert relative in shown, f"README.md's quick start does not show {relative}"
        name = file.relative_to(QUICKSTART).as_posix()
        assert f"`{name}`" in text, f"README.md never names `{name}` for the reader"


def test_links_are_absolute() -> None:
    """The package index shows README.md without the repository: relative links break."""
    text = README.read_text(encoding="utf-8")
    prose = re.sub(r"^(`{3,}).*?^\1", "", text, flags=re.M | re.S)
    targets = re.findall(r"\]\(([^)\s]+)", prose) + re.findall(r"^\[[^\]]+\]:\s*(\S+)", prose)
    relative = [t for t in targets if not t.startswith(("https://", "http://", "mailto:"))]
    assert not relative, f"relative links in README.md: {relative}"


def test_the_readme_is_a_landing_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < MAX_LINES, (
        f"README.md has {len(lines)} lines: it is the landing page (under {MAX_LINES}); "
        "put the rest on a page of docs/"
    )
