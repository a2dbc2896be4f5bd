"""In-process micro-benchmarks: the session start-up (file to memory) and the per-test copy.

They time pytest-memdb's own building blocks (``pytest_memdb.sqlite.loading.load_file``,
``MemoryDatabase.copy``, ``restore_from``) beside the seed's ``backup()`` and plain byte
copies, in the benchmark's own process: no subprocess, so fractions of a millisecond
stay visible. Each round takes a few samples per method, in an order that rotates.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from memdb_bench.common import median, rotate
from memdb_bench.data import Fixture

if TYPE_CHECKING:
    from pytest_memdb.sqlite.memory import MemoryDatabase

Samples = dict[tuple[str, str], list[float]]
"""Milliseconds by (size label, method)."""
ActionList = list[tuple[str, Callable[[], float]]]
"""(method, a callable returning one sample in ms), in the order of a round's first pass."""


def timed(action: Callable[[], Callable[[], None] | None]) -> float:
    """Milliseconds ``action`` takes; the clean-up it returns runs untimed."""
    started = time.perf_counter()
    cleanup = action()
    elapsed = time.perf_counter() - started
    if cleanup is not None:
        cleanup()
    return 1000 * elapsed


STARTUP_METHODS = (
    "memdb load_file",
    "  of which backup() to memdb",
    "  of which PRAGMA quick_check",
    "seed: backup() to shared-cache memory",
    "read_bytes + bytearray",
    "memdb load_file, a later run (quick_check remembered)",
)
COPY_METHODS = (
    "page restore after a write (copy mode, the default memdb_restore = auto)",
    "  the same, 1,000 books updated",
    "  backup restore after a write (memdb_restore = backup)",
    "MemoryDatabase.copy + close (a fresh copy)",
    "shutil.copyfile + unlink",
    "bytearray(data) + del",
)


def micro_reps(fixture: Fixture) -> tuple[int, int]:
    """Start-up and copy samples per round: more for small files, where noise dominates."""
    if fixture.size_mb < 1:
        return 20, 100
    if fixture.size_mb < 20:
        return 5, 20
    return 2, 5


