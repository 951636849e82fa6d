"""Group commit: commands queued on one stream while an append is in flight are decided in
order and appended in one transaction, each still answered as if it had run alone."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from eventlog.store import AppendPart, AppendResult, EventStore, StaleGuardError
from events.envelope import decode_envelope
from events.errors import AlreadyExistsError, InvalidTransitionError
from service.commands.executor import CommandExecutor
from tests.integration.test_commands import CODEC, COUNTER, NOW, Add, Added, Total, add
from tests.support.database import Database


@pytest.fixture
def store(db: Database) -> EventStore:
    return EventStore(db.pool, CODEC)


async def recorded(db: Database, stream_id: str) -> list[Any]:
    return list(
        await db.pool.fetch(
            "SELECT seq, stream_position, tx_id, envelope FROM events WHERE stream_id = $1"
            " ORDER BY stream_position",
            stream_id,
        )
    )


async def test_commands_queued_together_share_one_transaction_and_keep_their_own_answers(
    db: Database, store: EventStore
) -> None:
    # given one executor and twenty callers adding 1..20 to one stream at once, each as
    # a person of its own
    executor = CommandExecutor(store)
    commands = [Add(actor=f"person-{n}", now=NOW, amount=n) for n in range(1, 21)]

    # when they all execute
    outcomes = await asyncio.gather(*(executor.execute("counter:g", COUNTER, c) for c in commands))

    # then the twenty events were appended by one transaction, in the callers' order
    rows = await recorded(db, "counter:g")
    assert [r["stream_position"] for r in rows] == list(range(1, 21))
    assert len({r["tx_id"] for r in rows}) == 1
    # and each caller's answer is its own: its event, the version and state right after
    # it, and the seq of that very event (what its receipt's log position is read from)
    seq_at = {r["stream_position"]: r["seq"] for r in rows}
    for n, outcome in enumerate(outcomes, start=1):
        assert outcome.events == [Added(amount=n)]
        assert outcome.version == n
        assert outcome.state == Total(total=n * (n + 1) // 2)
        assert outcome.append is not None
        assert (outcome.append.stream_version, outcome.append.last_seq) == (n, seq_at[n])
    # and each event records the person whose command it was
    actors = [decode_envelope(bytes(r["envelope"])).actor for r in rows]
    assert actors == [f"person-{n}" for n in range(1, 21)]
    assert not executor._turns


async def test_a_refusal_or_a_no_op_in_a_group_is_that_commands_alone(
    db: Database, store: EventStore
) -> None:
    # given a stream at total 0 and a limit of 3
    executor = CommandExecutor(store)
    commands = [add(1, limit=3), add(2, limit=3), add(1, limit=3), add(0), add(1, limit=4)]

    # when five commands arrive together: the third would pass the limit, the fourth
    # changes nothing
    outcomes = await asyncio.gather(
        *(executor.execute("counter:r", COUNTER, c) for c in commands), return_exceptions=True
    )

    # then the third is refused, the fourth answered without an append at the version
    # the commands before it left, and the others landed one after another
    assert isinstance(outcomes[2], InvalidTransitionError)
    first, second, _, no_op, last = outcomes
    assert not isinstance(no_op, BaseException) and no_op.append is None
    assert (no_op.version, no_op.state) == (2, Total(total=3))
    assert [o.version for o in (first, second, last) if not isinstance(o, BaseException)] == [
        1,
        2,
        3,
    ]
    assert [r["stream_position"] for r in await recorded(db, "counter:r")] == [1, 2, 3]


def claims_on_seven(events: Sequence[Any], state: Any) -> tuple[list[str], list[str]]:
    return (["lucky:seven"], []) if any(e.amount == 7 for e in events) else ([], [])


async def test_a_unique_key_taken_refuses_only_the_command_that_claims_it(
    db: Database, store: EventStore
) -> None:
    # given the key lucky:seven held by another stream
    executor = CommandExecutor(store)
    await executor.execute("counter:holder", COUNTER, add(7), keys=claims_on_seven)

    # when a command claiming it arrives between two others on another stream
    outcomes = await asyncio.gather(
        *(
            executor.execute("counter:k", COUNTER, c, keys=claims_on_seven)
            for c in (add(1), add(7), add(2))
        ),
        return_exceptions=True,
    )

    # then only that command is refused; the others landed
    assert isinstance(outcomes[1], AlreadyExistsError)
    assert [r["stream_position"] for r in await recorded(db, "counter:k")] == [1, 2]
    assert (await CommandExecutor(store).state_of("counter:k", COUNTER))[1] == Total(total=3)


class LostAnswerStore(EventStore):
    """Commits a group's append, then loses the answer, as a dropped connection would."""

    async def append_parts(
        self,
        stream_id: str,
        expected_version: int,
        parts: Sequence[AppendPart],
        *,
        claim: Sequence[str] = (),
        release: Sequence[str] = (),
        guards: Mapping[str, int] | None = None,
    ) -> list[AppendResult]:
        await super().append_parts(
            stream_id, expected_version, parts, claim=claim, release=release, guards=guards
        )
        raise ConnectionResetError("the answer to the append was lost")


