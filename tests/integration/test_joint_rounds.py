"""Joint projection rounds (projections.rounds): the live views of one worker advanced in
one transaction write exactly what their own rounds would, and fail as a whole.

Covers: views advanced jointly, from different positions and in small batches, equal the
fold of the log from 0; a checkpoint moved by another applier while the round reads the
log rolls the whole round back; a view whose apply fails, or a leader that lost its role,
leaves every view and checkpoint as it was; a view being rebuilt is left to its own
round; leaders answered by a round share the next with those who asked during it; a
running worker keeps every registry view current through joint rounds.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from eventlog.leadership import Term
from eventlog.log import LoggedEvent
from eventlog.sealer import sealed_channel
from projections.base import Names, Projection
from projections.registry_state import REGISTRY_PROJECTIONS, views_as_of
from projections.rounds import (
    CheckpointMovedError,
    JointRounds,
    Member,
    Progress,
    RoleLostError,
    advance_live_together,
)
from projections.runner import (
    ProjectionWorker,
    advance,
    ensure_projection,
    generations,
    start_rebuild,
)
from projections.tail import LogTail
from projections.views import model_catalogue, model_versions
from tests.support.database import Database
from tests.support.registry_history import Registry, random_history
from tests.support.waiting import eventually


def members(conn: asyncpg.Connection, projections: Sequence[Projection]) -> list[Member]:
    """Each projection led on ``conn``, its role held (its term not ended)."""
    return [Member(p, Term(conn, asyncio.Event())) for p in projections]


async def history(db: Database, seed: int, commands: int = 120) -> tuple[Registry, int]:
    reg = Registry(db)
    await random_history(reg, random.Random(seed), commands)
    head = await reg.seal()
    for projection in REGISTRY_PROJECTIONS:
        await ensure_projection(reg.conn, projection)
    return reg, head


async def live_checksums(conn: asyncpg.Connection) -> dict[str, str]:
    return {p.name: await p.checksum(conn, p.view_names()) for p in REGISTRY_PROJECTIONS}


async def folded_checksums(conn: asyncpg.Connection, position: int) -> dict[str, str]:
    async with views_as_of(conn, position, snapshots=False) as (_, names):
        return {p.name: await p.checksum(conn, names[p.name]) for p in REGISTRY_PROJECTIONS}


async def positions(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT projection, log_position FROM projection_checkpoints")
    return {r["projection"]: r["log_position"] for r in rows}


def failing(projection: Projection) -> Projection:
    """The same projection, but its apply writes part of the batch and then fails."""

    async def apply(conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]) -> None:
        await projection.fold(conn, names, events[:1])
        raise RuntimeError("the view's fold failed")

    return replace(projection, fold=apply)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [5, 23])
async def test_views_advanced_jointly_equal_the_fold_from_zero(db: Database, seed: int) -> None:
    # given a random history, and one view already ahead of the others
    reg, head = await history(db, seed)
    conn = reg.conn
    ahead = (await generations(conn, model_catalogue.PROJECTION.name))[0]
    await advance(conn, model_catalogue.PROJECTION, ahead, head=head, batch=13)

    # when joint rounds of at most 10 events run until every view reports it caught up
    answers: dict[str, Progress] = {}
    rounds = 0
    while not answers or not all(a.caught_up for a in answers.values()):
        answers = await advance_live_together(conn, members(conn, REGISTRY_PROJECTIONS), batch=10)
        rounds += 1
        assert rounds < 10_000, "joint rounds never caught up"

    # then every view answers for all of them, stands at the head, and equals the fold from 0
    assert set(answers) == {p.name for p in REGISTRY_PROJECTIONS}
    assert set((await positions(conn)).values()) == {head}
    assert await live_checksums(conn) == await folded_checksums(conn, head)


class HookedTail(LogTail):
    """A log tail that runs ``hook(up_to, limit)`` before each read of a round."""

    def __init__(self, hook: Callable[[int, int], Awaitable[None]]) -> None:
        super().__init__()
        self.hook = hook

    async def read(
        self,
        conn: asyncpg.Connection,
        after: int,
        limit: int,
        *,
        up_to: int,
        types: frozenset[str] | None = None,
    ) -> list[LoggedEvent]:
        await self.hook(up_to, limit)
        return await super().read(conn, after, limit, up_to=up_to, types=types)


def moving_tail(other: asyncpg.Connection, projection: Projection) -> HookedTail:
    """A log tail that lets another applier apply one view's batch while the round reads."""

    async def apply_elsewhere(up_to: int, limit: int) -> None:
        live = (await generations(other, projection.name))[0]
        await advance(other, projection, live, head=up_to, batch=limit)

    return HookedTail(apply_elsewhere)


async def test_a_checkpoint_moved_by_another_applier_rolls_the_whole_round_back(
    db: Database,
) -> None:
    # given a history no view has applied yet
    reg, _ = await history(db, 7)
    conn, other = reg.conn, await db.connect()
    before, at = await live_checksums(conn), await positions(conn)

    # when another applier applies the versions view's batch while the joint round reads it
    tail = moving_tail(other, model_versions.PROJECTION)
    with pytest.raises(CheckpointMovedError):
        await advance_live_together(conn, members(conn, REGISTRY_PROJECTIONS), batch=50, tail=tail)

    # then only that applier's batch landed: every other view and checkpoint is as it was
    after, moved = await live_checksums(conn), await positions(conn)
    others = {p.name for p in REGISTRY_PROJECTIONS} - {model_versions.PROJECTION.name}
    assert {n: after[n] for n in others} == {n: before[n] for n in others}
    assert {n: moved[n] for n in others} == {n: at[n] for n in others}
    assert moved[model_versions.PROJECTION.name] > at[model_versions.PROJECTION.name]


