"""Snapshots of the registry views are derived data: they change no answer.

Covers: whole-registry time travel from snapshots equals the fold from 0 at random
positions over random histories (and after dropping every snapshot); snapshots folded on
from round to round in kept scratch tables equal the fold from 0; a snapshot of other
projection code (another fingerprint) is never read; a crash while a snapshot is written
leaves nothing; the worker takes the due snapshots as the leader and prunes to the
retention rule; a read folds only the events after the nearest snapshot; snapshots spaced
by the registry's size change no answer; a snapshot copied from the live views stands at
their position and changes no answer, and is left to the scratch fold when they stand
apart; a snapshot stored in many chunks restores every row.
"""

from __future__ import annotations

import asyncio
import itertools
import random

import asyncpg
import pytest

from eventlog.db import connect
from projections.base import Names
from projections.registry_state import REGISTRY_PROJECTIONS, registry_as_of, views_as_of
from projections.snapshot_worker import ScratchViews, SnapshotWorker, take_due_snapshots
from projections.snapshots import (
    drop_snapshots,
    fingerprint,
    nearest_snapshots,
    retained_positions,
    save_snapshot,
    snapshot_positions,
    snapshot_rows,
    spacing,
)
from projections.time_travel import folded_views
from projections.views import model_catalogue
from tests.support.database import Database
from tests.support.registry_history import Registry, random_history
from tests.support.waiting import eventually


async def checksums(conn: asyncpg.Connection, position: int, *, snapshots: bool) -> dict[str, str]:
    async with views_as_of(conn, position, snapshots=snapshots) as (_, names):
        return {p.name: await p.checksum(conn, names[p.name]) for p in REGISTRY_PROJECTIONS}


@pytest.mark.parametrize("seed", [3, 17])
async def test_answers_from_snapshots_equal_the_fold_from_zero_at_random_positions(
    db: Database, seed: int
) -> None:
    # given a random history, and snapshots every 9 events (newest 4, older ones every 18)
    rng = random.Random(seed)
    reg = Registry(db)
    await random_history(reg, rng, 200)
    head = await reg.seal()
    conn = await db.connect()
    taken = await take_due_snapshots(conn, REGISTRY_PROJECTIONS, every=9, keep=4, thin=2)
    assert taken and max(taken) == head // 9 * 9

    positions = sorted({1, head, *rng.sample(range(1, head), 10), *(p + 1 for p in taken)})
    for position in positions:
        # when the registry is read as of the position from the snapshots, and from position 0
        from_snapshots = await registry_as_of(conn, position)
        from_zero = await registry_as_of(conn, position, snapshots=False)
        # then both answers are the same, and so is every table of every view
        assert from_snapshots == from_zero, f"at position {position}"
        assert await checksums(conn, position, snapshots=True) == await checksums(
            conn, position, snapshots=False
        ), f"at position {position}"

    # when every snapshot is dropped, then the answers stay the same
    before = [await registry_as_of(conn, p) for p in positions]
    assert await drop_snapshots(conn) > 0
    assert [await registry_as_of(conn, p) for p in positions] == before


async def test_a_read_folds_only_the_events_after_the_nearest_snapshot(db: Database) -> None:
    # given snapshots every 10 events
    reg = Registry(db)
    await random_history(reg, random.Random(5), 120)
    head = await reg.seal()
    conn = await db.connect()
    await take_due_snapshots(conn, REGISTRY_PROJECTIONS, every=10, keep=1000, thin=1)

    # when a position is asked for, then the fold starts at most 10 events below it
    for position in range(1, head + 1, 7):
        starts = await nearest_snapshots(conn, REGISTRY_PROJECTIONS, position)
        assert set(starts) == {p.name for p in REGISTRY_PROJECTIONS}
        assert all(position - 10 < start <= position for start in starts.values()) or (
            position < 10 and set(starts.values()) == {0}
        ), (position, starts)


async def test_snapshots_wait_longer_as_the_registry_grows_and_answers_stay_the_same(
    db: Database,
) -> None:
    # given a growing history, and snapshots every 5 events or one per 4 rows of the last
    reg, rng = Registry(db), random.Random(11)
    await random_history(reg, rng, 300)
    head = await reg.seal()
    conn = await db.connect()

    # when the worker takes what is due
    taken = await take_due_snapshots(
        conn, REGISTRY_PROJECTIONS, every=5, keep=1000, thin=2, rows_per_event=4
    )

    # then each snapshot is the first multiple of the spacing its predecessor's size asked
    # for, and the gaps grew with the registry: fewer snapshots than one every 5 events
    gaps = []
    for before, after in itertools.pairwise(taken):
        rows = await snapshot_rows(conn, REGISTRY_PROJECTIONS, before)
        gap = spacing(rows, every=5, thin=2, rows_per_event=4)
        assert after == before // gap * gap + gap, (before, after, rows)
        gaps.append(gap)
    assert taken[0] == 5
    assert max(gaps) >= 4 * 5 and len(taken) < head // 5 // 2
    # and a read folds at most one spacing of events after the snapshot it starts from
    for position in range(1, head + 1, 13):
        start = (await nearest_snapshots(conn, REGISTRY_PROJECTIONS, position))[
            REGISTRY_PROJECTIONS[0].name
        ]
        rows = await snapshot_rows(conn, REGISTRY_PROJECTIONS, start) if start else 0
        assert position - start < spacing(rows, every=5, thin=2, rows_per_event=4)
        # and reading from the snapshots answers what the fold from 0 answers
        assert await registry_as_of(conn, position) == await registry_as_of(
            conn, position, snapshots=False
        ), position


