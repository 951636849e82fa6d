"""A randomized history: many writers, random aborts, sealers killed and restarted.

Afterwards the invariants of the store must hold: every committed event is in the log
exactly once, no aborted event is, per-stream order holds in the log, positions are
contiguous and both hash chains verify.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from collections.abc import Callable

import asyncpg
import pytest

from eventlog.log import head_position
from eventlog.sealer import Sealer
from eventlog.store import EventStore
from eventlog.verify import verify
from events.errors import ConcurrencyError
from tests.support.database import Database
from tests.support.sample_events import CODEC, META, notes
from tests.support.waiting import eventually

WRITERS = 8
OPERATIONS = 40
STREAMS = 12


@pytest.mark.slow
async def test_a_randomized_history_keeps_every_invariant(db: Database) -> None:
    rng = random.Random(20261128)
    store = EventStore(db.pool, CODEC)
    committed: set[uuid.UUID] = set()
    aborted: set[uuid.UUID] = set()
    stop = asyncio.Event()
    disruptions = 0

    async def writer(w: int) -> None:
        conn = await db.connect()
        for op in range(OPERATIONS):
            stream = f"r:{rng.randrange(STREAMS)}"
            batch = [uuid.uuid4() for _ in range(rng.randint(1, 4))]
            texts = [f"{w}.{op}.{i}" for i in range(len(batch))]
            abort = rng.random() < 0.25
            for _attempt in range(50):
                version = await store.stream_version(stream)
                tx = conn.transaction()
                await tx.start()
                try:
                    # Announce the append and hold its xid while we dawdle.
                    await conn.execute("SELECT begin_append()")
                    await asyncio.sleep(rng.random() * 0.01)  # random interleaving, not a wait
                    await store.append(
                        stream, version, notes(*texts), META, event_ids=batch, conn=conn
                    )
                    await asyncio.sleep(rng.random() * 0.005)
                except (ConcurrencyError, asyncpg.SerializationError):
                    # a conflict, or the xid guard: re-read and retry with a new transaction
                    await tx.rollback()
                    continue
                if abort:
                    await tx.rollback()
                    aborted.update(batch)
                else:
                    await tx.commit()
                    committed.update(batch)
                break
            else:
                raise AssertionError("a writer could not append in 50 attempts")

    async def sealers() -> None:
        # Two sealers compete; a chaos loop kills the leader's session or restarts a task.
        instances = [
            Sealer(lambda: db.connect("sealer"), db.schema, standby_interval=0.02) for _ in range(2)
        ]
        local_stop = asyncio.Event()
        tasks = [asyncio.create_task(s.run(local_stop)) for s in instances]
        admin = await db.admin()
        nonlocal disruptions
        while not stop.is_set():
            await asyncio.sleep(rng.random() * 0.1)  # chaos at random moments, not a wait
            if rng.random() < 0.5:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'sealer' AND datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                )
            else:
                victim = rng.randrange(len(tasks))
                tasks[victim].cancel()
                await asyncio.gather(tasks[victim], return_exceptions=True)
                tasks[victim] = asyncio.create_task(instances[victim].run(local_stop))
            disruptions += 1
        local_stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    chaos = asyncio.create_task(sealers())
    bystanders = [asyncio.create_task(_bystander(db, rng, stop)) for _ in range(2)]
    await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    # the chaos goes on until it has disrupted the sealers a few times and they sealed
    # through it, however quickly the writers finished
    await eventually(
        lambda: _sealed_through(db, lambda: disruptions > 5),
        what="sealing through several disruptions",
    )
    stop.set()
    await chaos
    await asyncio.gather(*bystanders)

    final = Sealer(db.connect, db.schema)
    await final.seal_all(await db.connect())

    rows = await db.pool.fetch(
        "SELECT l.log_position, e.event_id, e.stream_id, e.stream_position"
        " FROM event_log l JOIN events e USING (seq) ORDER BY l.log_position"
    )
    logged = [r["event_id"] for r in rows]
    assert [r["log_position"] for r in rows] == list(range(1, len(rows) + 1)), (
        "positions are contiguous"
    )
    assert len(logged) == len(set(logged)), "no event is logged twice"
    assert set(logged) == committed, "every committed event is logged, and nothing else"
    assert not aborted & set(logged)
    per_stream: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        per_stream[r["stream_id"]].append(r["stream_position"])
    for stream, positions in per_stream.items():
        assert positions == list(range(1, len(positions) + 1)), f"{stream} is in stream order"
    report = await verify(await db.connect())
    assert report.ok, report.first_break
    assert len(committed) > 100 and len(aborted) > 10


async def _bystander(db: Database, rng: random.Random, stop: asyncio.Event) -> None:
    """Transactions that hold an xid but append nothing (a projection's batch, another
    job): the sealer's horizon must neither wait for them nor seal past an appender."""
    conn = await db.connect()
    while not stop.is_set():
        async with conn.transaction():
            await conn.fetchval("SELECT pg_current_xact_id()")
            await asyncio.sleep(rng.random() * 0.02)  # random interleaving, not a wait


async def _sealed_through(db: Database, disrupted: Callable[[], bool]) -> bool:
    return disrupted() and await head_position(db.pool) > 0
