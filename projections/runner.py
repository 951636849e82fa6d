"""The projection worker: folds the sealed log into every projection's tables. I/O.

Per projection and generation, a batch is applied and the checkpoint moved in ONE
transaction, the checkpoint with a compare-and-set on its old position: a crash between
the two loses or doubles nothing (the transaction is all or nothing), and a second worker
that somehow ran the same batch would find the checkpoint moved and roll back.

One worker leads each projection (``eventlog.leadership``); others stand by. The leader
wakes on the sealer's NOTIFY and polls as a fallback, so a lost LISTEN connection slows
it down but never stops it. The leaders of one worker woken together advance their live
views in one joint round, one transaction for all (``projections.rounds``); a view being
rebuilt, and every view after a joint round failed, runs rounds of its own.

Rebuild: ``start_rebuild`` creates a new generation (fresh tables, checkpoint 0,
status ``building``). The leader fills it in large batches alongside the live one, which
keeps serving; once the new generation reaches the live position, the views switch to
it and the old tables are dropped, all in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import asyncpg

from eventlog.connections import close_quietly
from eventlog.leadership import Leadership, Term
from eventlog.listener import Listener
from eventlog.log import head_position, read_log
from eventlog.waiting import wake_or_stop
from projections.base import Projection
from projections.rounds import CheckpointMovedError, Generation, JointRounds, Progress
from projections.tail import LogTail
from projections.time_travel import drop_stale_scratch_tables

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


async def generations(conn: asyncpg.Connection, projection: str) -> list[Generation]:
    rows = await conn.fetch(
        "SELECT projection, generation, code_version, status, log_position FROM projection_checkpoints"
        " WHERE projection = $1 AND status <> 'retired' ORDER BY generation",
        projection,
    )
    return [Generation(*r) for r in rows]


async def _create_generation(
    conn: asyncpg.Connection, projection: Projection, generation: int, status: str
) -> None:
    for statement in projection.create_statements(projection.generation_names(generation)):
        await conn.execute(statement)
    await conn.execute(
        "INSERT INTO projection_checkpoints (projection, generation, code_version, status) VALUES ($1, $2, $3, $4)",
        projection.name,
        generation,
        projection.version,
        status,
    )


async def _point_views(conn: asyncpg.Connection, projection: Projection, generation: int) -> None:
    names = projection.generation_names(generation)
    for table in projection.tables:
        await conn.execute(f"DROP VIEW IF EXISTS {table.name}")
        await conn.execute(f"CREATE VIEW {table.name} AS SELECT * FROM {names[table.name]}")


async def ensure_projection(conn: asyncpg.Connection, projection: Projection) -> None:
    """Create generation 1 on first start; start a rebuild when the code's version is newer."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"ensure:{projection.name}"
        )
        current = await generations(conn, projection.name)
        if not current:
            await _create_generation(conn, projection, 1, "live")
            await _point_views(conn, projection, 1)
            return
    live = next(g for g in current if g.status == "live")
    building = [g for g in current if g.status == "building"]
    if live.code_version < projection.version and not building:
        log.info(
            "projection %s: code version %d > %d, rebuilding",
            projection.name,
            projection.version,
            live.code_version,
        )
        await start_rebuild(conn, projection)


async def start_rebuild(conn: asyncpg.Connection, projection: Projection) -> int:
    """Create a new generation to be filled from position 0; return its number.

    If a rebuild is already under way, return that generation instead of starting another.
    """
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"ensure:{projection.name}"
        )
        current = await generations(conn, projection.name)
        building = [g for g in current if g.status == "building"]
        if building:
            return building[0].generation
        latest = await conn.fetchval(
            "SELECT max(generation) FROM projection_checkpoints WHERE projection = $1",
            projection.name,
        )
        generation = int(latest or 0) + 1
        await _create_generation(conn, projection, generation, "building")
        return generation


_MOVE = (
    "UPDATE projection_checkpoints SET log_position = $1, updated_at = statement_timestamp()"
    " WHERE projection = $2 AND generation = $3 AND log_position = $4"
)


async def advance(
    conn: asyncpg.Connection,
    projection: Projection,
    generation: Generation,
    *,
    head: int,
    batch: int,
    tail: LogTail | None = None,
) -> int:
    """Apply the next batch after the generation's checkpoint (up to ``head``); return the
    new checkpoint. The view write and the checkpoint commit together or not at all.
    With a ``tail``, the events come from the log read shared with the other leaders."""
    if generation.log_position >= head:
        return generation.log_position
    if tail is not None:
        events = await tail.read(
            conn, generation.log_position, batch, up_to=head, types=projection.handles
        )
    else:
        events = await read_log(
            conn, generation.log_position, batch, up_to=head, types=projection.handles
        )
    new_position = events[-1].log_position if len(events) == batch else head
    move = (new_position, projection.name, generation.generation, generation.log_position)
    if not events:
        # Nothing this view reads: moving the checkpoint is one statement, no transaction.
        if await conn.execute(_MOVE, *move) != "UPDATE 1":
            raise CheckpointMovedError(
                f"{projection.name} g{generation.generation} moved past {generation.log_position}"
            )
        return new_position
    names = projection.generation_names(generation.generation)
    async with conn.transaction():
        # The compare-and-set goes first: it locks the checkpoint row, so a second applier
        # of the same batch waits here, then finds the position moved and writes nothing.
        if await conn.execute(_MOVE, *move) != "UPDATE 1":
            raise CheckpointMovedError(
                f"{projection.name} g{generation.generation} moved past {generation.log_position}"
            )
        await projection.apply(conn, names, events)
    return new_position


