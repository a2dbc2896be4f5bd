"""Run a coroutine to completion from synchronous code, whatever loop is around.

The plugin's fixtures are synchronous on purpose: an async fixture runs in the
loop of its ``loop_scope``, and a suite that mixes function, module and session
loops (or anyio) would then meet "attached to a different loop". The objects we
hand out (aiosqlite connections, SQLAlchemy async engines without a waiting
pool) are not tied to a loop, so set-up and clean-up can run on a private loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a private event loop and return its result.

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


def _run_private(coro: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
