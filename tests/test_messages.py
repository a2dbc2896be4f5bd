"""The messages of :mod:`pytest_memdb.messages` and the docs' errors page are one source:
each message is quoted on ``docs/reference/errors.md`` as it renders, under the heading
of its id (``### `no-source` {#no-source}``); each quote there is a message the plugin can
still print; each printed message links to its entry on the docs site."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pytest_memdb import messages
from pytest_memdb.messages import DOCS, MESSAGES

ROOT = Path(__file__).resolve().parent.parent
ERRORS = ROOT / "docs" / "reference" / "errors.md"
HEADING = re.compile(r"^#{2,4} .*\{#([a-z0-9-]+)\}\s*$")


def quotes() -> dict[str, list[str]]:
    """The page's quotes (``text`` blocks), by the anchor of the heading above them."""
    found: dict[str, list[str]] = {}
    anchor = "(before any anchored heading)"
    block: list[str] | None = None
    for line in ERRORS.read_text(encoding="utf-8").splitlines():
        if block is not None:
            if line == "```":
                found.setdefault(anchor, []).append("\n".join(block))
                block = None
            else:
                block.append(line)
        elif line == "```text":
            block = []
        elif line.startswith("#"):
            heading = HEADING.match(line)
            anchor = heading.group(1) if heading else f"(under {line!r})"
    return found


def test_every_message_is_quoted_on_the_errors_page_as_it_renders() -> None:
    found = quotes()
    for message in MESSAGES.values():
        assert found.get(message.id) == [message.example_text()], (
            f"docs/reference/errors.md's entry {message.id!r} (a heading ending in "
            f"{{#{message.id}}}) must quote, in one text block, exactly:\n"
            f"{message.example_text()}"
        )


def test_every_quote_on_the_errors_page_is_a_message_the_plugin_prints() -> None:
    found = quotes()
    assert found, "no quote found on docs/reference/errors.md"
    stale = sorted(set(found) - set(MESSAGES))
    assert not stale, f"quotes on errors.md under no message of messages.py: {stale}"


def test_printed_messages_link_to_their_entry() -> None:
    site = re.search(r"^site_url: (\S+)$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert site is not None
    assert site.group(1).rstrip("/") + "/reference/errors/" == DOCS
    for id, message in MESSAGES.items():
        assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", id), id
        printed = message(**message.example)
        assert printed == f"{message.example_text()}\nSee {DOCS}#{id}"
        assert printed.startswith("pytest-memdb")


def test_every_message_is_used_by_the_plugin() -> None:
    """A message no module prints any more is not one to document."""
    names = {
        name
        for name, value in vars(messages).items()
        if isinstance(value, messages.Message) and name.isupper()
    }
    assert {id(vars(messages)[name]) for name in names} == {id(m) for m in MESSAGES.values()}
    used: set[str] = set()
    for path in (ROOT / "pytest_memdb").rglob("*.py"):
        if path.name == "messages.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used.update(node.id for node in ast.walk(tree) if isinstance(node, ast.Name))
    assert not names - used, f"messages no module uses: {sorted(names - used)}"


@pytest.mark.parametrize("message", MESSAGES.values(), ids=list(MESSAGES))
def test_a_message_renders_only_with_its_fields(message: messages.Message) -> None:
    """Its example names every field the template has (a template with a field the errors
    page's example leaves out could not be rendered there)."""
    fields = set(re.findall(r"\{(\w+)[^}]*\}", message.template))
    assert fields == set(message.example)
