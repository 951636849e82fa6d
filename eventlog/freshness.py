"""Read-your-writes: wait, bounded, until projections have applied a log position. I/O.

A write answers with the log position of its last event; a read that passes it as
``min_position`` waits here until every projection it reads has a live checkpoint at or
past it, or fails with ``NotYetVisibleError`` after the timeout: never silently stale.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg


class NotYetVisibleError(TimeoutError):
    def __init__(self, position: int, reached: int, timeout: float) -> None:
        super().__init__(f"views reached position {reached}, not {position}, within {timeout:g}s")
        self.position = position
        self.reached = reached
        self.timeout = timeout


async def live_position(conn: asyncpg.Connection | asyncpg.Pool, projections: Sequence[str]) -> int:
    """The position every one of ``projections`` has reached (the least of them)."""
    value: int | None = await conn.fetchval(
        "SELECT min(log_position) FROM projection_checkpoints WHERE status = 'live' AND projection = ANY ($1::text[])",
        list(projections),
    )
    return value or 0


async def wait_for_position(
    pool: asyncpg.Pool,
    position: int,
    projections: Sequence[str],
    *,
    timeout: float = 5.0,
    interval: float = 0.005,
) -> int:
    """Return once ``projections`` reached ``position``; raise ``NotYetVisibleError`` otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = interval
    while True:
        reached = await live_position(pool, projections)
        if reached >= position:
            return reached
        if loop.time() >= deadline:
            raise NotYetVisibleError(position, reached, timeout)
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 1.5, 0.05)
