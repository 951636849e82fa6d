"""Guarded appends: a decision commits only while the stream it was made under is unchanged.

Issue 13 item 10: the registry policy lives outside the model stream, so the model
stream's version check alone let an approval decided under the old policy land after the
new one. Both interleavings are forced with explicit transactions on dedicated
connections; the tests wait on Postgres's own lock table, never on time.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from eventlog.log import read_log
from eventlog.sealer import Sealer
from eventlog.store import EventStore, StaleGuardError
from tests.support.database import Database
from tests.support.sample_events import CODEC, META, append_notes, notes
from tests.support.waiting import eventually

POLICY = "policy:registry"  # a guardable stream (its type is ``policy``)
MODEL = "model:m1"


@pytest.fixture
def store(db: Database) -> EventStore:
    return EventStore(db.pool, CODEC)


async def open_transaction(
    db: Database,
) -> tuple[asyncpg.Connection, asyncpg.transaction.Transaction]:
    conn = await db.connect()
    tx = conn.transaction()
    await tx.start()
    return conn, tx


async def someone_waits_for_a_guard_lock(db: Database) -> bool:
    """A transaction of this database is blocked on a guard lock (two-key advisory lock)."""
    waiting: int = await db.pool.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
        " AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return waiting > 0


async def logged_texts(db: Database) -> list[str]:
    sealer = Sealer(db.connect, db.schema)
    await sealer.seal_all(await db.connect())
    return [CODEC.decode(e.envelope).text for e in await read_log(db.pool, 0, 1000)]  # type: ignore[attr-defined]


async def test_a_guarded_append_commits_while_the_guard_stream_is_at_the_version_read(
    store: EventStore,
) -> None:
    await append_notes(store, POLICY, 0, "policy 1")
    result = await store.append(MODEL, 0, notes("decided under policy 1"), META, guards={POLICY: 1})
    assert result.stream_version == 1


async def test_a_guarded_append_fails_once_the_guard_stream_moved_and_records_nothing(
    db: Database, store: EventStore
) -> None:
    # given a decision made before any policy was set (the guard stream at version 0)
    # when the policy is set before the decision is appended
    await append_notes(store, POLICY, 0, "policy 1")
    with pytest.raises(StaleGuardError) as error:
        await store.append(MODEL, 0, notes("decided under the default"), META, guards={POLICY: 0})
    # then the append fails naming the guard, and nothing of it is recorded
    assert (error.value.stream_id, error.value.expected_version, error.value.actual_version) == (
        POLICY,
        0,
        1,
    )
    assert await store.stream_version(MODEL) == 0
    assert await db.pool.fetchval("SELECT count(*) FROM events") == 1


async def test_only_a_guardable_stream_can_guard_an_append(store: EventStore) -> None:
    with pytest.raises(ValueError, match="cannot guard"):
        await store.append(MODEL, 0, notes("x"), META, guards={"model:m2": 0})
    with pytest.raises(ValueError, match="cannot guard"):
        await store.append(POLICY, 0, notes("x"), META, guards={POLICY: 0})


async def test_a_guarded_append_waits_for_an_open_policy_change_then_fails(
    db: Database, store: EventStore
) -> None:
    # given a policy change appended in a transaction that has not committed yet
    writer, writer_tx = await open_transaction(db)
    await store.append(POLICY, 0, notes("policy 1"), META, conn=writer)
    # when a decision made under the old policy (version 0) is appended
    decision = asyncio.create_task(
        store.append(MODEL, 0, notes("decided under the default"), META, guards={POLICY: 0})
    )
    # then it waits for the change to finish
    await eventually(lambda: someone_waits_for_a_guard_lock(db), what="the decision waiting")
    assert not decision.done()
    # and once the change commits, the stale decision fails and records nothing
    await writer_tx.commit()
    with pytest.raises(StaleGuardError):
        await decision
    assert await logged_texts(db) == ["policy 1"]


async def test_a_policy_change_waits_for_an_open_guarded_decision_and_the_log_shows_it_first(
    db: Database, store: EventStore
) -> None:
    # given a decision made under the default policy, appended but not committed yet
    decider, decider_tx = await open_transaction(db)
    await store.append(
        MODEL, 0, notes("decided under the default"), META, guards={POLICY: 0}, conn=decider
    )
    # when the policy changes meanwhile
    change = asyncio.create_task(append_notes(store, POLICY, 0, "policy 1"))
    # then the change waits for the decision
    await eventually(lambda: someone_waits_for_a_guard_lock(db), what="the change waiting")
    assert not change.done()
    await decider_tx.commit()
    assert await change == 1
    # and the log, in the sealer's (xid) order, shows the decision before the change
    assert await logged_texts(db) == ["decided under the default", "policy 1"]


async def test_guarded_decisions_on_many_streams_do_not_wait_for_each_other(
    db: Database, store: EventStore
) -> None:
    # given a guarded decision left open on one model
    decider, decider_tx = await open_transaction(db)
    await store.append(MODEL, 0, notes("m1"), META, guards={POLICY: 0}, conn=decider)
    # when decisions on other models are appended under the same policy version
    for n in range(2, 6):
        await store.append(f"model:m{n}", 0, notes(f"m{n}"), META, guards={POLICY: 0})
    # then they all committed (the guard lock is shared among decisions)
    await decider_tx.commit()
    assert sorted(await logged_texts(db)) == ["m1", "m2", "m3", "m4", "m5"]
