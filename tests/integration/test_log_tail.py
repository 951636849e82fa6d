"""The log tail shared by a worker's projection leaders answers exactly what reading the
log would, whatever stretch, batch and types each leader asks for, with fewer reads."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from eventlog.log import LoggedEvent, head_position, read_log
from eventlog.sealer import Sealer
from eventlog.store import EventStore
from projections.tail import LogTail
from tests.support.database import Database
from tests.support.sample_events import CODEC, META, Counted, Noted

NOTED = frozenset({"test.noted"})
COUNTED = frozenset({"test.counted"})


@pytest.fixture
async def sealed_log(db: Database) -> int:
    """300 sealed events of two types, in streams of one to three events per append."""
    store = EventStore(db.pool, CODEC)
    rng = random.Random(7)
    versions: dict[str, int] = {}
    written = 0
    while written < 300:
        stream = f"s:{rng.randrange(12)}"
        events = [
            Noted(text=f"n{written + i}") if rng.random() < 0.6 else Counted(n=written + i)
            for i in range(rng.randint(1, 3))
        ]
        await store.append(stream, versions.get(stream, 0), events, META)
        versions[stream] = versions.get(stream, 0) + len(events)
        written += len(events)
    conn = await db.connect()
    await Sealer(db.connect, db.schema).seal_all(conn)
    head = await head_position(conn)
    await conn.close()
    return head


def positions(events: list[LoggedEvent]) -> list[int]:
    return [e.log_position for e in events]


async def test_random_reads_through_a_small_tail_equal_reads_of_the_log(
    db: Database, sealed_log: int
) -> None:
    # given a tail far smaller than the log, and readers moving forward at their own pace
    tail = LogTail(capacity=40)
    conn = await db.connect()
    rng = random.Random(11)
    checked = 0
    for _ in range(400):
        after = rng.randrange(sealed_log)
        up_to = min(sealed_log, after + rng.choice([1, 5, 30, 60, 200]))
        limit = rng.choice([1, 7, 25, 1000])
        types = rng.choice([None, NOTED, COUNTED])

        # when one asks the tail
        got = await tail.read(conn, after, limit, up_to=up_to, types=types)

        # then it answers what the log answers
        expected = await read_log(conn, after, limit, up_to=up_to, types=types)
        assert positions(got) == positions(expected), (after, up_to, limit, types)
        assert [e.envelope.event_id for e in got] == [e.envelope.event_id for e in expected]
        checked += len(got)
    assert checked > 0
    await conn.close()


async def test_seven_leaders_asking_for_the_same_new_stretch_cost_one_read(
    db: Database, sealed_log: int
) -> None:
    # given a tail that already holds the log up to 250, as after the leaders' last round
    tail = LogTail(capacity=200)
    warm = await db.connect()
    await tail.read(warm, 240, 1000, up_to=250)
    reads_before = tail.reads
    conns = [await db.connect() for _ in range(7)]

    # when seven leaders at 250, each with its types, ask at once for the next 50 events
    wanted = [None, NOTED, COUNTED, NOTED, None, COUNTED, NOTED]
    answers = await asyncio.gather(
        *(
            tail.read(c, 250, 1000, up_to=sealed_log, types=t)
            for c, t in zip(conns, wanted, strict=True)
        )
    )

    # then one of them read the log, and each got exactly its events
    assert tail.reads - reads_before == 1
    for answer, types in zip(answers, wanted, strict=True):
        assert positions(answer) == positions(
            await read_log(warm, 250, 1000, up_to=sealed_log, types=types)
        )
    for c in [warm, *conns]:
        await c.close()


async def test_a_leader_behind_the_tail_reads_for_itself_and_the_tail_stays_put(
    db: Database, sealed_log: int
) -> None:
    tail = LogTail(capacity=50)
    conn: asyncpg.Connection = await db.connect()
    await tail.read(conn, sealed_log - 50, 1000, up_to=sealed_log)
    span, reads = tail.span, tail.reads

    behind = await tail.read(conn, 10, 20, up_to=55, types=NOTED)

    assert positions(behind) == positions(await read_log(conn, 10, 20, up_to=55, types=NOTED))
    assert (tail.span, tail.reads) == (span, reads)
    await conn.close()
