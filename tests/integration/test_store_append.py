"""Appends: optimistic concurrency, idempotency, unique keys and hash chains."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from eventlog.sealer import Sealer
from eventlog.store import DuplicateEventError, EventStore
from events.envelope import ZERO_HASH, stream_link
from events.errors import AlreadyExistsError, ConcurrencyError, ValidationError
from tests.support.database import Database
from tests.support.sample_events import CODEC, META, Counted, Noted, append_notes, notes


@pytest.fixture
def store(db: Database) -> EventStore:
    return EventStore(db.pool, CODEC)


async def _seq_high_water(db: Database) -> int:
    admin = await db.admin()
    row = await admin.fetchrow(
        "SELECT last_value FROM pg_sequences WHERE sequencename = 'events_seq_seq' AND schemaname = $1",
        db.schema,
    )
    assert row is not None and row["last_value"] is not None
    value: int = row["last_value"]
    return value


async def test_an_append_reads_back_in_order_with_its_envelope(store: EventStore) -> None:
    # given a new stream
    # when two batches are appended
    await append_notes(store, "note:a", 0, "one", "two")
    result = await store.append("note:a", 2, [Counted(n=3)], META)

    # then the stream reads back in order, with positions, types and metadata
    stored = await store.read_stream("note:a")
    assert result.stream_version == 3 and not result.replayed
    assert [s.stream_position for s in stored] == [1, 2, 3]
    assert [CODEC.decode(s.envelope) for s in stored] == [
        Noted(text="one"),
        Noted(text="two"),
        Counted(n=3),
    ]
    assert {s.envelope.actor for s in stored} == {"alice"}
    assert await store.stream_version("note:a") == 3
    assert [s.stream_position for s in await store.read_stream("note:a", after=1, up_to=2)] == [2]


async def test_of_many_writers_at_the_same_version_exactly_one_wins(store: EventStore) -> None:
    # given a stream at version 1
    await append_notes(store, "note:race", 0, "start")

    # when 16 writers append at expected version 1 at once
    outcomes = await asyncio.gather(
        *(store.append("note:race", 1, notes(f"w{i}"), META) for i in range(16)),
        return_exceptions=True,
    )

    # then one wins and every loser learns the actual version
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    losers = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(o, ConcurrencyError) and o.actual_version == 2 for o in losers)
    assert len(await store.read_stream("note:race")) == 2


async def test_of_two_creators_of_one_stream_exactly_one_wins(store: EventStore) -> None:
    outcomes = await asyncio.gather(
        *(store.append("note:new", 0, notes(f"c{i}"), META) for i in range(8)),
        return_exceptions=True,
    )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
    assert all(isinstance(o, ConcurrencyError) for o in outcomes if isinstance(o, BaseException))
    assert len(await store.read_stream("note:new")) == 1


async def test_an_optimistic_concurrency_loser_draws_no_sequence_number(
    db: Database, store: EventStore
) -> None:
    # given a stream and the current high-water mark of the event sequence
    await append_notes(store, "note:burn", 0, "a")
    before = await _seq_high_water(db)

    # when stale appends lose, and a new-stream append loses to an existing stream
    for _ in range(5):
        with pytest.raises(ConcurrencyError):
            await append_notes(store, "note:burn", 0, "stale")

    # then no sequence value was consumed
    assert await _seq_high_water(db) == before


async def test_resending_the_same_events_records_nothing_and_returns_the_first_result(
    store: EventStore,
) -> None:
    # given a batch appended with known event ids
    ids = [uuid.uuid4(), uuid.uuid4()]
    first = await store.append("note:idem", 0, notes("a", "b"), META, event_ids=ids)
    await append_notes(store, "note:idem", 2, "later")

    # when the same batch is sent again (the answer was lost), at the old expected version
    again = await store.append("note:idem", 0, notes("a", "b"), META, event_ids=ids)

    # then it is acknowledged as the original, and nothing new is recorded
    assert again.replayed
    assert (again.stream_version, again.last_seq, again.tx_id) == (
        first.stream_version,
        first.last_seq,
        first.tx_id,
    )
    assert len(await store.read_stream("note:idem")) == 3


async def test_concurrent_retries_of_one_batch_record_it_once(store: EventStore) -> None:
    ids = [uuid.uuid4()]
    results = await asyncio.gather(
        *(store.append("note:retry", 0, notes("x"), META, event_ids=ids) for _ in range(6))
    )
    assert sum(not r.replayed for r in results) == 1
    assert {r.last_seq for r in results} == {results[0].last_seq}
    assert len(await store.read_stream("note:retry")) == 1


async def test_resending_part_of_a_batch_is_refused(store: EventStore) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    await store.append("note:partial", 0, notes("a", "b"), META, event_ids=ids)
    with pytest.raises(DuplicateEventError):
        await store.append(
            "note:partial", 2, notes("b", "c"), META, event_ids=[ids[1], uuid.uuid4()]
        )
    with pytest.raises(DuplicateEventError):
        await store.append("note:other", 0, notes("a"), META, event_ids=[ids[0]])
    assert len(await store.read_stream("note:partial")) == 2
    assert await store.stream_version("note:other") == 0


async def test_each_event_hash_chains_its_exact_stored_bytes(
    db: Database, store: EventStore
) -> None:
    await append_notes(store, "note:chain", 0, "a", "b", "c")
    await append_notes(store, "note:chain", 3, "d")
    rows = await db.pool.fetch(
        "SELECT envelope, stream_hash FROM events WHERE stream_id = 'note:chain' ORDER BY stream_position"
    )
    expected = ZERO_HASH
    for row in rows:
        expected = stream_link(expected, bytes(row["envelope"]))
        assert bytes(row["stream_hash"]) == expected
    head = await db.pool.fetchval("SELECT last_hash FROM streams WHERE stream_id = 'note:chain'")
    assert bytes(head) == expected


async def test_a_unique_key_is_held_by_one_stream_at_a_time(store: EventStore) -> None:
    # when two streams race to claim one name
    outcomes = await asyncio.gather(
        store.append("note:x", 0, notes("x"), META, claim=["name:churn"]),
        store.append("note:y", 0, notes("y"), META, claim=["name:churn"]),
        return_exceptions=True,
    )
    # then one holds it, the other recorded nothing
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], AlreadyExistsError)
    owner = await store.owner_of("name:churn")
    assert owner in {"note:x", "note:y"}
    loser = "note:y" if owner == "note:x" else "note:x"
    assert await store.stream_version(loser) == 0

    # and releasing it in an append frees it for another stream
    await store.append(
        owner, 1, notes("rename"), META, claim=["name:churn2"], release=["name:churn"]
    )
    await store.append(loser, 0, notes("now mine"), META, claim=["name:churn"])
    assert await store.owner_of("name:churn") == loser
    assert await store.owner_of("name:churn2") == owner


async def test_the_application_role_cannot_rewrite_history(db: Database, store: EventStore) -> None:
    await append_notes(store, "note:ro", 0, "a")
    conn = await db.connect()
    for sql in (
        "UPDATE events SET event_type = 'x'",
        "DELETE FROM events",
        "TRUNCATE events",
        "UPDATE event_log SET event_type = 'x'",
        "DELETE FROM event_log",
        "TRUNCATE event_log",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(sql)


async def test_triggers_refuse_rewrites_even_by_the_owner(db: Database, store: EventStore) -> None:
    await append_notes(store, "note:owner", 0, "a")
    admin = await db.admin()
    for sql in (
        "UPDATE events SET event_type = 'x'",
        "DELETE FROM events",
        "TRUNCATE events",
        "TRUNCATE event_log",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await admin.execute(sql)
    assert await admin.fetchval("SELECT count(*) FROM events") == 1


async def test_a_name_claimed_by_a_transaction_older_than_its_release_retries(
    db: Database, store: EventStore
) -> None:
    # given a name held by one stream, and a transaction that took its xid early
    await store.append("note:old", 0, notes("registered as x"), META, claim=["name:x"])
    early = await db.connect()
    early_tx = early.transaction()
    await early_tx.start()
    await early.execute("SELECT begin_append()")  # an appender draws its xid as it announces

    # when the holder renames (releases x) and commits, then the early transaction claims x
    await store.append(
        "note:old", 1, notes("renamed to y"), META, claim=["name:y"], release=["name:x"]
    )
    with pytest.raises(asyncpg.SerializationError):
        await store.append(
            "note:new", 0, notes("registered as x"), META, claim=["name:x"], conn=early
        )
    await early_tx.rollback()

    # then its retry (a newer xid) succeeds, and the log shows the release before the claim
    await store.append("note:new", 0, notes("registered as x"), META, claim=["name:x"])
    await Sealer(db.connect, db.schema).seal_all(await db.connect())
    order = [
        r["stream_id"]
        for r in await db.pool.fetch("SELECT stream_id FROM event_log ORDER BY log_position")
    ]
    assert order == ["note:old", "note:old", "note:new"]
    assert await store.owner_of("name:x") == "note:new"
    assert await store.owner_of("name:y") == "note:old"


async def test_text_with_a_nul_character_is_refused_before_anything_is_recorded(
    store: EventStore,
) -> None:
    with pytest.raises(ValidationError) as caught:
        await store.append("note:nul", 0, notes("fine", "not\x00fine"), META)
    assert caught.value.rule == "nul_character"
    assert await store.stream_version("note:nul") == 0
    # a literal backslash-u-zero text is not a NUL and goes through
    await store.append("note:nul", 0, notes("a \\u0000 b"), META)
    assert [e.envelope.stream_position for e in await store.read_stream("note:nul")] == [1]
