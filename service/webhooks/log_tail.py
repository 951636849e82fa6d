"""The recent end of the sealed log, read once for every subscription. I/O: Postgres.

Every runner reads the log after its own cursor; caught up, they all want the same few
events each time the sealer signals. The tail keeps the latest events in memory (log
positions are contiguous, so a position is an index) and fetches what is new once, under
a lock, for all of them; a runner that is far behind reads the log itself.
"""

from __future__ import annotations

import asyncio

import asyncpg

from eventlog.log import LoggedEvent, read_log_as_stored

Stored = tuple[LoggedEvent, bytes]


class LogTail:
    def __init__(self, pool: asyncpg.Pool, capacity: int = 20_000) -> None:
        self.pool = pool
        self.capacity = capacity
        self._events: list[Stored] = []
        self._lock = asyncio.Lock()

    def _first(self) -> int:
        return self._events[0][0].log_position if self._events else 0

    def _last(self) -> int:
        return self._events[-1][0].log_position if self._events else 0

    def _slice(self, after: int, limit: int) -> list[Stored]:
        if not self._events or not self._first() - 1 <= after < self._last():
            return []
        start = after - self._first() + 1
        return self._events[start : start + limit]

    async def read(self, after: int, limit: int) -> list[Stored]:
        """Up to ``limit`` sealed events after position ``after``, in log order."""
        found = self._slice(after, limit)
        if found:
            return found
        async with self._lock:
            found = self._slice(after, limit)  # fetched by another runner meanwhile
            if found:
                return found
            fetched = await read_log_as_stored(self.pool, after, limit)
            if self._events and after < self._last():
                return fetched  # behind the window (a backlog, a new subscription): not kept
            if after > self._last():
                self._events = []  # the window fell behind its readers: start it again here
            self._events.extend(fetched)
            del self._events[: max(0, len(self._events) - self.capacity)]
            return fetched
