"""The sealer's horizon from the lock table (eventlog.sealer): pure arithmetic on ids."""

from __future__ import annotations

from eventlog.sealer import appender_horizon, full_xid

EPOCH = 2**32


def test_a_32_bit_id_is_placed_beside_the_snapshot_across_a_wraparound() -> None:
    xmax = EPOCH + 5  # the counter has just wrapped into epoch 1
    assert full_xid(4_294_967_290, xmax) == 4_294_967_290  # still epoch 0, just below
    assert full_xid(3, xmax) == EPOCH + 3
    assert full_xid(9, xmax) == EPOCH + 9  # drawn after the snapshot: at or above xmax


def test_the_horizon_is_the_least_appender_id_or_the_snapshot_xmax() -> None:
    # no appender: everything that ended before the snapshot
    assert appender_horizon(100, 120, [], [], []) == 120
    # appenders 7 and 8 with ids 110 and 115 (and a subtransaction id 118 of pid 7)
    assert appender_horizon(100, 120, [7, 8], [7, 7, 8], [110, 118, 115]) == 110
    # an appender drawn after the snapshot does not lower it
    assert appender_horizon(100, 120, [9], [9], [125]) == 120


def test_a_holder_without_a_known_id_falls_back_to_the_xmin() -> None:
    assert appender_horizon(100, 120, [7, 8], [8], [115]) == 100
