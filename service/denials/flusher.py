"""The loop that writes recorded refusals to the ``denials`` table and deletes the ones past
the retention. I/O: Postgres.

A write that fails (Postgres restarting) gives its tallies back to the recorder, which stays
bounded, so refusals made during an outage are written once the database is back. On
shutdown the loop writes what is left once more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg

from service.denials import table
from service.denials.recorder import DenialRecorder

log = logging.getLogger(__name__)

PRUNE_EVERY = timedelta(hours=1)


class DenialFlusher:
    def __init__(
        self,
        recorder: DenialRecorder,
        pool: asyncpg.Pool,
        *,
        retention: timedelta,
        now: Callable[[], datetime],
        interval: float = 1.0,
    ) -> None:
        self.recorder = recorder
        self.pool = pool
        self.retention = retention
        self.now = now
        self.interval = interval
        self._pruned_at: datetime | None = None
        self._lock = asyncio.Lock()

    async def flush(self) -> None:
        """Write what the recorder holds now (the audit route calls this before it reads, so a
        refusal this process made is visible to the next query at once)."""
        async with self._lock:
            taken = self.recorder.take()
            if not taken:
                return
            try:
                await table.write(self.pool, taken)
            except BaseException:
                self.recorder.give_back(taken)
                raise

    async def prune(self) -> None:
        now = self.now()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        removed = await table.prune(self.pool, now - self.retention)
        self._pruned_at = now
        if removed:
            log.info("denials: %d row(s) past the %s retention deleted", removed, self.retention)

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.flush()
                    await self.prune()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("denials: cannot write refusals yet (%s); kept for later", exc)
                await asyncio.sleep(self.interval)
        finally:
            # Stopping: what was refused since the last write is written once more (bounded).
            try:
                await asyncio.wait_for(self.flush(), timeout=5.0)
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - best effort
                log.warning(
                    "denials: %d refusal(s) not written at shutdown: %s", len(self.recorder), exc
                )