async def switch_if_caught_up(
    conn: asyncpg.Connection, projection: Projection, *, replacing_stale: bool = False
) -> bool:
    """Make a building generation live once it stands where the live one stands (or, when
    ``replacing_stale``, anywhere past it: a live generation of older code stands still)."""
    async with conn.transaction():
        rows = await conn.fetch(
            "SELECT generation, status, log_position FROM projection_checkpoints"
            " WHERE projection = $1 AND status IN ('live', 'building') ORDER BY generation FOR UPDATE",
            projection.name,
        )
        live = next((r for r in rows if r["status"] == "live"), None)
        building = next((r for r in rows if r["status"] == "building"), None)
        if live is None or building is None:
            return False
        behind = building["log_position"] < live["log_position"]
        if behind or (building["log_position"] != live["log_position"] and not replacing_stale):
            return False
        await _point_views(conn, projection, building["generation"])
        # Retire first, then promote: the one-live unique index is checked row by row, so a
        # single UPDATE swapping both fails whenever it happens to reach the building row first.
        for generation, status in (
            (live["generation"], "retired"),
            (building["generation"], "live"),
        ):
            await conn.execute(
                "UPDATE projection_checkpoints SET status = $3, updated_at = statement_timestamp()"
                " WHERE projection = $1 AND generation = $2",
                projection.name,
                generation,
                status,
            )
        for table in projection.generation_names(live["generation"]).values():
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
    log.info("projection %s: generation %d is live", projection.name, building["generation"])
    return True


# The head of the log and the projection's generations in one round trip.
_STATE = (
    "SELECT generation, code_version, status, log_position,"
    " (SELECT last_log_position FROM sealer_state WHERE id = 1) AS head"
    " FROM projection_checkpoints WHERE projection = $1 AND status <> 'retired' ORDER BY generation"
)


async def advance_generations(
    conn: asyncpg.Connection,
    projection: Projection,
    *,
    batch: int = 1000,
    rebuild_batch: int = 5000,
    tail: LogTail | None = None,
) -> Progress:
    """One round for one projection: the live generation to the head (its events from
    ``tail`` if given), then one batch of a rebuild (bounded by the live position), then
    the switch if it caught up."""
    rows = await conn.fetch(_STATE, projection.name)
    if not rows:
        return Progress(0, True)
    head: int = rows[0]["head"]
    moved = 0
    current = {
        r["status"]: Generation(
            projection.name, r["generation"], r["code_version"], r["status"], r["log_position"]
        )
        for r in rows
    }
    live = current.get("live")
    if live is None:
        return Progress(0, True)
    building = current.get("building")
    if building is not None and live.code_version < projection.version:
        # The live tables have the shape older code wrote, which this code's fold may not
        # fit (a new column): they stand still, still answering reads, while the rebuild
        # runs to the head and replaces them.
        rebuilt = await advance(conn, projection, building, head=head, batch=rebuild_batch)
        if rebuilt == head:
            await switch_if_caught_up(conn, projection, replacing_stale=True)
        return Progress(rebuilt - building.log_position, rebuilt == head)
    position = await advance(conn, projection, live, head=head, batch=batch, tail=tail)
    moved += position - live.log_position
    caught_up = position == head
    if building is not None:
        rebuilt = await advance(conn, projection, building, head=position, batch=rebuild_batch)
        moved += rebuilt - building.log_position
        if rebuilt == position:
            await switch_if_caught_up(conn, projection)
        else:
            caught_up = False
    return Progress(moved, caught_up)


async def step(
    conn: asyncpg.Connection,
    projection: Projection,
    *,
    batch: int = 1000,
    rebuild_batch: int = 5000,
) -> int:
    """One round (see ``advance_generations``); returns how many positions moved, so
    callers know whether to go again at once."""
    return (
        await advance_generations(conn, projection, batch=batch, rebuild_batch=rebuild_batch)
    ).moved


def projection_lock_key(schema: str, projection: str) -> str:
    """The advisory lock a projection's leader holds (the CLI's rebuild takes it too)."""
    return f"modelreg:{schema}:projection:{projection}"


