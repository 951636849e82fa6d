"""Wait on a condition, never on the clock.

A test that sleeps a fixed time and then looks passes on an idle machine and fails on a
loaded one. These poll the condition instead and fail with ``what`` only when it does not
hold within ``timeout``: a generous deadline costs nothing when the condition is met early.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

# Long enough for a loaded 2-core box; the per-test timeout (pyproject) is the outer bound.
DEFAULT_TIMEOUT = 60.0
INTERVAL = 0.01


async def eventually(
    condition: Callable[[], Awaitable[object] | object],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    interval: float = INTERVAL,
) -> None:
    """Poll ``condition`` (plain or async) until it is truthy; fail after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"{what}: not reached in {timeout} s"
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], object],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    interval: float = 0.05,
) -> None:
    """The same for code with no event loop (subprocesses, log files)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout} s"
        time.sleep(interval)
