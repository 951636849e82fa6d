"""The projection machinery: exactly-once effect, leadership, wake-ups, rebuild, time travel,
read-your-writes. Uses a small sample projection; each registry view has its own tests."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import asyncpg
import pytest

from eventlog.freshness import NotYetVisibleError, ViewsBell, views_channel, wait_for_position
from eventlog.listener import Listener
from eventlog.log import LoggedEvent, head_position
from eventlog.sealer import Sealer, sealed_channel
from eventlog.store import EventStore
from projections.base import Names, Projection
from projections.rounds import CheckpointMovedError
from projections.runner import (
    ProjectionWorker,
    advance,
    ensure_projection,
    generations,
    projection_status,
    start_rebuild,
    step,
)
from projections.time_travel import base36, drop_stale_scratch_tables, fold_as_of, folded_views
from tests.support.database import Database
from tests.support.sample_events import CODEC, META, Counted, append_notes
from tests.support.sample_projection import NOTES, checksum, note_counts
from tests.support.waiting import eventually

# Longer than any wait here: a wait that ends in time was woken by a NOTIFY, not a timer.
NO_TIMER = 600.0
# Ample for a NOTIFY to arrive on a loaded machine: it bounds a failure, not a success.
WOKEN = 60.0


@pytest.fixture
def store(db: Database) -> EventStore:
    return EventStore(db.pool, CODEC)


async def seal(db: Database) -> None:
    """Seal every event appended so far. A transaction open elsewhere (a worker starting
    up creates its tables in one) holds them back until it ends, so seal until none is left."""
    sealer, conn = Sealer(db.connect, db.schema), await db.connect()
    appended: int = await conn.fetchval("SELECT count(*) FROM events")

    async def all_sealed() -> bool:
        await sealer.seal_all(conn)
        return await head_position(conn) >= appended

    await eventually(all_sealed, what="every appended event sealed")


async def write_history(store: EventStore, db: Database, events: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    versions: dict[str, int] = {}
    for i in range(events):
        stream = f"n:{rng.randrange(7)}"
        version = versions.get(stream, 0)
        if rng.random() < 0.3:
            await store.append(stream, version, [Counted(n=rng.randrange(100))], META)
        else:
            await append_notes(store, stream, version, f"t{i}")
        versions[stream] = version + 1
    await seal(db)


def crashing(projection: Projection, after_rows: int) -> Projection:
    """The same projection, but the process "dies" after writing part of a batch."""

    async def apply(conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]) -> None:
        await projection.apply(conn, names, events[:after_rows])
        raise ConnectionResetError("simulated crash between view write and checkpoint")

    return replace_apply(projection, apply)


def replace_apply(projection: Projection, apply: object) -> Projection:
    return Projection(
        projection.name,
        projection.version,
        projection.tables,
        projection.handles,
        apply,  # type: ignore[arg-type]
    )


async def live(conn: asyncpg.Connection):
    return next(g for g in await generations(conn, "notes") if g.status == "live")


async def test_a_crash_between_view_write_and_checkpoint_loses_and_doubles_nothing(
    db: Database, store: EventStore
) -> None:
    # given 20 sealed events and a fresh projection
    await write_history(store, db, 20)
    conn = await db.connect()
    await ensure_projection(conn, NOTES)
    head = await head_position(conn)

    # when the process crashes after writing half a batch, before the checkpoint
    with pytest.raises(ConnectionResetError):
        await advance(conn, crashing(NOTES, 10), await live(conn), head=head, batch=100)

    # then nothing of the batch is visible and the checkpoint has not moved
    assert await note_counts(db.pool, NOTES.view_names()) == []
    assert (await live(conn)).log_position == 0

    # and the restart applies every event exactly once
    await advance(conn, NOTES, await live(conn), head=head, batch=100)
    reference = await _fold_checksum(db, head)
    assert await checksum(db.pool, NOTES.view_names()) == reference


async def test_a_killed_session_mid_batch_loses_and_doubles_nothing(
    db: Database, store: EventStore
) -> None:
    await write_history(store, db, 30)
    conn = await db.connect("victim")
    await ensure_projection(conn, NOTES)
    head = await head_position(conn)

    async def stuck(c: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]) -> None:
        await NOTES.apply(c, names, events)
        await c.execute("SELECT pg_sleep(600)")  # holds the batch open until it is killed

    admin = await db.admin()
    attempt = asyncio.create_task(
        advance(conn, replace_apply(NOTES, stuck), await live(conn), head=head, batch=100)
    )
    await eventually(
        lambda: admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'victim'"
            " AND state = 'active' AND query LIKE '%pg_sleep%'"
        ),
        what="the batch written and held open",
    )
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim'"
    )
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
        await attempt

    fresh = await db.connect()
    assert (await live(fresh)).log_position == 0
    await step(fresh, NOTES)
    assert await checksum(db.pool, NOTES.view_names()) == await _fold_checksum(db, head)


async def test_two_appliers_of_one_batch_cannot_both_commit(
    db: Database, store: EventStore
) -> None:
    await write_history(store, db, 10)
    a, b = await db.connect(), await db.connect()
    await ensure_projection(a, NOTES)
    head = await head_position(a)
    generation = await live(a)
    outcomes = await asyncio.gather(
        advance(a, NOTES, generation, head=head, batch=100),
        advance(b, NOTES, generation, head=head, batch=100),
        return_exceptions=True,
    )
    assert sum(isinstance(o, CheckpointMovedError) for o in outcomes) == 1
    assert await checksum(db.pool, NOTES.view_names()) == await _fold_checksum(db, head)


async def test_two_workers_run_but_only_one_leads(db: Database, store: EventStore) -> None:
    stop = asyncio.Event()
    workers = [
        ProjectionWorker(
            db.connect, db.schema, [NOTES], channel=sealed_channel(db.schema), poll_interval=0.05
        )
        for _ in range(2)
    ]
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    await write_history(store, db, 40)
    await wait_for_position(db.pool, await head_position(db.pool), ["notes"], timeout=60)
    assert sum("notes" in w.leading for w in workers) == 1
    assert await checksum(db.pool, NOTES.view_names()) == await _fold_checksum(
        db, await head_position(db.pool)
    )
    stop.set()
    await asyncio.gather(*tasks)


async def test_progress_continues_by_polling_when_the_listen_connection_is_killed(
    db: Database, store: EventStore
) -> None:
    stop = asyncio.Event()

    async def named() -> asyncpg.Connection:
        return await db.connect("projector")

    worker = ProjectionWorker(
        named, db.schema, [NOTES], channel=sealed_channel(db.schema), poll_interval=0.2
    )
    task = asyncio.create_task(worker.run(stop))
    await append_notes(store, "n:l", 0, "first")
    await seal(db)
    await wait_for_position(db.pool, 1, ["notes"], timeout=60)
    await eventually(lambda: worker.listening, what="the worker listening")

    # when every LISTEN session of the worker is killed (the leader's own session survives)
    admin = await db.admin()
    killed = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'projector-listen'"
    )
    assert killed == 1

    # then new events still reach the view
    await append_notes(store, "n:l", 1, "second")
    await seal(db)
    await wait_for_position(db.pool, 2, ["notes"], timeout=60)
    assert await note_counts(db.pool, NOTES.view_names()) == [("n:l", 2, 0, "second")]
    stop.set()
    await task


async def test_a_rebuild_mid_traffic_equals_live_and_a_fold_from_scratch(
    db: Database, store: EventStore
) -> None:
    # given a live projection over a long history
    await write_history(store, db, 300, seed=3)
    conn = await db.connect()
    await ensure_projection(conn, NOTES)
    while await step(conn, NOTES, batch=50):
        pass
    before = await checksum(db.pool, NOTES.view_names())

    # when a rebuild starts and writes keep arriving while it runs
    generation = await start_rebuild(conn, NOTES)
    assert generation == 2
    for i in range(5):
        await append_notes(store, f"n:late{i}", 0, f"late{i}")
        await seal(db)
        await step(conn, NOTES, batch=50, rebuild_batch=40)
    while await step(conn, NOTES, batch=50, rebuild_batch=40):
        pass

    # then generation 2 is live, the old tables are gone, and it equals a fresh fold
    assert [(g.generation, g.status) for g in await generations(conn, "notes")] == [(2, "live")]
    head = await head_position(conn)
    assert (await live(conn)).log_position == head
    assert await checksum(db.pool, NOTES.view_names()) == await _fold_checksum(db, head)
    assert before != await checksum(db.pool, NOTES.view_names())
    assert not await conn.fetchval("SELECT to_regclass('note_counts__g1') IS NOT NULL")


async def test_time_travel_equals_the_live_view_as_it_stood_at_each_position(
    db: Database, store: EventStore
) -> None:
    await write_history(store, db, 120, seed=5)
    conn = await db.connect()
    await ensure_projection(conn, NOTES)
    seen: list[tuple[int, str]] = []
    while await step(conn, NOTES, batch=9):
        seen.append(((await live(conn)).log_position, await checksum(db.pool, NOTES.view_names())))
    assert len(seen) > 10
    for position, expected in seen:
        assert await _fold_checksum(db, position) == expected, f"as of {position}"


async def test_time_travel_of_one_model_reads_only_its_streams(
    db: Database, store: EventStore
) -> None:
    await append_notes(store, "model:m1", 0, "mine")
    await append_notes(store, "model:m2", 0, "other")
    await append_notes(store, "metrics:m1:1", 0, "my metric")
    await append_notes(store, "metrics:m10:1", 0, "not mine: m10 is another model")
    await seal(db)
    conn = await db.connect()
    async with conn.transaction():
        names = await fold_as_of(conn, [NOTES], await head_position(conn), model_id="m1")
        rows = await note_counts(conn, names["notes"])
    assert [r[0] for r in rows] == ["metrics:m1:1", "model:m1"]


async def one_event_behind(db: Database, store: EventStore, stream: str) -> asyncpg.Connection:
    """A connection beside the sample projection, one sealed event behind the log."""
    conn = await db.connect()
    await ensure_projection(conn, NOTES)
    await append_notes(store, stream, 0, "x")
    await seal(db)
    return conn


async def test_a_read_waits_for_its_write_or_says_it_is_not_visible_yet(
    db: Database, store: EventStore
) -> None:
    conn = await one_event_behind(db, store, "n:ryw")
    with pytest.raises(NotYetVisibleError) as caught:
        await wait_for_position(db.pool, 1, ["notes"], timeout=0.2)
    assert (caught.value.position, caught.value.reached) == (1, 0)

    waiter = asyncio.create_task(wait_for_position(db.pool, 1, ["notes"], timeout=60))
    # the read has begun waiting (it cannot finish before the step below, however long this is)
    await asyncio.wait({waiter}, timeout=0.05)
    assert not waiter.done()
    await step(conn, NOTES)
    assert await waiter == 1


async def test_a_read_waiting_for_the_views_is_woken_by_their_notify(
    db: Database, store: EventStore
) -> None:
    # given a projection behind the log, and a bell rung by a LISTEN on the views' channel
    conn = await one_event_behind(db, store, "n:bell")
    bell = ViewsBell()
    listener = Listener(db.connect, views_channel(db.schema), bell.notify)
    bell.hear(listener)
    listener.start()
    await eventually(lambda: listener.listening, what="the views' LISTEN is up")

    # when a read waits for the views with no timer to fall back on
    waiter = asyncio.create_task(
        wait_for_position(
            db.pool,
            1,
            ["notes"],
            timeout=NO_TIMER,
            interval=NO_TIMER,
            bell=bell,
            safety_interval=NO_TIMER,
        )
    )
    await asyncio.wait({waiter}, timeout=0.05)
    assert not waiter.done()
    # and the projection then catches up
    await step(conn, NOTES)

    # then the checkpoint's NOTIFY woke it: with no timer before NO_TIMER, nothing else
    # could end the wait within WOKEN
    await asyncio.wait({waiter}, timeout=WOKEN)
    await listener.close()
    woken = waiter.done()
    waiter.cancel()
    assert woken, "the views moved and nothing woke the read"
    assert waiter.result() == 1


async def test_status_reports_position_and_lag(db: Database, store: EventStore) -> None:
    conn = await db.connect()
    await ensure_projection(conn, NOTES)
    await write_history(store, db, 12)
    [before] = await projection_status(conn)
    assert (before.projection, before.status, before.log_position, before.lag_events) == (
        "notes",
        "live",
        0,
        12,
    )
    await step(conn, NOTES)
    [after] = await projection_status(conn)
    assert (after.log_position, after.lag_events, after.lag_seconds) == (12, 0, 0.0)


async def _fold_checksum(db: Database, position: int) -> str:
    conn = await db.connect()
    async with conn.transaction():
        names = await fold_as_of(conn, [NOTES], position)
        return await checksum(conn, names["notes"])


async def test_serving_folds_equal_folds_in_one_transaction(
    db: Database, store: EventStore
) -> None:
    await write_history(store, db, 90, seed=11)
    conn = await db.connect()
    head = await head_position(conn)
    async with folded_views(conn, [NOTES], head, batch=7) as names:
        assert await checksum(conn, names["notes"]) == await _fold_checksum(db, head)
    assert not await conn.fetchval(
        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE '%\\_\\_t%'"
    )


async def test_a_long_fold_does_not_hold_back_sealing(db: Database, store: EventStore) -> None:
    # given a fold that has written its first batches and is held between two of them
    await write_history(store, db, 40, seed=12)
    conn = await db.connect()
    head = await head_position(conn)
    batches = 0
    held, release = asyncio.Event(), asyncio.Event()

    async def pausing(c: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]) -> None:
        nonlocal batches
        batches += 1
        if batches == 3:  # before this batch writes: its transaction has no xid yet
            held.set()
            await release.wait()
        await NOTES.apply(c, names, events)

    fold = asyncio.create_task(_fold(conn, replace_apply(NOTES, pausing), head))
    await asyncio.wait_for(held.wait(), 60)

    # when a write commits while the fold is under way
    await append_notes(store, "n:during", 0, "during")
    sealer, sealer_conn = Sealer(db.connect, db.schema), await db.connect()

    # then it is sealed before the fold finishes: the batches already written hold no xid
    async def sealed() -> bool:
        await sealer.seal_all(sealer_conn)
        return await head_position(sealer_conn) > head

    await eventually(sealed, what="the write sealed during the fold")
    assert not fold.done()
    release.set()
    await fold


async def _fold(conn: asyncpg.Connection, projection: Projection, head: int) -> None:
    async with folded_views(conn, [projection], head, batch=2):
        pass


async def test_scratch_tables_left_by_a_crash_are_dropped_later(db: Database) -> None:
    conn = await db.connect()
    await conn.execute("CREATE UNLOGGED TABLE note_counts__t000001abc (x int)")  # from 1970: stale
    fresh = f"note_counts__t{base36(int(time.time()), 6)}xyz"
    await conn.execute(f"CREATE UNLOGGED TABLE {fresh} (x int)")  # a fold in progress elsewhere
    await conn.execute("CREATE TABLE note_counts__tnot_scratch (x int)")
    assert await drop_stale_scratch_tables(conn) == 1
    assert await conn.fetchval(f"SELECT to_regclass('{fresh}') IS NOT NULL")
    assert await conn.fetchval("SELECT to_regclass('note_counts__tnot_scratch') IS NOT NULL")
