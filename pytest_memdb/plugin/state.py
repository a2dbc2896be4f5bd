"""What one pytest run keeps in ``config.stash``, and the accessors that make it on first use.

The registry (and with it SQLAlchemy) is made by the first memdb fixture, never at start-up:
a run that uses no memdb fixture imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from pytest_memdb.core.config import MemdbConfig
from pytest_memdb.core.stats import MemdbStats
from pytest_memdb.plugin import postgresql

if TYPE_CHECKING:
    from pytest_memdb.core.janitor import MemdbHandle
    from pytest_memdb.core.registry import MemdbRegistry
    from pytest_memdb.integrations.factory_binding import FactoryModules
    from pytest_memdb.integrations.strict import StrictGuard
    from pytest_memdb.integrations.takeover import Takeover
    from pytest_memdb.sqlite.backend import SqliteBackend
    from pytest_memdb.sqlite.engines import EnginePair

settings_key = pytest.StashKey[MemdbConfig]()


registry_key = pytest.StashKey["MemdbRegistry"]()


strict_key = pytest.StashKey["StrictGuard"]()


takeover_key = pytest.StashKey["Takeover"]()


nested_key = pytest.StashKey[str | None]()
"""The ini file of the pytest run this one was started from, when it reads the same one."""


open_handles_key = pytest.StashKey[list[tuple[str, "MemdbHandle"]]]()
"""The databases a test holds, by fixture name, for ``--memdb-keep-failed``."""


factory_modules_key = pytest.StashKey["FactoryModules"]()


current_item_key = pytest.StashKey[pytest.Item]()
"""The test being run: a layer set up for it is laid on the wider layers *it* asked for."""


stats_key = pytest.StashKey[MemdbStats]()
"""What the plugin did in the run, for the terminal summary (:mod:`pytest_memdb.core.stats`)."""


STATS_OUTPUT = "memdb_stats"
"""The key of a worker's counts in xdist's ``workeroutput``."""


def takeover(config: pytest.Config) -> Takeover | None:
    """``memdb_takeover``'s listener (made at start-up), or None without the option."""
    return config.stash.get(takeover_key, None)


def strict_guard(config: pytest.Config) -> StrictGuard:
    guard = config.stash.get(strict_key, None)
    if guard is None:
        from pytest_memdb.integrations.strict import StrictGuard

        guard = StrictGuard(
            nested=config.stash.get(nested_key, None),
            postgresql=config.stash[settings_key].postgresql is not None,
        )
        config.stash[strict_key] = guard
        config.add_cleanup(guard.close)
    return guard


def registry(config: pytest.Config) -> MemdbRegistry:
    """The session's registry, created (and SQLAlchemy imported) on first use."""
    registry = config.stash.get(registry_key, None)
    if registry is None:
        from pytest_memdb.core.registry import MemdbRegistry
        from pytest_memdb.core.templates import hook_runner

        workerinput = getattr(config, "workerinput", {})
        worker = workerinput.get("workerid", "main")
        settings = config.stash[settings_key]
        stats = config.stash[stats_key]
        stats.used = True
        registry = MemdbRegistry(
            settings,
            postgresql.backend_factory(config, settings, worker) or sqlite_backend(config),
            hook_runner(config.hook.pytest_memdb_template, config),
            stats=stats,
        )
        config.stash[registry_key] = registry
        from pytest_memdb.core._loop import close_private_loop

        config.add_cleanup(close_private_loop)  # cleanups run last-in first-out: after close
        config.add_cleanup(registry.close)
    return registry


def sqlite_backend(config: pytest.Config) -> Callable[[], SqliteBackend]:
    """What makes the run's SQLite backend (at the first template): its cache
    (``memdb_cache``) and the fixture files known good (pytest's cache) come from here."""

    def make() -> SqliteBackend:
        from pytest_memdb.sqlite.backend import SqliteBackend
        from pytest_memdb.sqlite.cache import quick_check_cache, template_cache

        settings = config.stash[settings_key]
        return SqliteBackend(
            settings,
            getattr(config, "workerinput", {}).get("workerid", "main"),
            cache=template_cache(config, settings) if settings.cache else None,
            checked=quick_check_cache(config),
        )

    return make


def takeover_scratch(config: pytest.Config) -> EnginePair:
    """The scratch copy of the run's template that ``memdb_takeover`` connects outside tests
    (SQLite only: the option is refused with ``memdb_postgresql`` at start-up)."""
    from pytest_memdb.sqlite.backend import SqliteBackend

    found = registry(config)
    backend = found.backend
    assert isinstance(backend, SqliteBackend)
    return backend.outside(found.template(config.stash[settings_key].default_target()))


def factory_modules(config: pytest.Config) -> FactoryModules | None:
    """The ``memdb_factories`` modules of the run, imported at their first use."""
    settings = config.stash[settings_key]
    if not settings.factories:
        return None
    modules = config.stash.get(factory_modules_key, None)
    if modules is None:
        from pytest_memdb.integrations.factory_binding import FactoryModules

        modules = FactoryModules(settings.factories, settings.factories_origin, settings.base_dir)
        config.stash[factory_modules_key] = modules
    return modules
