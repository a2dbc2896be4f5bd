"""What the plugin did in a run, for the terminal summary: one small object of counters.

Kept in ``config.stash`` by the plugin and handed to the registry, which hands it to each
template, working database and layer: each count is one integer increment where the
thing happens (no globals). Under pytest-xdist, each worker sends its counts back in
``workeroutput`` and the controller adds them up (:meth:`MemdbStats.add`).

Cheap to import (the plugin module imports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields


def _count(meaning: str) -> int:
    return field(default=0, metadata={"meaning": meaning})


@dataclass
class MemdbStats:
    databases: int = _count("databases handed to tests (memdb and memdb_factory fixtures)")
    templates_built: int = _count("templates built")
    templates_cached: int = _count("templates loaded from the cache (memdb_cache)")
    restores_pages: int = _count("restores that copied back the pages a test wrote")
    restores_backup: int = _count("restores that backed the whole template up")
    restores_none: int = _count("tests that wrote nothing (no restore)")
    restores_clone: int = _count("restores by a new clone of the template (PostgreSQL)")
    escapes: int = _count("tests reported for escaping rollback isolation")
    layers_laid: int = _count("layers laid (memdb_suite, memdb_module, memdb_class)")
    layers_frozen: int = _count("layer checkpoints (frozen after a fixture of its scope wrote)")
    layers_put_back: int = _count("writes to a layer outside its fixtures, reported and put back")
    used: bool = field(default=False, compare=False)
    """Whether this process set up a memdb fixture (else the summary says nothing)."""
    workers: int = field(default=0, compare=False)
    """How many xdist workers' counts were added (on the controller)."""

    def restored(self, kind: str) -> None:
        """A restore of the working database, ``pages``, ``backup`` (SQLite) or ``clone``
        (PostgreSQL)."""
        if kind == "pages":
            self.restores_pages += 1
        elif kind == "clone":
            self.restores_clone += 1
        else:
            self.restores_backup += 1

    def counts(self) -> dict[str, int]:
        """The counters by name (what a worker sends to the controller)."""
        return {item.name: getattr(self, item.name) for item in _COUNTS}

    def add(self, counts: Mapping[str, object]) -> None:
        """Add one worker's :meth:`counts` (names this version does not know are ignored)."""
        self.used = True
        self.workers += 1
        for item in _COUNTS:
            value = counts.get(item.name, 0)
            if isinstance(value, int):
                setattr(self, item.name, getattr(self, item.name) + value)

    def line(self) -> str:
        """The summary in one line (escapes and layers only when there were any)."""
        workers = f" ({self.workers} xdist workers)" if self.workers else ""
        parts = [
            f"memdb: {self.databases} databases{workers}",
            f"templates {self.templates_built} built, {self.templates_cached} from cache",
            f"restores {self.restores_pages} pages, {self.restores_backup} backup, "
            f"{self.restores_none} none"
            + (f", {self.restores_clone} clones" if self.restores_clone else ""),
        ]
        if self.escapes:
            parts.append(f"{self.escapes} escapes")
        if self.layers_laid:
            parts.append(
                f"layers {self.layers_laid} laid, {self.layers_frozen} frozen, "
                f"{self.layers_put_back} put back"
            )
        return "; ".join(parts)

    def lines(self) -> list[str]:
        """The summary, one count a line (``-v``)."""
        found = [f"{getattr(self, item.name):>6}  {item.metadata['meaning']}" for item in _COUNTS]
        if self.workers:
            found.append(f"{self.workers:>6}  xdist workers that reported these counts")
        return found


_COUNTS = tuple(item for item in fields(MemdbStats) if "meaning" in item.metadata)
