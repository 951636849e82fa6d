"""The sealer's backlog and the head of the log, as /metrics reports them."""

from __future__ import annotations

import asyncpg
import pytest

from eventlog.lags import Sealing, sealing
from eventlog.sealer import Sealer
from eventlog.store import EventStore
from tests.support.database import Database
from tests.support.sample_events import CODEC, append_notes


@pytest.fixture
def store(db: Database) -> EventStore:
    return EventStore(db.pool, CODEC)


@pytest.fixture
def sealer(db: Database) -> Sealer:
    return Sealer(db.connect, db.schema)


@pytest.fixture
async def seal_conn(db: Database) -> asyncpg.Connection:
    return await db.connect()


async def test_an_empty_log_has_nothing_behind(db: Database) -> None:
    assert await sealing(db.pool) == Sealing(head=0, unsealed=0)


async def test_appended_events_wait_until_sealed_then_move_the_head(
    db: Database, store: EventStore, sealer: Sealer, seal_conn: asyncpg.Connection
) -> None:
    # given three appended events, none sealed yet
    await append_notes(store, "s:a", 0, "one", "two")
    await append_notes(store, "s:b", 0, "three")
    before = await sealing(db.pool)
    assert (before.head, before.unsealed) == (0, 3)

    # when the sealer runs
    await sealer.seal_all(seal_conn)

    # then the backlog is gone and the head is the last sealed position
    after = await sealing(db.pool)
    assert (after.head, after.unsealed) == (3, 0)

    # and a later append counts again, past the new cursor only
    await append_notes(store, "s:a", 2, "four")
    assert await sealing(db.pool) == Sealing(head=3, unsealed=1)


async def test_a_large_backlog_is_counted_up_to_the_cap(db: Database, store: EventStore) -> None:
    # given more waiting events than the cap
    await append_notes(store, "s:many", 0, *[str(i) for i in range(5)])

    # then the count stops at the cap: a bounded scan, however far behind
    assert (await sealing(db.pool, cap=3)).unsealed == 3
    assert (await sealing(db.pool, cap=10)).unsealed == 5
