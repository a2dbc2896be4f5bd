"""Where in the test's or the app's own code something happened, read from the stack.

Standard library only (``greenlet`` if it is loaded). Errors name the line of the user's code
that opened a database (``memdb_strict``, ``memdb_takeover``) or began a write that now blocks
another connection (rollback mode). The user's line is the innermost frame that is not
SQLAlchemy's, the plugin's, pytest's, Python's own (``contextlib``: ``with engine.begin()``
connects in its ``__enter__``) or generated code (SQLAlchemy's ``<sqlalchemy generated _go()
wrapper ...>``), looking through the greenlets SQLAlchemy's asyncio layer runs its sync code
in. A connection made in a thread that runs none of the user's code
(``Thread(target=engine.connect)``, ``loop.run_in_executor(None, engine.connect)``,
``asyncio.to_thread``) is placed where the test was at that moment: the thread running
pytest, or, when that thread is inside an event loop, the coroutine of the test's task that
waits. Looked up on every first write of a transaction in rollback mode, so the answer per
file name is cached: a walk costs a few microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import sysconfig
import threading
from collections.abc import Iterator
from types import FrameType

_IGNORED_FRAMES = (
    "/sqlalchemy/",
    "/pytest_memdb/",
    "/asyncio/",
    "/aiosqlite/",
    "/greenlet/",
    "/_pytest/",
    "/pluggy/",
    "/pytest_asyncio/",
)
"""Frames never shown as where a connection was opened (the way there, not its cause)."""


def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {paths[key] for key in ("stdlib", "platstdlib") if paths.get(key)}
    found.update([os.path.realpath(path) for path in found])
    return tuple(os.path.join(os.path.normcase(path), "") for path in found)


_STDLIB = _stdlib_dirs()
"""Python's own modules (``contextlib``: ``with engine.begin()`` connects in its
``__enter__``; ``threading``, ``concurrent.futures``...), never the user's code."""


_known: dict[str, bool] = {}
""":func:`user_code`'s answers: a run's code comes from a bounded set of files."""


def user_code(filename: str) -> bool:
    """Whether a frame of ``filename`` is the test's or the app's (an installed package's too)."""
    answer = _known.get(filename)
    if answer is None:
        answer = _known[filename] = _user_code(filename)
    return answer


def _user_code(filename: str) -> bool:
    path = filename.replace("\\", "/")
    if path.startswith("<"):  # generated: SQLAlchemy's wrappers, exec'd "<string>", frozen
        return path.startswith("<doctest ")
    if any(part in path for part in _IGNORED_FRAMES):
        return False
    if "/site-packages/" in path or "/dist-packages/" in path:
        return True
    normal = os.path.normcase(filename)
    return not any(normal.startswith(stdlib) for stdlib in _STDLIB)


def frames() -> Iterator[FrameType]:
    """The frames on the way here, innermost first; through the greenlets that SQLAlchemy's
    asyncio layer runs its sync code in, out to the code that awaited it."""
    frame: FrameType | None = sys._getframe(1)
    greenlets = sys.modules.get("greenlet")
    current = greenlets.getcurrent() if greenlets is not None else None
    while True:
        while frame is not None:
            yield frame
            frame = frame.f_back
        current = getattr(current, "parent", None)
        if current is None:
            return
        frame = getattr(current, "gr_frame", None)


def user_frame(*, awaited: bool = False) -> FrameType | None:
    """The first frame of the test's or the app's own code on the way here (not
    SQLAlchemy's, the plugin's, pytest's or Python's own: ``contextlib``, ``threading``).

    :func:`frames` and :func:`user_code`, unrolled. Each frame looked at costs about
    0.3 us (Python 3.11 makes a frame object of it), so with ``awaited``, when this runs
    in a greenlet SQLAlchemy's asyncio layer started, the walk starts where that greenlet
    was awaited, skipping the ~15 frames of SQLAlchemy's inside it (measured: 8 us for an
    ``AsyncSession`` write, 3 us with ``awaited``). Code of the user's that runs in that
    greenlet (``run_sync(fn)``) is then reported at the ``await``.
    """
    frame: FrameType | None = sys._getframe(1)
    greenlets = sys.modules.get("greenlet")
    current = greenlets.getcurrent() if greenlets is not None else None
    if awaited and current is not None and current.parent is not None:
        current = current.parent
        frame = current.gr_frame
    known = _known
    while True:
        while frame is not None:
            filename = frame.f_code.co_filename
            answer = known.get(filename)
            if answer is None:
                answer = user_code(filename)
            if answer:
                return frame
            frame = frame.f_back
        current = getattr(current, "parent", None)
        if current is None:
            return None
        frame = getattr(current, "gr_frame", None)


