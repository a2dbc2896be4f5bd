"""The reference pages list exactly what the plugin has, with the same defaults.

- ``docs/reference/options.md``: its first table has one row per ini option of
  ``options.INI`` and per command-line flag ``options.add_options`` registers (read by
  calling it with a recording parser), each with its type and default, and the marker
  arguments of ``config.MARKER_ARGS`` on the rows of the options they override; every
  option has a section (the anchor other pages link to).
- ``docs/reference/fixtures.md``: its first table has one row per fixture the plugin
  registers (as ``pytest --fixtures`` lists them), with its scope and the type its
  function returns.
- ``docs/reference/api.md``: a section per name of ``pytest_memdb.__all__`` and for the
  hook; in each class's section, every attribute it names exists, and every public
  attribute of the class is named there (or is in ``INTERNAL``, with the reason).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import pytest_memdb
from pytest_memdb import options
from pytest_memdb.core import config
from pytest_memdb.plugin import hooks

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"


def first_table(page: Path) -> list[list[str]]:
    """The rows of the page's first Markdown table, cells stripped of links."""
    rows = []
    started = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("|"):
            started = True
            cells = [_plain(cell) for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # without the header


def _plain(cell: str) -> str:
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", cell).strip()


def _code(cell: str) -> str:
    """The text of a cell that is one code span, or '' for an empty cell."""
    if not cell:
        return ""
    found = re.fullmatch(r"`([^`]+)`", cell)
    assert found, f"expected one `code` span, got {cell!r}"
    return found.group(1)


def headings(page: Path) -> set[str]:
    """The anchors of the page's headings: ``{#id}`` where given, else the code span."""
    anchors = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            continue
        explicit = re.search(r"\{#([\w-]+)\}\s*$", line)
        if explicit:
            anchors.add(explicit.group(1))
        else:
            anchors.update(re.findall(r"`([^`]+)`", line))
    return anchors


# --- options -------------------------------------------------------------------------------


class RecordingParser:
    """What ``add_options`` registers: pytest's ``Parser`` interface, recorded."""

    def __init__(self) -> None:
        self.ini: dict[str, tuple[str | None, Any]] = {}
        self.flags: dict[str, dict[str, Any]] = {}

    def addini(self, name: str, help: str, type: str | None = None, default: Any = None) -> None:
        self.ini[name] = (type, default)

    def getgroup(self, name: str, description: str = "") -> RecordingParser:
        return self

    def addoption(self, *names: str, **attrs: Any) -> None:
        self.flags[names[0]] = attrs


def registered() -> RecordingParser:
    parser = RecordingParser()
    options.add_options(parser)  # type: ignore[arg-type]
    return parser


def expected_default(type_: str | None, default: Any) -> str:
    if type_ == "bool" or isinstance(default, bool):
        return "`true`" if default else "`false`"
    if not default:
        return "none"
    return f"`{default}`"


def test_the_options_page_lists_every_option_with_its_default() -> None:
    parser = registered()
    assert parser.ini
    assert parser.flags
    rows = first_table(REFERENCE / "options.md")
    assert rows, "docs/reference/options.md has no table of options"
    by_ini = {}
    by_flag = {}
    for ini, flag, marker, type_, default in rows:
        flag_name = _code(flag).split()[0] if flag else ""
        row = (ini, flag, marker, type_, default)
        if ini:
            by_ini[_code(ini)] = row
        if flag_name:
            by_flag[flag_name] = row
    assert set(by_ini) == set(parser.ini), (
        f"ini options: the page has {sorted(set(by_ini) - set(parser.ini))} too many, "
        f"misses {sorted(set(parser.ini) - set(by_ini))}"
    )
    assert set(by_flag) == set(parser.flags), (
        f"flags: the page has {sorted(set(by_flag) - set(parser.flags))} too many, "
        f"misses {sorted(set(parser.flags) - set(by_flag))}"
    )
    for name, (type_, default) in parser.ini.items():
        _, _, _, shown_type, shown_default = by_ini[name]
        assert shown_default == expected_default(type_, default), (name, shown_default)
        wanted_type = {"linelist": "lines", "bool": "bool"}.get(type_ or "")
        if wanted_type:
            assert shown_type == wanted_type, (name, shown_type)
        else:
            assert shown_type not in {"lines", "bool"}, (name, shown_type)
    for flag, attrs in parser.flags.items():
        ini, shown, _, shown_type, shown_default = by_flag[flag]
        dest = attrs["dest"]
        if dest in parser.ini:
            assert _code(ini) == dest, f"{flag} is on the row of {ini}, it sets {dest}"
        else:
            assert not ini, f"{flag} sets no ini option, its row names {ini}"
            store_true = attrs.get("action") == "store_true"
            assert shown_type == ("bool" if store_true else "path"), (flag, shown_type)
            assert shown_default == expected_default(None, attrs.get("default")), flag
        metavar = attrs.get("metavar")
        assert _code(shown) == (f"{flag} {metavar}" if metavar else flag), shown


def test_the_options_page_lists_the_marker_arguments() -> None:
    rows = first_table(REFERENCE / "options.md")
    markers = {_code(marker): _code(ini) for ini, _, marker, _, _ in rows if marker}
    assert set(markers) == set(config.MARKER_ARGS)
    for argument, ini in markers.items():
        assert ini == f"memdb_{argument}", f"marker {argument}= is on the row of {ini}"
    text = (REFERENCE / "options.md").read_text(encoding="utf-8")
    section = text.split("## The marker", 1)[1]
    listed = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert sorted(listed) == sorted(config.MARKER_ARGS)


def test_every_option_has_a_section() -> None:
    anchors = headings(REFERENCE / "options.md")
    parser = registered()
    missing = [name for name in parser.ini if name not in anchors]
    missing += [
        flag
        for flag, attrs in parser.flags.items()
        if attrs["dest"] not in parser.ini and flag.lstrip("-") not in anchors
    ]
    assert not missing, f"options without a section on options.md: {missing}"


# --- fixtures ------------------------------------------------------------------------------


def plugin_fixtures(pytester: pytest.Pytester) -> dict[str, str]:
    """name -> scope of the fixtures ``pytest --fixtures`` lists for the plugin module."""
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:randomly")
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "defined from pytest_memdb.plugin" in line)
    found = {}
    for line in lines[start + 1 :]:
        if line.startswith("---") or line.startswith("==="):
            break
        match = re.match(r"^(\w+)(?: \[(\w+) scope\])? -- ", line)
        if match:
            found[match.group(1)] = match.group(2) or "function"
    return found


