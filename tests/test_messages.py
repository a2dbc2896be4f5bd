"""The error messages of :mod:`pytest_memdb.messages` and the README's Troubleshooting
section are one source: each message is quoted there as it renders, under its id's
anchor; each quote there is a message the plugin can still print; each printed message
links to its entry."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pytest_memdb import messages
from pytest_memdb.messages import DOCS, MESSAGES

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ANCHOR = re.compile(r'^<a id="(troubleshooting-[^"]*)"></a>$')


def troubleshooting() -> dict[str, list[str]]:
    """The Troubleshooting section's quotes (``text`` blocks), by the anchor above them."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    quotes: dict[str, list[str]] = {}
    anchor = None
    previous = ""
    block: list[str] | None = None
    for line in section.splitlines():
        if block is not None:
            if line == "```":
                quotes.setdefault(anchor or "(before any anchor)", []).append("\n".join(block))
                block = None
            else:
                block.append(line)
        elif line == "```text":
            block = []
        elif line.startswith("### "):  # a heading without an anchor ends the last entry
            found = ANCHOR.match(previous)
            anchor = found.group(1) if found else None
        previous = line
    return quotes


def test_every_message_is_quoted_in_the_readme_as_it_renders() -> None:
    quotes = troubleshooting()
    for message in MESSAGES.values():
        assert quotes.get(message.anchor) == [message.example_text()], (
            f"README.md's Troubleshooting entry {message.anchor!r} must quote, in one text "
            f"block under its anchor, exactly:\n{message.example_text()}"
        )


def test_every_quote_in_the_readme_is_a_message_the_plugin_prints() -> None:
    known = {message.anchor for message in MESSAGES.values()}
    quotes = troubleshooting()
    assert quotes, "no quote found in README.md's Troubleshooting section"
    stale = sorted(set(quotes) - known)
    assert not stale, f"Troubleshooting entries with no message in messages.py: {stale}"


def test_printed_messages_link_to_their_entry() -> None:
    for id, message in MESSAGES.items():
        assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", id), id
        printed = message(**message.example)
        assert printed == (f"{message.example_text()}\nSee {DOCS}#troubleshooting-{id}")
        assert printed.startswith("pytest-memdb: ")


def test_every_message_is_used_by_the_plugin() -> None:
    """A message no module prints any more is not one to document."""
    names = {
        name
        for name, value in vars(messages).items()
        if isinstance(value, messages.Message) and name.isupper()
    }
    assert {id(vars(messages)[name]) for name in names} == {id(m) for m in MESSAGES.values()}
    used: set[str] = set()
    for path in (ROOT / "pytest_memdb").glob("*.py"):
        if path.name == "messages.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used.update(node.id for node in ast.walk(tree) if isinstance(node, ast.Name))
    assert not names - used, f"messages no module uses: {sorted(names - used)}"


@pytest.mark.parametrize("message", MESSAGES.values(), ids=list(MESSAGES))
def test_a_message_renders_only_with_its_fields(message: messages.Message) -> None:
    """Its example names every field the template has (a template with a field the README's
    example leaves out could not be rendered there)."""
    fields = set(re.findall(r"\{(\w+)[^}]*\}", message.template))
    assert fields == set(message.example)