async def take_one_due_from_live(conn: asyncpg.Connection, head: int) -> tuple[int, list[int]]:
    """The grid's spacing that leaves exactly one snapshot due below ``head``, and what the
    worker took with ``live``."""
    every = head // 2 + 1
    taken = await take_due_snapshots(
        conn, REGISTRY_PROJECTIONS, every=every, keep=10, thin=2, live=True
    )
    return every, taken


async def test_a_snapshot_from_the_live_views_stands_where_they_stand_and_changes_no_answer(
    db: Database,
) -> None:
    # given a history folded into the live views, and one snapshot due on the grid below
    # the position they stand at
    reg, rng = Registry(db), random.Random(23)
    await random_history(reg, rng, 120)
    head = await reg.project(*REGISTRY_PROJECTIONS)
    conn = await db.connect()

    # when the worker takes what is due, from the live views where it can
    every, taken = await take_one_due_from_live(conn, head)

    # then the snapshot stands where the live views stand, not at the grid position
    assert every < head
    assert taken == [head]
    starts = await nearest_snapshots(conn, REGISTRY_PROJECTIONS, head)
    assert starts == {p.name: head for p in REGISTRY_PROJECTIONS}
    # and reading from it answers what the fold from 0 answers, at it and after it
    await random_history(reg, rng, 40)
    later = await reg.seal()
    for position in sorted({head, later, *rng.sample(range(head, later + 1), 5)}):
        assert await registry_as_of(conn, position) == await registry_as_of(
            conn, position, snapshots=False
        ), position
        assert await checksums(conn, position, snapshots=True) == await checksums(
            conn, position, snapshots=False
        ), position


async def test_live_views_at_different_positions_leave_the_snapshot_to_the_scratch_fold(
    db: Database,
) -> None:
    # given live views of which only the catalogue has folded the latest events
    reg, rng = Registry(db), random.Random(29)
    await random_history(reg, rng, 80)
    first = await reg.project(*REGISTRY_PROJECTIONS)
    await random_history(reg, rng, 40)
    head = await reg.project(model_catalogue.PROJECTION)
    assert first != head
    conn = await db.connect()

    # when the worker takes what is due
    every, taken = await take_one_due_from_live(conn, head)

    # then it is taken on the grid, from the scratch fold, and answers as the fold from 0
    assert taken == [every]
    assert await registry_as_of(conn, head) == await registry_as_of(conn, head, snapshots=False)


async def test_a_snapshot_of_other_projection_code_is_never_read(db: Database) -> None:
    # given a snapshot at the head whose catalogue rows were folded by other code
    reg = Registry(db)
    await reg.register_model("churn", owner="team-risk", model_id="m1")
    await reg.register_model("fraud", owner="team-risk", model_id="m2")
    head = await reg.seal()
    conn = await db.connect()
    truth = await registry_as_of(conn, head, snapshots=False)
    catalogue = model_catalogue.PROJECTION
    await conn.execute(
        "INSERT INTO view_snapshots (projection, fingerprint, log_position, table_name, row_count, rows)"
        " VALUES ($1, 'older-code', $2, 'model_catalogue', 0, '{}')",
        catalogue.name,
        head,
    )
    assert fingerprint(catalogue) != "older-code"

    # when the registry is read at the head, then the stale snapshot is ignored
    assert await registry_as_of(conn, head) == truth
    assert len(truth.models) == 2
    assert (await nearest_snapshots(conn, [catalogue], head))[catalogue.name] == 0

    # and when the worker runs, it prunes it
    await take_due_snapshots(conn, REGISTRY_PROJECTIONS, every=1, keep=3, thin=100)
    left = await conn.fetchval(
        "SELECT count(*) FROM view_snapshots WHERE fingerprint = 'older-code'"
    )
    assert left == 0


