"""The snapshot worker: takes the registry views' snapshots every ``every`` sealed events. I/O.

One worker leads (``eventlog.leadership``, the loop every singleton role runs); others
stand by. Each round it reads the sealed head, restores the newest snapshot into scratch
tables (``projections.time_travel.folded_views``), folds on to each due position and
stores a snapshot there (``projections.snapshots.save_snapshot``, one transaction per
snapshot), then prunes what the retention rule no longer keeps.

Only sealed positions are snapshotted: the fold reads ``event_log``, which holds nothing
else, and a due position is at most the sealed head. A crash mid-round loses at most the
snapshot being written (its transaction rolls back); the scratch tables are temporary,
so they go with the session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from itertools import pairwise

import asyncpg

from eventlog.leadership import Leadership, Term
from eventlog.log import head_position
from eventlog.waiting import sleep_or_stop
from projections.base import Projection
from projections.snapshots import (
    due_positions,
    nearest_snapshots,
    prune_snapshots,
    save_snapshot,
)
from projections.time_travel import fold_more, folded_views

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


async def take_due_snapshots(
    conn: asyncpg.Connection,
    projections: Sequence[Projection],
    *,
    every: int,
    keep: int,
    thin: int,
    batch: int = 2000,
) -> list[int]:
    """Take the snapshots due at the sealed head (see ``due_positions``) and prune; return
    the positions taken. Runs outside a transaction (the fold runs short ones)."""
    head = await head_position(conn)
    starts = await nearest_snapshots(conn, projections, head)
    due = due_positions(head, min(starts.values(), default=0), every=every, keep=keep, thin=thin)
    if due:
        async with folded_views(conn, projections, due[0], batch=batch, snapshots=True) as names:
            await save_snapshot(conn, projections, names, due[0])
            for before, position in pairwise(due):
                await fold_more(
                    conn, projections, names, dict.fromkeys(names, before), position, batch=batch
                )
                await save_snapshot(conn, projections, names, position)
        log.info("view snapshots taken at %s", ", ".join(map(str, due)))
    await prune_snapshots(conn, projections, every=every, keep=keep, thin=thin)
    return due


def snapshot_lock_key(schema: str) -> str:
    """The advisory lock the snapshot worker's leader holds."""
    return f"modelreg:{schema}:view-snapshots"


class SnapshotWorker:
    """Keeps the registry views' snapshots due at the head: one leader, standbys."""

    def __init__(
        self,
        connect: Connect,
        schema: str,
        projections: Sequence[Projection],
        *,
        every: int,
        keep: int,
        thin: int,
        poll_interval: float = 2.0,
        standby_interval: float = 1.0,
    ) -> None:
        self.projections = list(projections)
        self.every = every
        self.keep = keep
        self.thin = thin
        # Polling is enough: a snapshot a few seconds late only costs the reads of those
        # seconds a few more events to fold. (Below the leadership lease, so an idle
        # leader keeps its session.)
        self.poll_interval = poll_interval
        self._leadership = Leadership(
            connect,
            snapshot_lock_key(schema),
            role="view snapshots",
            standby_interval=standby_interval,
        )

    @property
    def leading(self) -> bool:
        return self._leadership.is_leader

    async def run(self, stop: asyncio.Event | None = None) -> None:
        await self._leadership.run(self._keep_due, stop or asyncio.Event())

    async def _keep_due(self, term: Term) -> None:
        while not term.ended.is_set():
            await take_due_snapshots(
                term.conn, self.projections, every=self.every, keep=self.keep, thin=self.thin
            )
            await sleep_or_stop(term.ended, self.poll_interval)