async def test_a_group_whose_answer_is_lost_is_never_recorded_twice(db: Database) -> None:
    # given a store whose group appends commit but never answer
    executor = CommandExecutor(LostAnswerStore(db.pool, CODEC))

    # when three commands arrive together
    outcomes = await asyncio.gather(
        *(executor.execute("counter:lost", COUNTER, add(n)) for n in (1, 2, 3)),
        return_exceptions=True,
    )

    # then every caller sees the failure (none is told it failed cleanly or succeeded) and
    # the three events are recorded exactly once: nothing was tried again behind them
    assert all(isinstance(o, ConnectionResetError) for o in outcomes)
    assert [r["stream_position"] for r in await recorded(db, "counter:lost")] == [1, 2, 3]


async def test_replicas_grouping_on_one_stream_still_give_every_command_its_own_version(
    db: Database, store: EventStore
) -> None:
    # given three replicas (own caches, own queues), each with ten callers at once
    replicas = [CommandExecutor(store) for _ in range(3)]

    # when all thirty commands execute
    outcomes = await asyncio.gather(
        *(r.execute("counter:many", COUNTER, add(1)) for r in replicas for _ in range(10))
    )

    # then every command landed on a version of its own, with no gap and none lost
    assert sorted(o.version for o in outcomes) == list(range(1, 31))
    rows = await recorded(db, "counter:many")
    assert [r["stream_position"] for r in rows] == list(range(1, 31))
    assert (await CommandExecutor(store).state_of("counter:many", COUNTER))[1].total == 30


async def test_a_group_shares_its_guards_and_a_guard_that_moved_refuses_every_command(
    db: Database, store: EventStore
) -> None:
    # given the guard stream policy:registry at version 1
    executor = CommandExecutor(store)
    await executor.execute("policy:registry", COUNTER, add(1))

    # when three commands decided under version 0 of it arrive together
    stale = await asyncio.gather(
        *(
            executor.execute("counter:guarded", COUNTER, add(n), guards={"policy:registry": 0})
            for n in (1, 2, 3)
        ),
        return_exceptions=True,
    )
    # then each is told to decide again (its caller rebuilds it), and nothing is recorded
    assert all(isinstance(o, StaleGuardError) for o in stale)
    assert await recorded(db, "counter:guarded") == []

    # when two decided under version 1 arrive with one decided under version 0 between them
    mixed = await asyncio.gather(
        *(
            executor.execute("counter:guarded", COUNTER, add(n), guards={"policy:registry": v})
            for n, v in ((1, 1), (2, 0), (3, 1))
        ),
        return_exceptions=True,
    )
    # then the two current ones land, each group in a transaction of its own (one append
    # holds one set of guards), and the stale one alone is refused
    assert isinstance(mixed[1], StaleGuardError)
    rows = await recorded(db, "counter:guarded")
    assert [r["stream_position"] for r in rows] == [1, 2]
    assert len({r["tx_id"] for r in rows}) == 2
    assert (await CommandExecutor(store).state_of("counter:guarded", COUNTER))[1].total == 4


async def test_seeded_commands_group_and_their_retries_are_answered_with_what_they_recorded(
    db: Database, store: EventStore
) -> None:
    # given ten commands under idempotency seeds of their own, with a second copy of the
    # fourth among them (a client retrying while its first try is still queued)
    executor = CommandExecutor(store)
    calls = [(f"key-{n}", n) for n in range(1, 11)]
    calls.insert(5, ("key-4", 4))

    # when they all execute at once
    first = await asyncio.gather(
        *(executor.execute("counter:seeded", COUNTER, add(n), id_seed=k) for k, n in calls)
    )

    # then ten events are recorded, the two copies of key-4 answered with the same one
    rows = await recorded(db, "counter:seeded")
    assert len(rows) == 10
    copies = [o for (k, _), o in zip(calls, first, strict=True) if k == "key-4"]
    assert [o.replayed for o in copies] == [False, True]
    assert copies[0].events == copies[1].events == [Added(amount=4)]
    assert copies[0].version == copies[1].version
    # when every one is retried from another replica (its answer was lost)
    again = await asyncio.gather(
        *(
            CommandExecutor(store).execute("counter:seeded", COUNTER, add(n), id_seed=k)
            for k, n in calls
        )
    )
    # then each gets its first answer again and nothing more is recorded
    assert [(o.events, o.version) for o in again] == [(o.events, o.version) for o in first]
    assert all(o.replayed for o in again)
    assert len(await recorded(db, "counter:seeded")) == 10
    assert (await CommandExecutor(store).state_of("counter:seeded", COUNTER))[1].total == 55