def returned_types() -> dict[str, str]:
    """The type each fixture function of the plugin returns (``Iterator[X]``: ``X``)."""
    source = inspect.getsource(pytest_memdb.plugin)
    found = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef) or node.returns is None:
            continue
        decorated = any("pytest.fixture" in ast.unparse(d) for d in node.decorator_list)
        if decorated:
            text = ast.unparse(node.returns)
            inner = re.fullmatch(r"(?:Iterator|Generator)\[(.+?)(?:, None, None)?\]", text)
            found[node.name] = inner.group(1) if inner else text
    return found


def test_the_fixtures_page_lists_every_fixture(pytester: pytest.Pytester) -> None:
    registered_fixtures = plugin_fixtures(pytester)
    assert "memdb" in registered_fixtures
    rows = first_table(REFERENCE / "fixtures.md")
    shown = {_code(name): (scope, _code(type_)) for name, scope, type_, _ in rows}
    assert set(shown) == set(registered_fixtures), (
        f"fixtures.md has {sorted(set(shown) - set(registered_fixtures))} too many, misses "
        f"{sorted(set(registered_fixtures) - set(shown))}"
    )
    types = returned_types()
    for name, scope in registered_fixtures.items():
        assert shown[name][0] == scope, f"{name}: the page says {shown[name][0]}, it is {scope}"
        wanted = types[name].replace("orm.", "")
        assert shown[name][1] == wanted, f"{name}: the page says {shown[name][1]}, it is {wanted}"
    anchors = headings(REFERENCE / "fixtures.md")
    assert not [name for name in registered_fixtures if name not in anchors]


# --- the API -------------------------------------------------------------------------------

INTERNAL: dict[str, set[str]] = {
    "MemdbHandle": {"database", "engines_handed", "save", "close", "around_reset"},
    "MemdbLayer": {
        "broken",
        "label",
        "parent",
        "scope",
        "stats",
        "fixture",
        "handle",
        "root",
        "writers",
        "template_for",
        "laid",
        "unexpected",
        "changed",
        "checkpoint",
        "finished",
        "put_back",
        "close",
    },
    "FactoryBinding": {"for_layer", "restore", "kind"},
    "CapturedQueries": {"database"},
    "QueryCounter": {"database"},
    "InMemoryDatabase": {"sql_echo", "mode", "pragmas"},
}
"""Public attributes the plugin uses itself, not the user: layers' bookkeeping, the
handle's teardown, the constructor's arguments kept on the instance."""


def api_sections() -> dict[str, str]:
    text = (REFERENCE / "api.md").read_text(encoding="utf-8")
    parts = re.split(r"^## `(\w+)`\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def members(cls: type) -> set[str]:
    """Its public methods and properties, and the attributes ``__init__`` sets."""
    names = {name for name in vars(cls) if not name.startswith("_")}
    init = vars(cls).get("__init__")
    if init is not None:
        source = inspect.getsource(init)
        names |= set(re.findall(r"self\.([a-z]\w*)(?::[^=]+)? = ", source))
    return names


def test_the_api_page_has_every_exported_name_and_the_hook() -> None:
    sections = api_sections()
    wanted = {*pytest_memdb.__all__, hooks.pytest_memdb_template.__name__}
    missing = sorted(wanted - set(sections))
    warnings_table = (REFERENCE / "api.md").read_text(encoding="utf-8")
    missing = [
        name for name in missing if not (_is_error(name) and f"| `{name}` |" in warnings_table)
    ]
    assert not missing, f"api.md has no section for {missing}"


def _is_error(name: str) -> bool:
    value = getattr(pytest_memdb, name)
    return inspect.isclass(value) and issubclass(value, (Exception, Warning))


def test_the_api_page_names_each_class_attribute_that_exists() -> None:
    from pytest_memdb.integrations.factory_binding import FactoryBinding

    classes: dict[str, type] = {
        name: getattr(pytest_memdb, name)
        for name in pytest_memdb.__all__
        if inspect.isclass(getattr(pytest_memdb, name)) and not _is_error(name)
    }
    classes["FactoryBinding"] = FactoryBinding
    sections = api_sections()
    problems = []
    for name, cls in classes.items():
        named = set(re.findall(r"`(?:await )?\.(\w+)", sections.get(name, "")))
        have = members(cls)
        problems += [f"{name}.{attr}: on the page, not in the class" for attr in named - have]
        undocumented = have - named - INTERNAL.get(name, set())
        problems += [f"{name}.{attr}: in the class, not on the page" for attr in undocumented]
    assert not problems, "\n".join(sorted(problems))
