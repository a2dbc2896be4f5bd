"""The lock a cache entry is built under: bounded, and a long wait says what it waits for.

Only a process that builds (no valid entry, or ``--memdb-rebuild``) takes the lock; a
valid entry is read without it (entries are renamed into place whole). The lock is
``filelock``'s (``flock`` on POSIX, ``msvcrt`` locking on Windows): the system releases
it when its holder dies, so only a live holder makes others wait: one still building,
or one stopped (in ``--pdb``, suspended with Ctrl-Z). After :data:`NOTICE_S` the waiter
says so, once, naming the entry, the holder (pid, host, command, since when: it writes
them to ``<key>.holder`` when it takes the lock) and the ways out; after
:data:`WAIT_S` in all it gives up and builds without the cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator

from pytest_memdb.sqlite.cache_entries import Entry

WAIT_S = 600.0
"""How long a process waits for another one to finish building a template before it
builds its own without the cache (a build is minutes at worst)."""

NOTICE_S = 5.0
"""How long a wait goes unannounced."""


@contextlib.contextmanager
def building(
    entry: Entry,
    *,
    tell: Callable[[str], None],
    worker: str = "",
    wait_s: float = WAIT_S,
    notice_s: float = NOTICE_S,
) -> Iterator[bool]:
    """Hold ``entry``'s lock (True), or give up after ``wait_s`` (False: build without
    the cache). ``tell`` gets the notice of a long wait, and of giving up.

    Raises ``OSError`` when the lock file cannot be made or locked.
    """
    from filelock import FileLock, Timeout

    entry.folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(entry.lock))
    try:
        lock.acquire(timeout=min(notice_s, wait_s), poll_interval=0.05)
    except Timeout:
        tell(_waiting(entry, wait_s))
        try:
            lock.acquire(timeout=max(wait_s - notice_s, 0.0), poll_interval=0.05)
        except Timeout:
            tell(
                f"pytest-memdb: waited {wait_s:g} s for the memdb_cache lock of "
                f"{entry.data} ({_holder(entry)[0]}); building the template here, without the "
                "cache."
            )
            yield False
            return
    try:
        _write_holder(entry, worker)
        yield True
    finally:
        with contextlib.suppress(OSError):
            entry.holder.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # else the system releases it when we exit
            lock.release()


def _write_holder(entry: Entry, worker: str) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "worker": worker,
        "command": " ".join(sys.argv),
        "since": time.time(),
    }
    partial = entry.holder.with_name(f"{entry.holder.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(record), encoding="utf-8")
    os.replace(partial, entry.holder)


def _holder(entry: Entry) -> tuple[str, int | None]:
    """Who holds the lock, as far as its ``.holder`` file says, and its pid."""
    try:
        record = json.loads(entry.holder.read_text(encoding="utf-8"))
        pid = int(record["pid"])
        since = time.strftime("%H:%M:%S", time.localtime(float(record["since"])))
    except (OSError, ValueError, KeyError, TypeError):
        return "held by a process that did not say which", None
    worker = f", xdist worker {record.get('worker')}" if record.get("worker") else ""
    command = str(record.get("command", ""))[:200]
    host = record.get("host", "?")
    return f"held by pid {pid} on {host}{worker} since {since}: {command}", pid


def _waiting(entry: Entry, wait_s: float) -> str:
    held, pid = _holder(entry)
    kill = f"end it (kill {pid})" if pid is not None else "end it"
    return (
        f"pytest-memdb: waiting for another process to build the template cached at "
        f"{entry.data} ({held}). Waiting up to {wait_s:g} s in all, then building it here "
        f"without the cache. If that process is stuck (stopped in --pdb, suspended): {kill}, "
        "or run again with --cache-clear (a new cache folder: nothing to wait for) or "
        "without memdb_cache."
    )
