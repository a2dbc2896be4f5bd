"""At collection: the fixtures the options add to tests, and the mistakes found there."""

from __future__ import annotations

import pytest

from pytest_memdb.plugin import mistakes


def find_mistakes(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Async tests that use memdb and that no plugin runs
    (:mod:`pytest_memdb.plugin.mistakes`): their failure says what to set."""
    unrun: dict[str, list[str]] = {}
    for item in items:
        if mistakes.unrun_async(item):
            fixtures = mistakes.memdb_fixtures(item)
            if fixtures:
                unrun[item.nodeid] = fixtures
    plugins = config.pluginmanager
    if unrun and not plugins.has_plugin(mistakes.AsyncTestsNotRun.name):
        plugins.register(mistakes.AsyncTestsNotRun(unrun), mistakes.AsyncTestsNotRun.name)


def first_function_scoped(item: pytest.Item, names: list[str]) -> int:
    """Where the function-scoped fixtures of ``item`` begin (pytest sorts them last)."""
    info = getattr(item, "_fixtureinfo", None)
    definitions = getattr(info, "name2fixturedefs", {})
    for index, name in enumerate(names):
        found = definitions.get(name)
        if found and found[-1].scope == "function":
            return index
    return len(names)