class MicroBench:
    """Start-up and per-test copy timings, a few samples per round and size."""

    def __init__(self, scratch: Path) -> None:
        # Imported here, not at the top: the benchmark's other parts run without the plugin.
        from pytest_memdb.sqlite import loading, memory

        self.memory = memory
        self.loading = loading
        self.scratch = scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.startup: Samples = {}
        self.copy: Samples = {}
        self._seed_names = itertools.count()

    @staticmethod
    def median_ms(store: Samples, size: str, method: str) -> float:
        """The median of one method's samples at one size (NaN if it did not run)."""
        return median(store.get((size, method), []))

    @staticmethod
    def _sample(store: Samples, size: str, method: str) -> list[float]:
        return store.setdefault((size, method), [])

    def _run(self, store: Samples, size: str, actions: ActionList, reps: int, turn: int) -> None:
        """``reps`` passes over ``actions``, each pass in another rotation."""
        for rep in range(reps):
            for method, action in rotate(actions, turn + rep):
                self._sample(store, size, method).append(action())

    def startup_round(self, fixture: Fixture, reps: int, turn: int) -> None:
        memory = self.memory
        path = fixture.path

        def load_file() -> Callable[[], None]:
            db = self.loading.load_file(path, memory.unique_name("bench"), origin="bench")
            return db.close

        def load_file_remembered() -> Callable[[], None]:
            db = self.loading.load_file(
                path, memory.unique_name("bench"), origin="bench", checked=_Remembered(path)
            )
            return db.close

        def backed_up() -> MemoryDatabase:
            """load_file's first step alone: a read-only backup() into a memdb database."""
            db = memory.MemoryDatabase(memory.unique_name("bench"))
            source = sqlite3.connect(memory.file_uri(path, read_only=True), uri=True)
            source.backup(db.anchor)
            source.close()
            return db

        def backup_only() -> Callable[[], None]:
            return backed_up().close

        def seed() -> Callable[[], None]:
            uri = f"file:seed-bench-{next(self._seed_names)}?mode=memory&cache=shared"
            keeper = sqlite3.connect(uri, uri=True)
            source = sqlite3.connect(path)
            source.backup(keeper)
            source.close()
            return keeper.close

        def read_bytes() -> None:
            data = path.read_bytes()
            bytearray(data)

        def quick_check() -> float:
            """load_file's second step alone, on a database backed up untimed."""
            db = backed_up()
            started = time.perf_counter()
            db.anchor.execute("PRAGMA quick_check").fetchall()
            elapsed = time.perf_counter() - started
            db.close()
            return 1000 * elapsed

        actions: ActionList = [
            (STARTUP_METHODS[0], lambda: timed(load_file)),
            (STARTUP_METHODS[1], lambda: timed(backup_only)),
            (STARTUP_METHODS[2], quick_check),
            (STARTUP_METHODS[3], lambda: timed(seed)),
            (STARTUP_METHODS[4], lambda: timed(read_bytes)),
            (STARTUP_METHODS[5], lambda: timed(load_file_remembered)),
        ]
        self._run(self.startup, fixture.label, actions, reps, turn)

    def copy_round(self, fixture: Fixture, reps: int, turn: int) -> None:
        memory = self.memory
        template = self.loading.load_file(
            fixture.path, memory.unique_name("bench"), origin="bench", shared=False
        )
        slot = template.copy(memory.unique_name("bench", "slot"))
        slot.prepare_for_restores(pages_from=template)  # memdb_restore = auto
        backed = template.copy(memory.unique_name("bench", "slot"))
        backed.prepare_for_restores()  # memdb_restore = backup
        writer = sqlite3.connect(slot.sqlite_uri, uri=True, isolation_level=None)
        backed_writer = sqlite3.connect(backed.sqlite_uri, uri=True, isolation_level=None)
        data = fixture.path.read_bytes()
        target = self.scratch / "copy.sqlite"
        rows = min(1000, fixture.books)

        def restorer(
            database: MemoryDatabase, connection: sqlite3.Connection, statement: str
        ) -> Callable[[], float]:
            def restore() -> float:
                connection.execute(statement)  # what a test does
                started = time.perf_counter()
                if not database.restore_from(template):
                    raise SystemExit("bench: the copy could not be restored")
                return 1000 * (time.perf_counter() - started)

            return restore

        one_row = "UPDATE authors SET born = born + 1 WHERE id = 1"
        many_rows = f"UPDATE books SET price_cents = price_cents + 1 WHERE id <= {rows}"

        def memdb_copy() -> None:
            template.copy(memory.unique_name("bench", "test")).close()

        def copyfile() -> None:
            shutil.copyfile(fixture.path, target)
            target.unlink()

        def copy_bytes() -> None:
            buffer = bytearray(data)
            del buffer

        actions: ActionList = [
            (COPY_METHODS[0], restorer(slot, writer, one_row)),
            (COPY_METHODS[1], restorer(slot, writer, many_rows)),
            (COPY_METHODS[2], restorer(backed, backed_writer, one_row)),
            (COPY_METHODS[3], lambda: timed(memdb_copy)),
            (COPY_METHODS[4], lambda: timed(copyfile)),
            (COPY_METHODS[5], lambda: timed(copy_bytes)),
        ]
        if not slot.restores_pages:
            raise SystemExit("bench: page restores are not available here")
        try:
            self._run(self.copy, fixture.label, actions, reps, turn)
        finally:
            writer.close()
            backed_writer.close()
            slot.close()
            backed.close()
            template.close()


class _Remembered:
    """pytest's cache as a later run sees it: this file passed ``quick_check`` before."""

    def __init__(self, path: Path) -> None:
        from pytest_memdb.sqlite.loading import file_identity

        self._identity = json.dumps(file_identity(path))

    def __contains__(self, identity: object) -> bool:
        return json.dumps(identity) == self._identity

    def add(self, identity: tuple[object, ...]) -> None:
        """Nothing to remember: it is known already."""