async def test_a_view_whose_apply_fails_leaves_every_view_as_it_was(db: Database) -> None:
    # given a history, and a versions view whose fold fails after writing part of a batch
    reg, _ = await history(db, 11)
    conn = reg.conn
    before, at = await live_checksums(conn), await positions(conn)
    views = [
        failing(p) if p.name == model_versions.PROJECTION.name else p for p in REGISTRY_PROJECTIONS
    ]

    # when they are advanced jointly
    with pytest.raises(RuntimeError, match="fold failed"):
        await advance_live_together(conn, members(conn, views), batch=1000)

    # then nothing of the round is kept: no view row, no checkpoint
    assert await live_checksums(conn) == before
    assert await positions(conn) == at


async def test_a_round_for_a_leader_that_lost_its_role_keeps_nothing(db: Database) -> None:
    # given a history, and the catalogue's leader whose session has just ended
    reg, _ = await history(db, 13)
    conn = reg.conn
    before, at = await live_checksums(conn), await positions(conn)
    led = members(conn, REGISTRY_PROJECTIONS)
    lost = next(m for m in led if m.projection.name == model_catalogue.PROJECTION.name)
    lost.term.ended.set()

    # when the views are advanced jointly
    with pytest.raises(RoleLostError, match=model_catalogue.PROJECTION.name):
        await advance_live_together(conn, led, batch=1000)

    # then nothing of the round is kept
    assert await live_checksums(conn) == before
    assert await positions(conn) == at


async def test_a_view_being_rebuilt_is_left_to_its_own_round(db: Database) -> None:
    # given a history and a rebuild of the versions view under way
    reg, head = await history(db, 17)
    conn = reg.conn
    await start_rebuild(conn, model_versions.PROJECTION)
    at = await positions(conn)

    # when the views are advanced jointly
    answers = await advance_live_together(conn, members(conn, REGISTRY_PROJECTIONS), batch=10_000)

    # then every other view reached the head; the one being rebuilt is not answered or moved
    assert model_versions.PROJECTION.name not in answers
    assert all(a.caught_up for a in answers.values())
    assert len(answers) == len(REGISTRY_PROJECTIONS) - 1
    rows = await conn.fetch(
        "SELECT status, log_position FROM projection_checkpoints WHERE projection = $1",
        model_versions.PROJECTION.name,
    )
    assert {(r["status"], r["log_position"]) for r in rows} == {
        ("live", at[model_versions.PROJECTION.name]),
        ("building", 0),
    }
    assert head > 0


async def test_a_worker_keeps_every_view_current_through_joint_rounds(db: Database) -> None:
    # given a worker leading every registry view
    worker = ProjectionWorker(
        db.connect,
        db.schema,
        REGISTRY_PROJECTIONS,
        channel=sealed_channel(db.schema),
        poll_interval=0.05,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        # when a history is written and sealed while it runs
        reg = Registry(db)
        await random_history(reg, random.Random(29), 150)
        head = await reg.seal()

        # then every view reaches the head, equal to the fold from 0, by joint rounds
        async def current() -> bool:
            return set((await positions(reg.conn)).values()) == {head}

        await eventually(current, what="every view at the head")
        assert await live_checksums(reg.conn) == await folded_checksums(reg.conn, head)
        assert worker.rounds is not None and worker.rounds.joint > 0
    finally:
        stop.set()
        await task


class CountedRounds(JointRounds):
    """Joint rounds that note how many leaders each round carried."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sizes: list[int] = []

    async def _joint(self, group: list[Any]) -> dict[str, Progress]:
        self.sizes.append(len(group))
        return await super()._joint(group)


async def test_leaders_answered_by_a_round_share_the_next_with_those_who_asked_meanwhile(
    db: Database,
) -> None:
    # given a history, three views whose leaders ask for a round, and the others, whose
    # leaders ask while that round reads the log
    reg, _ = await history(db, 11)
    everyone = members(reg.conn, REGISTRY_PROJECTIONS)
    first, late = everyone[:3], everyone[3:]
    assert len(late) >= 2
    asked: list[asyncio.Task[Progress | None]] = []

    async def late_ones_ask(up_to: int, limit: int) -> None:
        if not asked:  # on the first round's read
            asked.extend(asyncio.create_task(rounds.advance(m.projection, m.term)) for m in late)
            for _ in range(3):
                await asyncio.sleep(0)  # their asks reach the rounds

    rounds = CountedRounds(batch=1000, tail=HookedTail(late_ones_ask))

    async def twice(member: Member) -> Progress | None:
        await rounds.advance(member.projection, member.term)
        return await rounds.advance(member.projection, member.term)

    # when the first three ask again as soon as their round answers (more was sealed)
    answers = await asyncio.gather(*(twice(m) for m in first))
    answers += await asyncio.gather(*asked)

    # then the second round carried every view: the late ones did not go on their own
    assert rounds.sizes == [3, len(everyone)]
    assert all(a is not None for a in answers)
