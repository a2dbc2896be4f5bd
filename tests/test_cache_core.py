"""The template cache's core without a pytest session: bad entries of every kind, a
folder that cannot be used, and a bounded wait for a lock that is never released.

Real files in a real cache folder; the lock is held by a second ``filelock`` lock on the
same file (what another process holds). ``warn`` and ``announce`` are lists here.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import filelock
import pytest

from pytest_memdb.core.config import LoadStep, Target
from pytest_memdb.sqlite.build import build_template
from pytest_memdb.sqlite.cache import TemplateCache
from pytest_memdb.sqlite.cache_entries import Bad, Entry, Good
from pytest_memdb.sqlite.memory import MemoryDatabase, unique_name


class Project:
    """A seed script, a target on it, and the cache objects of successive runs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache = folder / "cache"
        self.builds = 0
        self.warned: list[str] = []
        self.announced: list[str] = []
        (folder / "seed.sql").write_text(
            "CREATE TABLE item (name TEXT);\nINSERT INTO item VALUES ('seeded');\n"
        )

    def target(self, fixture: str = "memdb") -> Target:
        step = LoadStep("seed.sql", "test", script=self.folder / "seed.sql")
        return Target(None, "", "copy", load=(step,), fixture=fixture)

    def run(self, **options: float) -> TemplateCache:
        return TemplateCache(
            self.cache,
            run_id=uuid.uuid4().hex,
            rebuild=False,
            base_dir=self.folder,
            pragmas=(),
            hook_functions=[],
            warn=self.warned.append,
            announce=self.announced.append,
            **options,  # type: ignore[arg-type]
        )

    def template(self, cache: TemplateCache, target: Target | None = None) -> list[str]:
        """The rows of the template ``cache`` hands out."""
        wanted = target or self.target()

        def build() -> MemoryDatabase:
            self.builds += 1
            return build_template(wanted, unique_name("core", "t"), base_dir=self.folder)

        database = cache.template(wanted, unique_name("core", "c"), build)
        try:
            return [name for (name,) in database.anchor.execute("SELECT name FROM item")]
        finally:
            database.close()

    def entry(self) -> Entry:
        return Entry(self.cache, self.run().key(self.target()))


def _manifest_garbage(entry: Entry) -> None:
    entry.manifest.write_text("{not json")


def _manifest_missing(entry: Entry) -> None:
    entry.manifest.unlink()


def _data_missing(entry: Entry) -> None:
    entry.data.unlink()


def _data_grown(entry: Entry) -> None:
    with entry.data.open("ab") as handle:
        handle.write(b"\0" * 10)


def _checksum_wrong(entry: Entry) -> None:
    manifest = json.loads(entry.manifest.read_text())
    entry.manifest.write_text(json.dumps({**manifest, "sha256": "0" * 64}))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_manifest_garbage, "its manifest * is not readable"),
        (_manifest_missing, "it has no manifest*"),
        (_data_missing, "the file is missing*"),
        (_data_grown, "it is * bytes, its manifest says *"),
        (_checksum_wrong, "its content does not match its manifest's SHA-256"),
    ],
    ids=lambda value: getattr(value, "__name__", "")[1:],
)
def test_every_kind_of_bad_entry_is_named_rebuilt_and_replaced(
    tmp_path: Path, damage: Callable[[Entry], None], reason: str
) -> None:
    project = Project(tmp_path)
    assert project.template(project.run()) == ["seeded"]
    entry = project.entry()
    damage(entry)
    assert isinstance(entry.read(), Bad)

    assert project.template(project.run()) == ["seeded"]

    assert project.builds == 2
    (said,) = project.warned
    assert said.startswith(f"pytest-memdb: the cached template {entry.data} was bad (")
    assert said.endswith("); built it again and replaced it.")
    assert fnmatch.fnmatch(said, f"*({reason})*")
    assert isinstance(entry.read(), Good)
    assert project.template(project.run()) == ["seeded"]
    assert project.builds == 2


def test_a_write_that_fails_means_no_cache_for_the_run_with_one_warning(
    tmp_path: Path,
) -> None:
    """The entry's name is taken by a folder: it can be neither read nor replaced."""
    project = Project(tmp_path)
    project.entry().data.mkdir(parents=True)
    cache = project.run()

    assert project.template(cache) == ["seeded"]
    assert project.template(cache, project.target("other")) == ["seeded"]
    assert project.template(cache) == ["seeded"]

    (said,) = project.warned
    assert said.startswith(f"pytest-memdb: memdb_cache cannot use its folder {project.cache} (")
    assert "IsADirectoryError" in said
    assert said.endswith("templates are built without it for the rest of this run.")
    assert project.builds == 3


