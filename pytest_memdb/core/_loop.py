"""Run a coroutine to completion from synchronous code, whatever loop is around.

The plugin's fixtures are synchronous on purpose: an async fixture runs in the
loop of its ``loop_scope``, and a suite that mixes function, module and session
loops (or anyio) would then meet "attached to a different loop". The objects we
hand out (aiosqlite connections, SQLAlchemy async engines without a waiting
pool) are not tied to a loop, so set-up and clean-up can run on a private loop.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the plugin's private event loop and return its result.

    Never touches the thread's *current* loop (pytest-asyncio and anyio own it).
    When a loop is already running in this thread, the coroutine runs on a
    short-lived helper thread instead, since a loop cannot be nested.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_private(coro)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = _run_private(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    helper = threading.Thread(target=target, name="pytest-memdb-run-sync")
    helper.start()
    helper.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


_lock = threading.Lock()
_private: asyncio.AbstractEventLoop | None = None


def _run_private(coro: Coroutine[Any, Any, T]) -> T:
    """On the one private loop, made once (a new loop costs about 100 us per call); on a
    loop of its own while another thread uses that one."""
    global _private
    if not _lock.acquire(blocking=False):
        return _run_on_new_loop(coro)
    try:
        if _private is None or _private.is_closed():
            _private = asyncio.new_event_loop()
            atexit.register(close_private_loop)  # outside pytest (InMemoryDatabase.close)
        return _private.run_until_complete(coro)
    finally:
        _lock.release()


def _run_on_new_loop(coro: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def close_private_loop() -> None:
    """Close the private loop (at the end of the session), after what is still due on it."""
    global _private
    with _lock:
        loop, _private = _private, None
    if loop is not None and not loop.is_closed():
        try:
            loop.run_until_complete(asyncio.sleep(0))  # callbacks worker threads queued
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
