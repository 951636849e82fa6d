"""Where a write landed in the global log, for read-your-writes. I/O: Postgres.

An append commits first and is sealed (given its log position) a few milliseconds later
by the sealer. A write response carries that position (``Modelreg-Position``), so it
waits here, bounded, for the seal; a read can then ask the views to reach it.
"""

from __future__ import annotations

import asyncio

import asyncpg


async def sealed_position(pool: asyncpg.Pool, seq: int, *, timeout: float = 5.0) -> int | None:
    """The log position of the event with ``seq``, once sealed; ``None`` after ``timeout``
    (the sealer is down or far behind: the write itself is safe and will be sealed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.001
    while True:
        position: int | None = await pool.fetchval("SELECT log_position FROM event_log WHERE seq = $1", seq)
        if position is not None:
            return position
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)