async def test_a_crash_while_a_snapshot_is_written_leaves_nothing(db: Database) -> None:
    # given a fold of the registry, whose last view's table vanishes mid-snapshot
    reg = Registry(db)
    await random_history(reg, random.Random(8), 40)
    head = await reg.seal()
    conn = await db.connect()
    async with folded_views(conn, REGISTRY_PROJECTIONS, head) as names:
        broken = dict(names)
        last = REGISTRY_PROJECTIONS[-1]
        broken[last.name] = Names({t.name: "no_such_table" for t in last.tables})
        # when the snapshot is written, then it fails
        with pytest.raises(asyncpg.UndefinedTableError):
            await save_snapshot(conn, REGISTRY_PROJECTIONS, broken, head)
    # and no part of it was stored: no view reads a snapshot there
    assert await conn.fetchval("SELECT count(*) FROM view_snapshots") == 0
    assert set((await nearest_snapshots(conn, REGISTRY_PROJECTIONS, head)).values()) == {0}


async def test_the_leading_worker_keeps_snapshots_due_and_pruned(db: Database) -> None:
    # given two snapshot workers (one leads, one stands by) and a growing history
    reg = Registry(db)
    await random_history(reg, random.Random(2), 60)
    await reg.seal()
    workers = [
        SnapshotWorker(
            lambda: connect(db.url, schema=db.schema, app_role=db.app_role),
            db.schema,
            REGISTRY_PROJECTIONS,
            every=5,
            keep=3,
            thin=2,
            poll_interval=0.05,
            standby_interval=0.05,
        )
        for _ in range(2)
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        await random_history(reg, random.Random(4), 60)
        head = await reg.seal()
        conn = await db.connect()

        # then the leader takes the snapshot due at the head, and keeps what retention says
        async def due_and_pruned() -> bool:
            positions = await snapshot_positions(conn, REGISTRY_PROJECTIONS[0])
            return (
                bool(positions)
                and positions[-1] == head // 5 * 5
                and set(positions) == retained_positions(positions, every=5, keep=3, thin=2)
            )

        await eventually(due_and_pruned, what="snapshot at the head, older ones pruned")
        positions = await snapshot_positions(conn, REGISTRY_PROJECTIONS[0])
        assert len(positions) >= 3
        assert sum(w.leading for w in workers) == 1
        # every view has the same snapshots
        for projection in REGISTRY_PROJECTIONS:
            assert await snapshot_positions(conn, projection) == positions
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_snapshots_folded_on_from_round_to_round_equal_the_fold_from_zero(
    db: Database,
) -> None:
    # given snapshot rounds that keep their scratch views from one round to the next
    reg, rng = Registry(db), random.Random(31)
    await reg.connect()
    conn = await db.connect()
    scratch = ScratchViews(conn, REGISTRY_PROJECTIONS)

    async def rounds(n: int) -> list[int]:
        taken: list[int] = []
        for _ in range(n):
            await random_history(reg, rng, 50)
            await reg.seal()
            taken += await take_due_snapshots(
                conn, REGISTRY_PROJECTIONS, every=7, keep=1000, thin=2, scratch=scratch
            )
        return taken

    async def restore_what_the_log_folds_to(positions: list[int]) -> None:
        assert len(positions) > 3
        for position in positions:
            assert await checksums(conn, position, snapshots=True) == await checksums(
                conn, position, snapshots=False
            )

    try:
        # when history is written between three rounds
        # then each snapshot restores exactly the views the log folds to at its position
        await restore_what_the_log_folds_to(await rounds(3))
        # and when every snapshot is dropped, the next round goes back behind its scratch
        # views and takes them again, as exactly
        await drop_snapshots(conn)
        await restore_what_the_log_folds_to(await rounds(1))
    finally:
        await scratch.close()


async def test_a_snapshot_stored_in_many_chunks_restores_every_row(db: Database) -> None:
    # given a registry whose views hold more rows than a chunk
    reg = Registry(db)
    await random_history(reg, random.Random(12), 80)
    head = await reg.seal()
    conn = await db.connect()

    # when its snapshot is stored three rows to a chunk
    async with folded_views(conn, REGISTRY_PROJECTIONS, head) as names:
        await save_snapshot(conn, REGISTRY_PROJECTIONS, names, head, chunk_rows=3)

    # then every table is stored, each in as many chunks as its rows need (an empty one
    # in one), and the registry read from the snapshot equals the fold from 0
    stored = await conn.fetch(
        "SELECT table_name, count(*) AS chunks, sum(row_count)::int AS rows FROM view_snapshots"
        " GROUP BY table_name"
    )
    tables = {t.name for p in REGISTRY_PROJECTIONS for t in p.tables}
    assert {r["table_name"] for r in stored} == tables
    assert all(r["chunks"] == max(1, -(-r["rows"] // 3)) for r in stored)
    assert max(r["chunks"] for r in stored) > 1
    assert await checksums(conn, head, snapshots=True) == await checksums(
        conn, head, snapshots=False
    )
