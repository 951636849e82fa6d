"""The snapshot worker: takes the registry views' snapshots every ``every`` sealed events,
or further apart as the registry grows (``projections.snapshots.spacing``). I/O.

One worker leads (``eventlog.leadership``, the loop every singleton role runs); others
stand by. Each round it reads the sealed head, folds its scratch tables on to each due
position and stores a snapshot there (``projections.snapshots.save_snapshot``, one
transaction per snapshot), then prunes what the retention rule no longer keeps.

The scratch tables (``ScratchViews``) live in the leader's session for its whole term:
the first round restores the newest snapshot into them (``projections.time_travel.
folded_views``), later rounds only fold the events since the last. Restoring copied every
row of the views back each round, about five times what storing the snapshot costs, so
a round cost two copies of the registry where it now costs one.

From the live views (``live``, as ``modelreg serve`` runs it): when one snapshot is due
and the projection worker's live views all stand at one position between that grid
position and the next, the snapshot is copied from them, at their position, in one
REPEATABLE READ transaction (a projection round commits its rows and its checkpoint
together, so what the transaction sees is the fold up to that position). The scratch
fold, a second projection of every event, is then not needed; under load it was about a
tenth of what a write cost the whole stack. Otherwise (views rebuilding, behind, or more
than one snapshot due) the scratch tables fold to the grid positions as before. Such a
snapshot stands a little past its grid position, so a read may fold up to twice the
spacing after it; retention keeps the last snapshot of each stretch of ``every * thin``
events, which on the grid is the multiple.

Only sealed positions are snapshotted: the fold reads ``event_log``, which holds nothing
else, a due position is at most the sealed head, and the live views hold only sealed
events. A crash mid-round loses at most the snapshot being written (its transaction rolls
back); the scratch tables are temporary, so they go with the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack

import asyncpg

from eventlog.leadership import Leadership, Term
from eventlog.log import head_position
from eventlog.waiting import sleep_or_stop
from projections.base import Names, Projection
from projections.snapshots import (
    due_positions,
    live_views,
    nearest_snapshots,
    prune_snapshots,
    save_snapshot,
    snapshot_rows,
    spacing,
)
from projections.time_travel import fold_more, folded_views

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class ScratchViews:
    """The views folded up to ``position`` into scratch tables of one session, kept from
    one round to the next: moving them on folds only the events in between. A fold that
    fails, or a position behind them, starts them afresh from the nearest snapshot."""

    def __init__(
        self, conn: asyncpg.Connection, projections: Sequence[Projection], *, batch: int = 2000
    ) -> None:
        self.conn = conn
        self.projections = list(projections)
        self.batch = batch
        self.position = 0
        self._names: dict[str, Names] | None = None
        self._stack = AsyncExitStack()

    async def at(self, position: int) -> dict[str, Names]:
        """The scratch tables' names, once they hold the views as of ``position``."""
        if self._names is not None and position >= self.position:
            try:
                await fold_more(
                    self.conn,
                    self.projections,
                    self._names,
                    dict.fromkeys(self._names, self.position),
                    position,
                    batch=self.batch,
                )
            except Exception:
                await self.close()  # part of the fold may have landed: start afresh
                raise
        else:
            await self.close()
            self._names = await self._stack.enter_async_context(
                # Folded, then copied into snapshots; never searched.
                folded_views(
                    self.conn,
                    self.projections,
                    position,
                    batch=self.batch,
                    snapshots=True,
                    lookup_indexes=False,
                )
            )
        self.position = position
        return self._names

    async def close(self) -> None:
        """Drop the scratch tables (quietly when the session is already gone)."""
        stack, self._stack, self._names = self._stack, AsyncExitStack(), None
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await stack.aclose()


async def take_due_snapshots(
    conn: asyncpg.Connection,
    projections: Sequence[Projection],
    *,
    every: int,
    keep: int,
    thin: int,
    batch: int = 2000,
    scratch: ScratchViews | None = None,
    rows_per_event: int | None = None,
    live: bool = False,
) -> list[int]:
    """Take the snapshots due at the sealed head (see ``due_positions``) and prune; return
    the positions taken. Runs outside a transaction (the fold runs short ones). With
    ``scratch`` (on ``conn``), the views are folded there and kept for the next round.
    With ``rows_per_event``, snapshots are spaced by the size of the last one (``spacing``).
    With ``live``, one due snapshot is taken from the live views where they stand, when
    that is past its grid position and short of the next (``_from_live_views``)."""
    head = await head_position(conn)
    starts = await nearest_snapshots(conn, projections, head)
    latest = min(starts.values(), default=0)
    gap = await _gap(conn, projections, latest, every, thin, rows_per_event)
    taken: list[int] = []
    if live:
        due = due_positions(head, latest, every=every, keep=keep, thin=thin, gap=gap)
        if len(due) == 1 and (position := await _from_live_views(conn, projections, due[0], gap)):
            taken.append(position)
            latest = position
            gap = await _gap(conn, projections, latest, every, thin, rows_per_event)
            if scratch is not None:
                # Behind this snapshot now: a later fold restores it rather than folding
                # everything since the scratch tables' own position.
                await scratch.close()
    views = scratch or ScratchViews(conn, projections, batch=batch)
    try:
        # One at a time: each snapshot taken tells how far away the next is due.
        while due := due_positions(head, latest, every=every, keep=keep, thin=thin, gap=gap):
            latest = due[0]
            await save_snapshot(conn, projections, await views.at(latest), latest)
            taken.append(latest)
            gap = await _gap(conn, projections, latest, every, thin, rows_per_event)
    finally:
        if views is not scratch:
            await views.close()
    if taken:
        log.info("view snapshots taken at %s", ", ".join(map(str, taken)))
    await prune_snapshots(conn, projections, every=every, keep=keep, thin=thin)
    return taken


async def _from_live_views(
    conn: asyncpg.Connection, projections: Sequence[Projection], due: int, gap: int
) -> int | None:
    """The snapshot due at ``due``, copied from the live views at the position they stand
    at, when that is in ``[due, due + gap)``; the position, or None (not all live, or not
    there). The live views were folded by the projection worker already: folding every
    event a second time into scratch tables was about as costly as projecting it."""
    async with conn.transaction(isolation="repeatable_read"):
        found = await live_views(conn, projections)
        if found is None or not due <= found[0] < due + gap:
            return None
        position, names = found
        await save_snapshot(conn, projections, names, position)
    return position


async def _gap(
    conn: asyncpg.Connection,
    projections: Sequence[Projection],
    latest: int,
    every: int,
    thin: int,
    rows_per_event: int | None,
) -> int:
    """Events from the snapshot at ``latest`` to the next one: by its size (``spacing``)."""
    if rows_per_event is None or not latest:
        return every
    rows = await snapshot_rows(conn, projections, latest)
    return spacing(rows, every=every, thin=thin, rows_per_event=rows_per_event)


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
        rows_per_event: int | None = None,
        live: bool = False,
        poll_interval: float = 2.0,
        standby_interval: float = 1.0,
    ) -> None:
        self.projections = list(projections)
        self.every = every
        self.keep = keep
        self.thin = thin
        self.rows_per_event = rows_per_event
        self.live = live
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
        scratch = ScratchViews(term.conn, self.projections)
        try:
            while not term.ended.is_set():
                await take_due_snapshots(
                    term.conn,
                    self.projections,
                    every=self.every,
                    keep=self.keep,
                    thin=self.thin,
                    scratch=scratch,
                    rows_per_event=self.rows_per_event,
                    live=self.live,
                )
                await sleep_or_stop(term.ended, self.poll_interval)
        finally:
            await scratch.close()