def test_a_folder_that_cannot_be_made_means_no_cache_for_the_run(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.cache.write_text("a file where the cache folder should be")
    cache = project.run()
    assert project.template(cache) == ["seeded"]
    assert project.template(cache, project.target("other")) == ["seeded"]
    (said,) = project.warned
    assert "memdb_cache cannot use its folder" in said
    assert project.cache.read_text() == "a file where the cache folder should be"


def test_a_lock_never_released_is_waited_for_boundedly_then_built_without(
    tmp_path: Path,
) -> None:
    """A holder that never lets go (stopped in a debugger): the wait is announced once,
    then given up; the template is built and the entry left alone."""
    project = Project(tmp_path)
    entry = project.entry()
    project.cache.mkdir()
    held = filelock.FileLock(str(entry.lock))
    held.acquire(timeout=1)
    try:
        rows = project.template(project.run(wait_s=0.4, notice_s=0.1))
    finally:
        held.release()

    assert rows == ["seeded"]
    waiting, gave_up = project.announced
    assert waiting.startswith(
        f"pytest-memdb: waiting for another process to build the template cached at {entry.data} "
        "(held by a process that did not say which). Waiting up to 0.4 s in all"
    )
    assert "--cache-clear" in waiting
    assert gave_up.startswith(
        f"pytest-memdb: waited 0.4 s for the memdb_cache lock of {entry.data}"
    )
    assert not entry.data.exists()
    assert project.warned == []
    assert project.template(project.run()) == ["seeded"]
    assert entry.data.exists(), "once the lock is free, the entry is written"


def test_a_crashed_writers_leftovers_are_swept_by_the_next_writer(tmp_path: Path) -> None:
    project = Project(tmp_path)
    entry = project.entry()
    project.cache.mkdir()
    leftover = project.cache / f"{entry.key}.sqlite.99999.partial"
    leftover.write_bytes(b"half a file")
    assert project.template(project.run()) == ["seeded"]
    assert not leftover.exists()
    assert sorted(path.name for path in project.cache.iterdir()) == sorted(
        [entry.data.name, entry.manifest.name, entry.lock.name]
    )


READING_MODELS = """
from sqlalchemy import Column, Integer, MetaData, Table, event, text

metadata = MetaData()
item = Table("item", metadata, Column("id", Integer, primary_key=True))


@event.listens_for(item, "after_create")
def _count(target, connection, **kw):
    if connection.execute(text("SELECT count(*) FROM item")).scalar() == 0:
        connection.exec_driver_sql("INSERT INTO item (id) VALUES ({value})")
"""


def _models(folder: Path, name: str, value: int, source: str = READING_MODELS) -> Target:
    """A models module, imported anew, whose ``after_create`` listener inserts ``value``."""
    (folder / f"{name}.py").write_text(source.format(value=value))
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return Target(None, "", "copy", metadata=f"{name}:metadata", metadata_origin="test")


def test_a_create_all_that_reads_the_database_is_built_without_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its statements cannot be known without running it: when in doubt, rebuild."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    project = Project(tmp_path)
    target = _models(tmp_path, "core_reading_models", 7)
    cache = project.run()
    for _ in range(2):
        database = cache.template(
            target,
            unique_name("core", "c"),
            lambda: build_template(target, unique_name("core", "t"), base_dir=tmp_path),
        )
        assert database.anchor.execute("SELECT id FROM item").fetchall() == [(7,)]
        database.close()
    (said,) = project.warned
    assert said.startswith(
        "pytest-memdb: memdb_cache: the template of metadata 'core_reading_models:metadata' "
        "is built without the cache: replaying 'core_reading_models:metadata''s create_all "
        "without a database failed (AttributeError:"
    )
    assert not project.cache.exists()


def test_a_listeners_exec_driver_sql_is_part_of_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No bytecode: an edit within the same second that keeps the size would load the old.
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    project = Project(tmp_path)
    listener = READING_MODELS.replace(
        'if connection.execute(text("SELECT count(*) FROM item")).scalar() == 0:', "if True:"
    )
    keys = []
    for value in (1, 1, 2):
        target = _models(tmp_path, "core_driver_models", value, listener)
        keys.append(project.run().key(target))
    assert keys[0] == keys[1] != keys[2]
