"""The command executor: decide against fresh state, retry conflicts, replay retries, snapshot."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import ClassVar

import msgspec
import pytest

from eventlog.store import EventStore, StoredEvent
from events.base import Command, Decider, Event
from events.codec import EventCodec
from events.errors import InvalidTransitionError
from service.commands.executor import CommandExecutor, PreconditionFailedError
from tests.support.database import Database

NOW = datetime(2026, 3, 3, tzinfo=UTC)


class Added(Event, frozen=True):
    event_type: ClassVar[str] = "counter.added"
    amount: int


class Add(Command, frozen=True):
    amount: int
    limit: int = 1_000_000


class Total(msgspec.Struct, frozen=True):
    total: int = 0


def decide(command: Add, state: Total) -> list[Added]:
    if command.amount == 0:
        return []
    if state.total + command.amount > command.limit:
        raise InvalidTransitionError(f"the total would pass {command.limit}")
    return [Added(amount=command.amount)]


def evolve(state: Total, event: Added) -> Total:
    return Total(state.total + event.amount)


COUNTER = Decider("counter", Total, evolve, decide, state_type=Total)
CODEC = EventCodec([Added])


class CountingStore(EventStore):
    """Counts the events a command had to read: the cost that must not grow with history."""

    read_events = 0

    async def read_stream(
        self, stream_id: str, *, after: int = 0, up_to: int | None = None
    ) -> list[StoredEvent]:
        events = await super().read_stream(stream_id, after=after, up_to=up_to)
        self.read_events += len(events)
        return events


@pytest.fixture
def store(db: Database) -> CountingStore:
    return CountingStore(db.pool, CODEC)


def add(amount: int, **kw: int) -> Add:
    return Add(actor="alice", now=NOW, amount=amount, **kw)


async def test_concurrent_commands_on_one_stream_are_redecided_until_each_lands(
    store: CountingStore,
) -> None:
    # given four replicas (executors with their own caches) and two commands on each
    replicas = [CommandExecutor(store) for _ in range(4)]
    outcomes = await asyncio.gather(
        *(r.execute("counter:a", COUNTER, add(1)) for r in replicas for _ in range(2))
    )
    # then every command landed on its own version
    assert sorted(o.version for o in outcomes) == list(range(1, 9))
    _, state = await CommandExecutor(store).state_of("counter:a", COUNTER)
    assert state.total == 8


async def test_commands_on_one_stream_in_one_process_take_turns_without_conflicts(
    store: CountingStore,
) -> None:
    executor = CommandExecutor(store, max_attempts=1)  # any conflict would fail a command
    outcomes = await asyncio.gather(
        *(executor.execute("counter:turns", COUNTER, add(1)) for _ in range(20))
    )
    assert sorted(o.version for o in outcomes) == list(range(1, 21))
    assert not executor._turns


async def test_a_rule_that_fails_after_redeciding_is_the_callers_error(
    store: CountingStore,
) -> None:
    replicas = [CommandExecutor(store) for _ in range(3)]
    outcomes = await asyncio.gather(
        *(r.execute("counter:b", COUNTER, add(1, limit=3)) for r in replicas for _ in range(2)),
        return_exceptions=True,
    )
    assert sum(isinstance(o, InvalidTransitionError) for o in outcomes) == 3
    assert (await CommandExecutor(store).state_of("counter:b", COUNTER))[1].total == 3


async def test_a_command_decided_on_a_stale_cache_lands_on_the_streams_own_state(
    store: CountingStore,
) -> None:
    # given replica A cached the stream at version 1, then replica B appended to it
    a = CommandExecutor(store, max_attempts=1)  # a conflict of its own would fail it
    b = CommandExecutor(store)
    await a.execute("counter:stale", COUNTER, add(1))
    await b.execute("counter:stale", COUNTER, add(1))
    # when A executes a command, first on what it cached
    outcome = await a.execute("counter:stale", COUNTER, add(1))
    # then it landed after B's event, decided on the stream as it is
    assert (outcome.version, outcome.state.total) == (3, 3)
    assert (await CommandExecutor(store).state_of("counter:stale", COUNTER))[1].total == 3


async def test_a_refusal_is_never_answered_from_a_stale_cache(store: CountingStore) -> None:
    # given replica A cached a total at its limit, then replica B lowered it
    a = CommandExecutor(store)
    b = CommandExecutor(store)
    await a.execute("counter:lowered", COUNTER, add(3, limit=3))
    await b.execute("counter:lowered", COUNTER, add(-2))
    # when A executes a command its cache would refuse but the stream allows
    outcome = await a.execute("counter:lowered", COUNTER, add(2, limit=3))
    # then it is accepted on the stream's own state
    assert (outcome.version, outcome.state.total) == (3, 3)


async def test_if_version_is_checked_and_never_retried(store: CountingStore) -> None:
    executor = CommandExecutor(store)
    await executor.execute("counter:c", COUNTER, add(1))
    with pytest.raises(PreconditionFailedError):
        await executor.execute("counter:c", COUNTER, add(1), if_version=0)
    assert (await executor.execute("counter:c", COUNTER, add(1), if_version=1)).version == 2


async def test_a_retry_under_the_same_seed_is_recorded_once_and_answered_the_same(
    store: CountingStore,
) -> None:
    first = CommandExecutor(store)
    second = CommandExecutor(store)  # another API replica, with its own cache
    a = await first.execute("counter:d", COUNTER, add(5), id_seed="key-1")
    b = await second.execute("counter:d", COUNTER, add(5), id_seed="key-1")
    assert not a.replayed
    assert b.replayed
    assert b.events == a.events == [Added(amount=5)]
    assert (await first.state_of("counter:d", COUNTER))[1].total == 5


class Burst(Command, frozen=True):
    count: int


def decide_burst(command: Burst, state: Total) -> list[Added]:
    return [Added(amount=1) for _ in range(command.count)]


BURST = Decider("counter", Total, evolve, decide_burst, state_type=Total)


async def test_a_retry_answers_exactly_its_own_events_however_much_came_after(
    store: CountingStore,
) -> None:
    # given a command that recorded 50 events under a seed, then 100 more commands on the
    # same stream
    first = CommandExecutor(store)
    recorded = await first.execute(
        "counter:burst", BURST, Burst(actor="a", now=NOW, count=50), id_seed="burst-1"
    )
    for _ in range(100):
        await first.execute("counter:burst", COUNTER, add(1))

    # when it is retried under the same seed on another replica
    again = await CommandExecutor(store).execute(
        "counter:burst", BURST, Burst(actor="a", now=NOW, count=50), id_seed="burst-1"
    )

    # then it answers the 50 events and the version it wrote, and records nothing new
    assert again.replayed
    assert again.events == recorded.events == [Added(amount=1)] * 50
    assert again.version == recorded.version == 50
    assert await store.stream_version("counter:burst") == 150


async def test_a_no_op_command_appends_nothing(store: CountingStore) -> None:
    outcome = await CommandExecutor(store).execute("counter:e", COUNTER, add(0))
    assert outcome.append is None
    assert outcome.version == 0
    assert await store.stream_version("counter:e") == 0


async def test_a_commands_cost_does_not_grow_with_the_stream(store: CountingStore) -> None:
    executor = CommandExecutor(store, snapshot_every=100)
    for _ in range(450):
        await executor.execute("counter:f", COUNTER, add(1))
    await executor.drain()

    # a warm cache reads nothing old
    store.read_events = 0
    await executor.execute("counter:f", COUNTER, add(1))
    assert store.read_events == 0

    # a cold replica starts from the snapshot and reads only what came after it
    store.read_events = 0
    cold = CommandExecutor(store, snapshot_every=100)
    outcome = await cold.execute("counter:f", COUNTER, add(1))
    assert outcome.state.total == 452
    assert store.read_events <= 100


async def test_a_snapshot_of_an_older_fold_is_ignored(store: CountingStore, db: Database) -> None:
    executor = CommandExecutor(store, snapshot_every=10)
    for _ in range(25):
        await executor.execute("counter:g", COUNTER, add(2))
    await executor.drain()
    bumped = Decider("counter", Total, evolve, decide, state_type=Total, snapshot_version=2)
    version, state = await CommandExecutor(store).state_of("counter:g", bumped)
    assert (version, state.total) == (25, 50)
    assert (
        await db.pool.fetchval(
            "SELECT snapshot_version FROM snapshots WHERE stream_id = 'counter:g'"
        )
        == 1
    )


class Pad(Event, frozen=True):
    event_type: ClassVar[str] = "counter.padded"
    text: str


class Padding(msgspec.Struct, frozen=True):
    texts: tuple[str, ...] = ()


def decide_pad(command: Add, state: Padding) -> list[Pad]:
    return [Pad(text=f"{command.amount:0100d}")]


def evolve_pad(state: Padding, event: Pad) -> Padding:
    return Padding((*state.texts, event.text))


PADDING = Decider("padding", Padding, evolve_pad, decide_pad, state_type=Padding)


async def test_snapshots_of_a_growing_state_are_spaced_by_its_size(db: Database) -> None:
    # given a stream whose state grows by 100 bytes an event, snapshots at least 10 events
    # apart, and one event per 100 bytes of the last snapshot
    store = CountingStore(db.pool, EventCodec([Pad]))
    executor = CommandExecutor(store, snapshot_every=10, snapshot_bytes_per_event=100)

    # when 400 events are written one after another
    taken: list[tuple[int, int]] = []
    for i in range(400):
        await executor.execute("padding:a", PADDING, add(i + 1))
        await executor.drain()
        row = await db.pool.fetchrow(
            "SELECT version, length(state) AS size FROM snapshots WHERE stream_id = 'padding:a'"
        )
        if row is not None and (not taken or taken[-1][0] != row["version"]):
            taken.append((row["version"], row["size"]))

    # then the first snapshot is at 10, and each next one as many events after the last as
    # the last weighed in hundreds of bytes (never fewer than 10): far fewer than 40
    assert taken[0][0] == 10
    for (version, size), (after, _) in itertools.pairwise(taken):
        assert after - version == max(10, size // 100), taken
    assert 5 <= len(taken) <= 12, taken
    assert taken[-1][1] > 40 * 100  # the state did grow past 40 hundred bytes

    # and a cold replica starts from the last snapshot, reading fewer events than its gap
    last_version, last_size = taken[-1]
    gap = max(10, last_size // 100)
    store.read_events = 0
    cold = CommandExecutor(store, snapshot_every=10, snapshot_bytes_per_event=100)
    outcome = await cold.execute("padding:a", PADDING, add(401))
    assert len(outcome.state.texts) == 401
    assert store.read_events == 400 - last_version < gap

    # and it learnt that gap from the snapshot: its next snapshot is that many events later
    while outcome.version < last_version + gap:
        stored = await db.pool.fetchval(
            "SELECT version FROM snapshots WHERE stream_id = 'padding:a'"
        )
        assert stored == last_version
        outcome = await cold.execute("padding:a", PADDING, add(outcome.version + 1))
        await cold.drain()
    stored = await db.pool.fetchval("SELECT version FROM snapshots WHERE stream_id = 'padding:a'")
    assert stored == last_version + gap