async def test_a_copy_under_a_newer_seed_is_answered_by_what_its_previous_seed_recorded(
    db: Database, store: EventStore
) -> None:
    # given commands recorded under seeds of an earlier window ("w1-n")
    executor = CommandExecutor(store)
    first = await asyncio.gather(
        *(
            executor.execute("counter:windows", COUNTER, add(n), id_seed=f"w1-{n}")
            for n in (1, 2, 3)
        )
    )

    # when copies arrive in the next window, together with a command that is new, each
    # naming the earlier window's seed as its previous one: queued together on one
    # process, and alone on another replica
    together = await asyncio.gather(
        *(
            executor.execute(
                "counter:windows", COUNTER, add(n), id_seed=f"w2-{n}", previous_seed=f"w1-{n}"
            )
            for n in (1, 2, 3, 4)
        )
    )
    alone = await CommandExecutor(store).execute(
        "counter:windows", COUNTER, add(2), id_seed="w2-2", previous_seed="w1-2"
    )

    # then the copies are answered with what the earlier window recorded, and only the new
    # command is recorded
    assert [(o.events, o.version, o.replayed) for o in together[:3]] == [
        (o.events, o.version, True) for o in first
    ]
    assert together[3].events == [Added(amount=4)] and not together[3].replayed
    assert (alone.events, alone.version, alone.replayed) == (
        first[1].events,
        first[1].version,
        True,
    )
    assert len(await recorded(db, "counter:windows")) == 4


async def test_an_original_and_its_copy_under_the_next_window_never_share_a_group(
    db: Database,
) -> None:
    # given a group of two commands whose append is held at the gate
    store = GatedStore(db.pool, CODEC)
    executor = CommandExecutor(store)
    blockers = [
        asyncio.create_task(executor.execute("counter:race", COUNTER, add(n))) for n in (7, 8)
    ]
    await store.waiting.wait()

    # when a command under seed "w1" and its copy from the next window queue behind it
    original = asyncio.create_task(executor.execute("counter:race", COUNTER, add(1), id_seed="w1"))
    copy = asyncio.create_task(
        executor.execute("counter:race", COUNTER, add(1), id_seed="w2", previous_seed="w1")
    )
    await asyncio.sleep(0)  # lets them reach the queue
    store.gate.set()
    await asyncio.gather(*blockers)
    first, again = await original, await copy

    # then the copy waits for the original's turn and is answered with what it recorded
    assert not first.replayed and first.events == [Added(amount=1)]
    assert again.replayed and (again.events, again.version) == (first.events, first.version)
    assert len(await recorded(db, "counter:race")) == 3


class GatedStore(EventStore):
    """Holds every group append until the test opens the gate."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def append_parts(
        self,
        stream_id: str,
        expected_version: int,
        parts: Sequence[AppendPart],
        *,
        claim: Sequence[str] = (),
        release: Sequence[str] = (),
        guards: Mapping[str, int] | None = None,
    ) -> list[AppendResult]:
        self.waiting.set()
        await self.gate.wait()
        return await super().append_parts(
            stream_id, expected_version, parts, claim=claim, release=release, guards=guards
        )


async def test_callers_that_go_away_neither_strand_the_others_nor_record_what_was_not_taken(
    db: Database,
) -> None:
    # given a group of two commands whose append is in flight (held at a gate)
    store = GatedStore(db.pool, CODEC)
    executor = CommandExecutor(store)
    first = asyncio.create_task(executor.execute("counter:gone", COUNTER, add(1)))
    second = asyncio.create_task(executor.execute("counter:gone", COUNTER, add(2)))
    await store.waiting.wait()
    # and a third command queued behind it
    third = asyncio.create_task(executor.execute("counter:gone", COUNTER, add(4)))
    await asyncio.sleep(0)  # lets it reach the queue

    # when the caller of the first (in flight) and of the third (not taken yet) go away
    first.cancel()
    third.cancel()
    store.gate.set()

    # then the second caller gets its answer, the first's command landed with it (its
    # append was under way), and the third's was never recorded
    outcome = await second
    assert (outcome.version, outcome.state.total) == (2, 3)
    for gone in (first, third):
        with pytest.raises(asyncio.CancelledError):
            await gone
    assert [r["stream_position"] for r in await recorded(db, "counter:gone")] == [1, 2]
    assert not executor._turns
