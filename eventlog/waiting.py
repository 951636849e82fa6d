"""How the background loops (sealer, projection leaders, relay, consumers) wait: for a
wake-up, a stop, or a timeout, whichever comes first. No I/O."""

from __future__ import annotations

import asyncio
import contextlib


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def wake_or_stop(wake: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    """Return when ``wake`` or ``stop`` is set, or after ``timeout``; leave both as they are."""
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()


class Bell:
    """Rung when something may have moved (a NOTIFY heard, a local hand-over), so waiters
    look once instead of polling on a timer. While nobody rings (the LISTEN is down, or
    nothing happens), waiters fall back to their timers."""

    def __init__(self) -> None:
        self._rung = asyncio.Event()
        self._last_rung = -1e9

    def notify(self) -> None:
        # Replace, then set: waiters hold the event of the moment they looked, so a ring
        # that lands between their look and their wait still wakes them.
        rung, self._rung = self._rung, asyncio.Event()
        self._last_rung = asyncio.get_running_loop().time()
        rung.set()

    def current(self) -> asyncio.Event:
        return self._rung

    def ringing(self) -> bool:
        """Has it rung lately? Then the LISTEN is up, and its wake-ups can be relied on."""
        return asyncio.get_running_loop().time() - self._last_rung < 1.0