Place = tuple[str, int, str]
"""File, line and function of a frame, as they were when it was looked at."""


def place(*, awaited: bool = False) -> Place | None:
    """Where :func:`user_frame` is now (None: no frame of the user's on the way here)."""
    frame = user_frame(awaited=awaited)
    return None if frame is None else _place_of(frame)


def describe(where: Place | None) -> str:
    """``file:line (function)``."""
    if where is None:
        return "an unknown place"
    filename, line, function = where
    return f"{filename}:{line} ({function})"


def caller() -> str:
    """The user's line on the way here (a connection being made), as ``file:line (function)``;
    in a thread that runs none of the user's code, where the test was at that moment."""
    where = place()
    if where is not None:
        return describe(where)
    found = _where_the_test_is()
    if found is not None:
        name = threading.current_thread().name
        return (
            f"{describe(_place_of(found))}, where the test was when its thread {name!r} connected"
        )
    return "an unknown place (no frame of a test, a fixture or the app led there)"


def _place_of(frame: FrameType) -> Place:
    return (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)


def _where_the_test_is() -> FrameType | None:
    """The innermost user frame of the thread running pytest (not this one), or of the
    coroutine its event loop is running the test in."""
    me = threading.get_ident()
    for ident, top in sys._current_frames().items():
        if ident == me:
            continue
        stack = list(_stack(top))
        if not any("/_pytest/" in f.f_code.co_filename.replace("\\", "/") for f in stack):
            continue
        for frame in stack:
            if user_code(frame.f_code.co_filename):
                return frame
        for frame in stack:
            loop = frame.f_locals.get("self") if frame.f_code.co_name == "_run_once" else None
            if isinstance(loop, asyncio.AbstractEventLoop):
                return _awaiting(loop)
    return None


def _stack(top: FrameType) -> Iterator[FrameType]:
    frame: FrameType | None = top
    while frame is not None:
        yield frame
        frame = frame.f_back


def _awaiting(loop: asyncio.AbstractEventLoop) -> FrameType | None:
    """The innermost user frame among the suspended coroutines of ``loop``'s tasks (read
    from another thread: a task set that changes meanwhile gives up)."""
    with contextlib.suppress(Exception):
        for task in list(asyncio.all_tasks(loop)):
            for frame in reversed(task.get_stack()):
                if user_code(frame.f_code.co_filename):
                    return frame
    return None


def fixture_running() -> str | None:
    """The fixture being set up or torn down on the way here, described (None: the test
    itself, or a thread of its, as far as can be told).

    Read from pytest's own frames (``pytest_fixture_setup(fixturedef, request)``,
    ``FixtureDef.finish``): nothing is recorded while fixtures run, so it costs nothing
    until it is asked."""
    for frame in frames():
        code = frame.f_code
        path = code.co_filename.replace("\\", "/")
        if path.endswith("/_pytest/python.py") and code.co_name == "pytest_pyfunc_call":
            return None
        if path.endswith("/_pytest/fixtures.py"):
            if code.co_name == "pytest_fixture_setup":
                phase, definition = "set up for", frame.f_locals.get("fixturedef")
            elif code.co_name == "finish":
                phase, definition = "torn down after", frame.f_locals.get("self")
            else:
                phase, definition = "", None
            name = getattr(definition, "argname", None)
            if isinstance(name, str):
                scope = getattr(definition, "scope", "function")
                return f"the {scope}-scoped fixture {name!r} ({phase} this test)"
    return None
