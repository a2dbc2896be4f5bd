"""One cached template on disk: written whole, verified on every read.

Standard library only. An entry is two files in the cache folder: ``<key>.sqlite`` (the
template, a SQLite file) and ``<key>.json`` (its manifest: size, SHA-256, the run that
wrote it). Both are written under temporary names, flushed to disk (``fsync``), then
renamed into place, and the folder is flushed too, so a crash mid-write leaves the old
entry, no entry, or a pair that does not match; never a half file under the real name
that is taken as good. A reader compares the file with its manifest (size, then
checksum) before it loads it, so a truncated, emptied or altered entry is reported as
bad (:class:`Bad`, with what is wrong) and the cache builds and replaces it.

The two renames are not one step: a reader between them sees a pair that does not
match. It then takes the entry's lock (:mod:`pytest_memdb.sqlite.cache`) and reads again; the
writer holds that lock until both are in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Good:
    """A verified entry."""

    path: Path
    run_id: str
    """The run that wrote it (``--memdb-rebuild`` takes only its own run's)."""


@dataclass(frozen=True)
class Bad:
    """An entry that must not be used, and why."""

    path: Path
    reason: str


class Entry:
    """The files of one key in the cache folder."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.key = key
        self.data = folder / f"{key}.sqlite"
        self.manifest = folder / f"{key}.json"
        self.lock = folder / f"{key}.lock"
        self.holder = folder / f"{key}.holder"
        """Who holds the lock (pid, host, command), for those waiting for it."""

    def read(self) -> Good | Bad | None:
        """The entry if it is whole and matches its manifest; None when there is none.

        Raises ``OSError`` when the folder or a file of it cannot be read.
        """
        try:
            manifest_text = self.manifest.read_text(encoding="utf-8")
        except FileNotFoundError:
            if self.data.exists():
                return Bad(self.data, "it has no manifest (a write cut short?)")
            return None
        try:
            manifest = json.loads(manifest_text)
            size, checksum = int(manifest["size"]), str(manifest["sha256"])
            run_id = str(manifest["run"])
        except (ValueError, KeyError, TypeError):
            return Bad(self.data, f"its manifest {self.manifest.name} is not readable")
        try:
            actual = self.data.stat().st_size
        except FileNotFoundError:
            return Bad(self.data, "the file is missing, its manifest is there")
        if actual != size:
            return Bad(self.data, f"it is {actual} bytes, its manifest says {size}")
        if _sha256(self.data) != checksum:
            return Bad(self.data, "its content does not match its manifest's SHA-256")
        return Good(self.data, run_id)

    def write(self, source: sqlite3.Connection, run_id: str) -> None:
        """Back ``source`` up into the entry, replacing any old one (see the module doc).

        The caller holds the entry's lock. Raises ``OSError`` when the folder cannot be
        written; nothing is left under a temporary name then.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(f"{self.key}.*.partial"):  # a crashed writer's
            leftover.unlink(missing_ok=True)
        data = self.folder / f"{self.key}.sqlite.{os.getpid()}.partial"
        manifest = self.folder / f"{self.key}.json.{os.getpid()}.partial"
        try:
            target = sqlite3.connect(data)
            try:
                source.backup(target)
            finally:
                target.close()
            _flush(data)
            record = {"size": data.stat().st_size, "sha256": _sha256(data), "run": run_id}
            manifest.write_text(json.dumps(record), encoding="utf-8")
            _flush(manifest)
            os.replace(data, self.data)
            os.replace(manifest, self.manifest)
            _flush_folder(self.folder)
        except BaseException:
            data.unlink(missing_ok=True)
            manifest.unlink(missing_ok=True)
            raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _flush(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def _flush_folder(folder: Path) -> None:
    """The renames reach the disk (POSIX); Windows cannot open a folder, and needs not."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
