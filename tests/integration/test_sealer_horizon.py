"""The sealer's horizon from the lock table (migration 0014's SQL): arithmetic on ids, run
by the real Postgres functions a seal round calls."""

from __future__ import annotations

import pytest

from tests.support.database import Database

EPOCH = 2**32


async def full_xid(db: Database, xid: int, xmax: int) -> int:
    value: int = await db.pool.fetchval("SELECT sealer_full_xid($1, $2)", xid, xmax)
    return value


async def horizon(
    db: Database, xmin: int, xmax: int, holders: list[int], pids: list[int], xids: list[int]
) -> int:
    value: int = await db.pool.fetchval(
        "SELECT sealer_horizon($1, $2, $3, $4, $5)", xmin, xmax, holders, pids, xids
    )
    return value


@pytest.mark.parametrize(
    ("xid", "xmax", "full"),
    [
        (4_294_967_290, EPOCH + 5, 4_294_967_290),  # just wrapped: still epoch 0, just below
        (3, EPOCH + 5, EPOCH + 3),
        (9, EPOCH + 5, EPOCH + 9),  # drawn after the snapshot: at or above xmax
        (700, 1_000, 700),  # no wraparound in sight
        (1_000, 1_000, 1_000),
    ],
)
async def test_a_32_bit_id_is_placed_beside_the_snapshot_across_a_wraparound(
    db: Database, xid: int, xmax: int, full: int
) -> None:
    assert await full_xid(db, xid, xmax) == full


async def test_the_horizon_is_the_least_appender_id_or_the_snapshot_xmax(db: Database) -> None:
    # no appender: everything that ended before the snapshot
    assert await horizon(db, 100, 120, [], [], []) == 120
    # appenders 7 and 8 with ids 110 and 115 (and a subtransaction id 118 of pid 7)
    assert await horizon(db, 100, 120, [7, 8], [7, 7, 8], [110, 118, 115]) == 110
    # an appender drawn after the snapshot does not lower it
    assert await horizon(db, 100, 120, [9], [9], [125]) == 120
    # ids of sessions that hold no appender lock do not count
    assert await horizon(db, 100, 120, [9], [9, 4], [125, 101]) == 120


async def test_a_holder_without_a_known_id_falls_back_to_the_xmin(db: Database) -> None:
    assert await horizon(db, 100, 120, [7, 8], [8], [115]) == 100