class ProjectionWorker:
    """Keeps projections current: one leader loop per projection, each on its own
    connection; one LISTEN connection wakes them all, and each polls as a fallback. The
    live views woken together advance in one joint round: a view whose batch is slow to
    apply holds the others' batch until it commits, a price paid for one transaction per
    seal instead of one per view. A rebuild runs in its own leader's rounds and never
    delays the others."""

    def __init__(
        self,
        connect: Connect,
        schema: str,
        projections: Sequence[Projection],
        *,
        channel: str,
        batch: int = 1000,
        rebuild_batch: int = 2000,
        poll_interval: float = 0.5,
        coalesce: float = 0.003,
        standby_interval: float = 1.0,
        on_progress: Callable[[], None] | None = None,
        joint: bool = True,
    ) -> None:
        """``joint``: advance the live views woken together in one transaction
        (``projections.rounds``); without it, each in its own."""
        self._connect = connect
        self.schema = schema
        self.projections = list(projections)
        self.channel = channel
        self.batch = batch
        self.rebuild_batch = rebuild_batch
        self.poll_interval = poll_interval
        self.coalesce = coalesce
        self._on_progress = on_progress
        self._wakes = {p.name: asyncio.Event() for p in self.projections}
        # One read of each new stretch of the log serves every leader of this worker.
        self.tail = LogTail(capacity=max(batch * 5, 1000))
        self.rounds = JointRounds(batch=batch, tail=self.tail, gather=coalesce) if joint else None
        self._listener = Listener(connect, channel, self.wake)
        self._leaderships = {
            p.name: Leadership(
                connect,
                projection_lock_key(schema, p.name),
                role=f"projection {p.name}",
                standby_interval=standby_interval,
                # Another worker moved the checkpoint: it leads (or led), so this one stands by.
                stand_down_on=(CheckpointMovedError,),
            )
            for p in self.projections
        }

    @property
    def leading(self) -> set[str]:
        """The projections this worker leads right now."""
        return {name for name, held in self._leaderships.items() if held.is_leader}

    @property
    def listening(self) -> bool:
        return self._listener.listening

    def wake(self, *_: object) -> None:
        for event in self._wakes.values():
            event.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        conn = await self._connect()
        try:
            for projection in self.projections:
                await ensure_projection(conn, projection)
            await drop_stale_scratch_tables(conn)
        finally:
            await close_quietly(conn)
        self._listener.start()
        try:
            await asyncio.gather(*(self._lead_forever(p, stop) for p in self.projections))
        finally:
            await self._listener.close()

    async def _lead_forever(self, projection: Projection, stop: asyncio.Event) -> None:
        await self._leaderships[projection.name].run(partial(self._keep_current, projection), stop)

    async def _keep_current(self, projection: Projection, term: Term) -> None:
        wake = self._wakes[projection.name]
        while not term.ended.is_set():
            wake.clear()
            progress = None
            if self.rounds is not None:
                progress = await self.rounds.advance(projection, term)
            if progress is None:
                progress = await advance_generations(
                    term.conn,
                    projection,
                    batch=self.batch,
                    rebuild_batch=self.rebuild_batch,
                    tail=self.tail,
                )
            if progress.moved and self._on_progress is not None:
                self._on_progress()
            if not progress.caught_up:
                continue
            # Caught up with the head this round read: a seal that landed meanwhile has
            # set the wake again, so there is no need for another round to find out.
            # Without a LISTEN connection, poll faster: wake-ups cannot arrive.
            await wake_or_stop(
                wake, term.ended, self.poll_interval if self.listening else self.poll_interval / 5
            )
            if wake.is_set() and self.coalesce and self.rounds is None:
                # Under load, let a few more seals land so one batch carries them all (joint
                # rounds wait so once for all their leaders).
                await asyncio.sleep(self.coalesce)


@dataclass(frozen=True, slots=True)
class Status:
    projection: str
    generation: int
    status: str
    code_version: int
    log_position: int
    head: int
    lag_events: int
    lag_seconds: float
    updated_at: datetime


async def projection_status(conn: asyncpg.Connection) -> list[Status]:
    """Every projection's generations: position, lag behind the head (events, seconds)."""
    head = await head_position(conn)
    head_time = await conn.fetchval("SELECT sealed_at FROM event_log WHERE log_position = $1", head)
    rows = await conn.fetch(
        "SELECT c.projection, c.generation, c.status, c.code_version, c.log_position, c.updated_at,"
        " l.sealed_at FROM projection_checkpoints c"
        " LEFT JOIN event_log l ON l.log_position = c.log_position"
        " WHERE c.status <> 'retired' ORDER BY c.projection, c.generation"
    )
    result = []
    for r in rows:
        behind = 0.0
        if head_time is not None and r["log_position"] < head:
            at = r["sealed_at"] or (await conn.fetchval("SELECT min(sealed_at) FROM event_log"))
            # Seconds of sealed history not yet applied: how stale the view is.
            behind = max(0.0, (head_time - at).total_seconds()) if at else 0.0
        result.append(
            Status(
                r["projection"],
                r["generation"],
                r["status"],
                r["code_version"],
                r["log_position"],
                head,
                head - r["log_position"],
                behind,
                r["updated_at"],
            )
        )
    return result
