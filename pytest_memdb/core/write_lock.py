"""The write lock of a rollback-mode test's shared connection, and who holds it.

Standard library only. In rollback mode every engine and session of a test shares one
``sqlite3`` connection (:mod:`pytest_memdb.sqlite.savepoints`); a SQLAlchemy connection that
writes takes this lock until it commits or rolls back, so that savepoints stay nested.
Another connection of the test that writes meanwhile waits, as it would for SQLite's own
lock: fifty concurrent sessions of one test take turns.

A wait that cannot end is failed at once instead of after the busy timeout. The case
that made this matter: a fixture that yields inside ``with engine.begin() as conn:``
after its DDL holds the lock for the whole test, so every write of the test waited the
full 5 s and failed (in one public suite, 31 of 105 tests, 179 s instead of 6), with an
error that did not say which connection held it. Now the holder is recorded when it takes
the lock (its engine, the line of the user's code that wrote first, its thread and
asyncio task: measured 3 us for a sync write transaction, 8 us for an ``AsyncSession``'s,
whose greenlet and coroutine frames cost more to look at), and a waiter gives up at once
when the holder cannot end its transaction while the waiter waits:

* a blocking (sync) waiter, and the holder on the same thread: nothing on this thread
  runs again until the wait ends;
* an async waiter, and the holder on the same thread in the same task, in a task that has
  finished (an async fixture's set-up), or outside any task (a sync fixture, the test's
  own sync code): only other tasks run while it waits, and none of them holds it.

A holder in another thread, or in another live task, may end its transaction at any
moment: that wait goes on, bounded by the backend's own lock wait (SQLite's busy timeout,
:data:`~pytest_memdb.sqlite.connections.BUSY_TIMEOUT_S`; PostgreSQL's ``lock_timeout``), and
its error names the holder too; each backend says what a failed wait raises (SQLite's
``database is locked``, as its driver would). (A holder whose connection is handed to
another task that commits it later is failed at once too; no test of the plugin's own
does that.)
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Literal

from pytest_memdb.core.callers import Place, describe, place

Engine = Literal["sync", "async"]

ADVICE = (
    "Commit or roll back that connection before the test writes through another one: a "
    "fixture should leave its `with engine.begin()` block (which commits) before it yields, "
    "or yield that connection for the test to write through"
)


class Holder:
    """The connection that took the write lock, as far as a message needs it."""

    __slots__ = ("engine", "task", "thread", "where")

    def __init__(
        self,
        engine: Engine,
        where: Place | None,
        thread: int,
        task: asyncio.Task[object] | None,
    ) -> None:
        self.engine = engine
        self.where = where
        """The line of the test's or the app's code that wrote first."""
        self.thread = thread
        self.task = task
        """None: taken outside any asyncio task. (Held until the lock is released: at the
        test's end at the latest.)"""

    @classmethod
    def here(cls, engine: Engine) -> Holder:
        where = place(awaited=engine == "async")
        return cls(engine, where, threading.get_ident(), _current_task())

    def describe(self) -> str:
        return (
            f"a connection of the test's {self.engine} engine began a write transaction at "
            f"{describe(self.where)} and has not ended it"
        )

    def stuck(self, *, blocking: bool) -> str | None:
        """Why this holder cannot end its transaction while the caller waits (None: it may)."""
        if self.thread != threading.get_ident():
            return None
        if blocking:
            return "it was begun on this thread, which this statement would block"
        if self.task is None:
            return (
                "it was begun outside the event loop's tasks, by a sync fixture or sync code "
                "of the test, neither of which runs again while the test waits"
            )
        task = self.task
        if task.done():
            return "the task that began it, an async fixture's set-up for instance, has finished"
        if task is _current_task():
            return "it was begun in the very task that is now waiting for it"
        return None


class WriteLock:
    """A lock one SQLAlchemy connection of the test holds while it writes; see the module."""

    def __init__(self, *, wait_s: Callable[[], float], error: Callable[[str], Exception]) -> None:
        """``wait_s``: how long a writer that may yet get the lock waits (read at each
        wait); ``error``: the driver's error for a failed wait, given the reason."""
        self._lock = threading.Lock()
        self._wait_s = wait_s
        self._error = error
        self.holder: Holder | None = None

    def acquire_now(self) -> bool:
        return self._lock.acquire(blocking=False)

    def taken(self, engine: Engine) -> None:
        """Record the caller, which holds the lock now, as its holder."""
        self.holder = Holder.here(engine)

    def release(self) -> None:
        """Let the next writer in (nothing happens when the lock is free)."""
        if self._lock.locked():
            self.holder = None
            self._lock.release()

    def wait_blocking(self) -> None:
        """Take the lock, blocking this thread up to the busy timeout; or fail (see module)."""
        self._fail_if_stuck(blocking=True)
        if not self._lock.acquire(timeout=self._wait_s()):
            raise self._timed_out()

    async def wait_async(self) -> None:
        """Take the lock, letting other tasks run, up to the busy timeout; or fail."""
        self._fail_if_stuck(blocking=False)
        deadline = time.monotonic() + self._wait_s()
        delay = 0.0005
        while not self._lock.acquire(blocking=False):
            if time.monotonic() > deadline:
                raise self._timed_out()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _fail_if_stuck(self, *, blocking: bool) -> None:
        holder = self.holder
        why = holder.stuck(blocking=blocking) if holder is not None else None
        if holder is not None and why is not None:
            raise self._error(
                "pytest-memdb (rollback isolation) gave up at once on this write: "
                f"{holder.describe()}, and cannot while this statement waits ({why}). "
                f"{ADVICE}."
            )

    def _timed_out(self) -> Exception:
        holder = self.holder
        who = holder.describe() if holder is not None else "it is not known which"
        return self._error(
            "another connection of this test kept an uncommitted write open for "
            f"{self._wait_s():g} s: {who} (pytest-memdb rollback isolation). "
            f"{ADVICE}."
        )


def _current_task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop runs on this thread
        return None
