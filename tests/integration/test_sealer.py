"""The sealer never skips, never stalls on rollbacks, and never forks the global chain.

Interleavings are forced with explicit transactions on dedicated connections: a
transaction that takes its xid early and commits late is exactly what a tailing reader
of ``seq`` would skip.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from eventlog.log import head_position, read_log
from eventlog.sealer import Sealer
from eventlog.store import EventStore
from eventlog.verify import verify
from events.envelope import ZERO_HASH, log_link
from tests.support.database import Database
from tests.support.sample_events import CODEC, META, append_notes, notes
from tests.support.waiting import eventually


@pytest.fixture
def store(db: Database) -> EventStore:
    return EventStore(db.pool, CODEC)


@pytest.fixture
def sealer(db: Database) -> Sealer:
    return Sealer(db.connect, db.schema)


@pytest.fixture
async def seal_conn(db: Database) -> asyncpg.Connection:
    return await db.connect()


async def open_transaction(
    db: Database, *, appending: bool = True
) -> tuple[asyncpg.Connection, asyncpg.transaction.Transaction]:
    """A transaction that has taken its xid now and will commit whenever the test says: an
    announced appender (``begin_append``, as every append is), or one that only writes."""
    conn = await db.connect()
    tx = conn.transaction()
    await tx.start()
    if appending:
        await conn.execute("SELECT begin_append()")
    else:
        await conn.fetchval("SELECT pg_current_xact_id()")
    return conn, tx


async def logged_texts(db: Database) -> list[str]:
    return [CODEC.decode(e.envelope).text for e in await read_log(db.pool, 0, 10_000)]  # type: ignore[attr-defined]


async def test_an_earlier_transaction_that_commits_late_is_not_skipped(
    db: Database, store: EventStore, sealer: Sealer, seal_conn: asyncpg.Connection
) -> None:
    # given a slow transaction that took its xid before a fast one
    slow, slow_tx = await open_transaction(db)
    await append_notes(store, "s:fast", 0, "fast")

    # when the sealer runs while the slow one is still open
    # then it seals nothing yet: the fast event sits above the horizon
    assert await sealer.seal_all(seal_conn) == 0

    # when the slow transaction appends and commits
    await store.append("s:slow", 0, notes("slow"), META, conn=slow)
    await slow_tx.commit()

    # then both are sealed exactly once, in transaction order
    assert await sealer.seal_all(seal_conn) == 2
    assert await logged_texts(db) == ["slow", "fast"]
    assert await sealer.seal_all(seal_conn) == 0


async def test_several_slow_and_multi_event_transactions_are_sealed_whole_and_once(
    db: Database, store: EventStore, sealer: Sealer, seal_conn: asyncpg.Connection
) -> None:
    first, first_tx = await open_transaction(db)
    second, second_tx = await open_transaction(db)
    await append_notes(store, "s:c", 0, "c1", "c2", "c3")
    assert await sealer.seal_all(seal_conn) == 0

    await store.append("s:b", 0, notes("b1", "b2"), META, conn=second)
    await second_tx.commit()
    assert await sealer.seal_all(seal_conn) == 0  # the first is still open and older

    await store.append("s:a", 0, notes("a1"), META, conn=first)
    await first_tx.commit()
    assert await sealer.seal_all(seal_conn) == 6
    assert await logged_texts(db) == ["a1", "b1", "b2", "c1", "c2", "c3"]
    assert await sealer.seal_all(seal_conn) == 0


async def test_rolled_back_neighbours_leave_no_gap_and_no_stall(
    db: Database, store: EventStore, sealer: Sealer, seal_conn: asyncpg.Connection
) -> None:
    for i in range(5):
        doomed, doomed_tx = await open_transaction(db)
        await store.append(f"s:doomed{i}", 0, notes(f"never{i}"), META, conn=doomed)
        await append_notes(store, "s:kept", i, f"kept{i}")
        await doomed_tx.rollback()

    assert await sealer.seal_all(seal_conn) == 5
    log = await read_log(db.pool, 0, 100)
    assert [e.log_position for e in log] == [1, 2, 3, 4, 5]
    assert await logged_texts(db) == [f"kept{i}" for i in range(5)]


async def test_an_idle_open_transaction_delays_sealing_but_loses_nothing(
    db: Database, store: EventStore, sealer: Sealer, seal_conn: asyncpg.Connection
) -> None:
    # given a session idle in a transaction that holds an xid
    _idle, idle_tx = await open_transaction(db)

    # when events are appended meanwhile
    for i in range(3):
        await append_notes(store, "s:wait", i, f"w{i}")

    # then they wait behind the horizon
    assert await sealer.seal_all(seal_conn) == 0
    assert await head_position(db.pool) == 0

    # and are sealed as soon as the idle transaction ends
    await idle_tx.rollback()
    assert await sealer.seal_all(seal_conn) == 3
    assert await logged_texts(db) == ["w0", "w1", "w2"]


async def test_an_append_from_an_older_transaction_retries_so_stream_order_is_log_order(
    db: Database, store: EventStore, sealer: Sealer, seal_conn: asyncpg.Connection
) -> None:
    # given a stream at version 1 and a transaction T2 that took its xid early
    await append_notes(store, "s:xid", 0, "v1")
    t2, t2_tx = await open_transaction(db)

    # when a later transaction appends v2 and commits, then T2 tries to append v3
    await append_notes(store, "s:xid", 1, "v2")
    with pytest.raises(asyncpg.SerializationError):
        await store.append("s:xid", 2, notes("v3"), META, conn=t2)
    await t2_tx.rollback()

    # then T2's retry (a new, later xid) succeeds, and the log keeps stream order
    await append_notes(store, "s:xid", 2, "v3")
    await sealer.seal_all(seal_conn)
    log = await read_log(db.pool, 0, 100)
    assert [e.envelope.stream_position for e in log] == [1, 2, 3]


async def test_a_transaction_that_appends_nothing_does_not_hold_sealing_back(
    db: Database, store: EventStore, sealer: Sealer, seal_conn: asyncpg.Connection
) -> None:
    # given a transaction that holds an xid but appends nothing (a projection's batch, a
    # job on another table), older than the events that follow
    _bystander, bystander_tx = await open_transaction(db, appending=False)

    # when events are appended meanwhile
    await append_notes(store, "s:free", 0, "f1", "f2")

    # then they are sealed at once: only appenders bound the horizon
    assert await sealer.seal_all(seal_conn) == 2
    assert await logged_texts(db) == ["f1", "f2"]
    await bystander_tx.rollback()


async def test_an_appender_whose_id_is_not_known_yet_holds_sealing_at_the_xmin(
    db: Database, store: EventStore, sealer: Sealer, seal_conn: asyncpg.Connection
) -> None:
    # given a transaction with an xid that appends nothing, then one that holds the
    # appender lock but has drawn no id yet (the instant between lock and id)
    _bystander, bystander_tx = await open_transaction(db, appending=False)
    holder = await db.connect()
    holder_tx = holder.transaction()
    await holder_tx.start()
    await holder.execute("SELECT pg_advisory_xact_lock_shared(append_lock_key())")
    await append_notes(store, "s:held", 0, "h1")

    # when the sealer runs, then it cannot tell the holder's id, so it falls back to the
    # old rule (the xmin, which the bystander holds) and seals nothing
    assert await sealer.seal_all(seal_conn) == 0

    # when the holder ends, then the bystander no longer matters
    await holder_tx.rollback()
    assert await sealer.seal_all(seal_conn) == 1
    await bystander_tx.rollback()


async def test_events_are_refused_from_a_transaction_that_did_not_announce_its_append(
    db: Database,
) -> None:
    conn = await db.connect()
    # given a transaction that has written before announcing, when it announces, then no
    written, written_tx = await open_transaction(db, appending=False)
    with pytest.raises(asyncpg.PostgresError, match="begin_append"):
        await written.execute("SELECT begin_append()")
    await written_tx.rollback()
    # given an insert into events that bypasses the append, then it is refused
    with pytest.raises(asyncpg.PostgresError, match="begin_append"):
        await conn.execute(
            "INSERT INTO events (event_id, stream_id, stream_position, event_type, envelope,"
            " stream_hash) VALUES (gen_random_uuid(), 's:x', 1, 'note', '\\x00', '\\x00')"
        )
    assert await db.pool.fetchval("SELECT count(*) FROM events") == 0


async def test_the_global_chain_links_every_position(
    db: Database, store: EventStore, sealer: Sealer, seal_conn: asyncpg.Connection
) -> None:
    await append_notes(store, "s:g1", 0, "a", "b")
    await append_notes(store, "s:g2", 0, "c")
    await sealer.seal_all(seal_conn)
    rows = await db.pool.fetch(
        "SELECT l.log_position, l.log_hash, e.stream_hash FROM event_log l JOIN events e USING (seq) ORDER BY 1"
    )
    previous = ZERO_HASH
    for row in rows:
        previous = log_link(previous, row["log_position"], bytes(row["stream_hash"]))
        assert bytes(row["log_hash"]) == previous
    head = await db.pool.fetchrow("SELECT last_log_position, last_log_hash FROM sealer_state")
    assert head is not None and (head[0], bytes(head[1])) == (3, previous)


async def test_sealing_notifies_listeners_with_the_new_head(
    db: Database, store: EventStore, sealer: Sealer, seal_conn: asyncpg.Connection
) -> None:
    listener = await db.connect()
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(sealer.channel, lambda *args: heard.put_nowait(args[3]))
    await append_notes(store, "s:n", 0, "a", "b")
    await sealer.seal_all(seal_conn)
    assert await asyncio.wait_for(heard.get(), 60) == "2"


async def test_two_sealers_at_once_neither_duplicate_nor_skip(
    db: Database, store: EventStore
) -> None:
    # given two sealers that both believe they lead, hammering while writers append
    sealers = [Sealer(db.connect, db.schema, batch_size=7) for _ in range(2)]
    conns = [await db.connect() for _ in sealers]
    done = asyncio.Event()
    conflicts = 0

    async def writer(w: int) -> None:
        for i in range(60):
            await append_notes(store, f"s:w{w}", i, f"{w}-{i}")

    async def seal(s: Sealer, c: asyncpg.Connection) -> None:
        nonlocal conflicts
        while not done.is_set():
            try:
                await s.seal_once(c)
            except Exception:
                conflicts += 1
            await asyncio.sleep(0)

    sealing = [asyncio.create_task(seal(s, c)) for s, c in zip(sealers, conns, strict=True)]
    await asyncio.gather(*(writer(w) for w in range(4)))
    await _until_sealed(db, 240)  # both still competing until the last event is in the log
    done.set()
    await asyncio.gather(*sealing)
    await sealers[0].seal_all(conns[0])

    # then every event is in the log exactly once, positions contiguous, chain intact
    rows = await db.pool.fetch("SELECT log_position, seq FROM event_log ORDER BY log_position")
    assert [r["log_position"] for r in rows] == list(range(1, 241))
    assert len({r["seq"] for r in rows}) == 240
    report = await verify(await db.connect())
    assert report.ok, report.first_break


async def test_one_sealer_leads_and_a_standby_takes_over_when_it_dies(
    db: Database, store: EventStore
) -> None:
    stop = asyncio.Event()
    first = Sealer(db.connect, db.schema, standby_interval=0.05)
    second = Sealer(db.connect, db.schema, standby_interval=0.05)
    tasks = [asyncio.create_task(first.run(stop))]
    await eventually(lambda: first.is_leader, what="the first sealer leads")
    tasks.append(asyncio.create_task(second.run(stop)))
    await append_notes(store, "s:lead", 0, "a")
    await _until_sealed(db, 1)
    assert first.is_leader and not second.is_leader

    # when the leader's session is killed
    admin = await db.admin()
    killed = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND objid = (hashtextextended($1, 0) & 4294967295)::oid"
        " AND classid = ((hashtextextended($1, 0) >> 32) & 4294967295)::oid",
        f"modelreg:{db.schema}:sealer",
    )
    assert killed == 1
    await append_notes(store, "s:lead", 1, "b")

    # then some sealer leads again and the event is sealed
    await _until_sealed(db, 2)
    stop.set()
    await asyncio.gather(*tasks)


async def _until_sealed(db: Database, position: int) -> None:
    async def reached() -> bool:
        return await head_position(db.pool) >= position

    await eventually(reached, what=f"log position {position} sealed")
