"""The newest stretch of the sealed log, read once and shared by the projection leaders of
one worker. I/O: Postgres.

Every seal wakes all seven leaders, and each used to read the same new events from the
log. The log is immutable and its positions contiguous, so one read of ``(a, b]`` answers
every leader asking for any part of it: the first to ask reads, the others wait for it
and filter the events they handle from memory. A leader that has fallen behind what the
tail holds (a slow view, a rebuild) reads the log itself, as before.
"""

from __future__ import annotations

import asyncio

import asyncpg

from eventlog.log import LoggedEvent, read_log


class LogTail:
    def __init__(self, capacity: int = 5000) -> None:
        self.capacity = capacity
        self._events: list[LoggedEvent] = []  # positions first + 1 .. first + len, no gaps
        self._first = 0
        self._lock = asyncio.Lock()
        self.reads = 0  # log queries made for the tail, for tests and curiosity

    @property
    def span(self) -> tuple[int, int]:
        """Positions ``(first, last]`` the tail holds."""
        return self._first, self._first + len(self._events)

    async def read(
        self,
        conn: asyncpg.Connection,
        after: int,
        limit: int,
        *,
        up_to: int,
        types: frozenset[str] | None = None,
    ) -> list[LoggedEvent]:
        """What ``read_log(conn, after, limit, up_to=up_to, types=types)`` answers."""
        if up_to <= after:
            return []
        if up_to - after > self.capacity:
            # More than the tail may hold (a leader catching up on a backlog): read a batch.
            return await read_log(conn, after, limit, up_to=up_to, types=types)
        window: list[LoggedEvent] | None = None
        async with self._lock:
            last = self.span[1]
            if not self._events or after > last:
                self._events, self._first = [], after  # start afresh where this leader stands
            if after >= self._first:
                # Trimming keeps the last ``capacity`` events, so ``after`` stays inside.
                await self._extend(conn, up_to)
                window = self._events[after - self._first : up_to - self._first]
        if window is None:
            # Behind what the tail holds (a slow view): this leader reads for itself.
            return await read_log(conn, after, limit, up_to=up_to, types=types)
        if types is not None:
            window = [e for e in window if e.event_type in types]
        return window[:limit]

    async def _extend(self, conn: asyncpg.Connection, up_to: int) -> None:
        while self._first + len(self._events) < up_to:
            last = self._first + len(self._events)
            batch = await read_log(conn, last, min(up_to - last, self.capacity), up_to=up_to)
            self.reads += 1
            if not batch:
                raise RuntimeError(f"the sealed log has no events after {last} up to {up_to}")
            self._events.extend(batch)
        excess = len(self._events) - self.capacity
        if excess > 0:
            del self._events[:excess]
            self._first += excess
