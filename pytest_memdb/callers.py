"""Which line of the user's code made a connection: for ``memdb_strict`` and ``memdb_takeover``.

Standard library only (``greenlet`` if it is loaded). Read from the interpreter's frames only
when a message needs it, so it costs nothing until then. The user's line is the innermost
frame of the connecting thread that is not SQLAlchemy's, the plugin's, pytest's, Python's
own (``contextlib``: ``with engine.begin()`` connects in its ``__enter__``) or generated
code (SQLAlchemy's ``<sqlalchemy generated _go() wrapper ...>``), looking through the
greenlets SQLAlchemy's asyncio layer runs its sync code in. A connection made in a thread
that runs none of the user's code (``Thread(target=engine.connect)``,
``loop.run_in_executor(None, engine.connect)``, ``asyncio.to_thread``) is placed where the
test was at that moment: the thread running pytest, or, when that thread is inside an event
loop, the coroutine of the test's task that waits.
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
"""Python's own modules (``contextlib``, ``threading``, ``concurrent.futures``...)."""


def user_code(filename: str) -> bool:
    """Whether a frame of ``filename`` is the user's (a test, a fixture, the app, a library
    the app uses) rather than the way to the connect."""
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


def describe(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} ({code.co_name})"


def caller() -> str:
    """The user's line that made the connection being made, as ``file:line (function)``."""
    for frame in frames():
        if user_code(frame.f_code.co_filename):
            return describe(frame)
    found = _where_the_test_is()
    if found is not None:
        name = threading.current_thread().name
        return f"{describe(found)}, where the test was when its thread {name!r} connected"
    return "an unknown place (no frame of a test, a fixture or the app led there)"


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
    until a message needs it."""
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
