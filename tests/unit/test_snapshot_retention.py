"""Which view snapshots are taken and kept (projections.snapshots): pure, no database."""

from __future__ import annotations

from projections.snapshots import due_positions, retained_positions


def test_the_newest_are_kept_and_older_ones_only_at_the_thinned_stride() -> None:
    # given snapshots every 10 events up to 200
    positions = range(10, 201, 10)
    # when 3 are kept densely and older ones every 40
    kept = retained_positions(positions, every=10, keep=3, thin=4)
    # then the newest 3 and the multiples of 40 below them remain
    assert kept == {180, 190, 200, 40, 80, 120, 160}


def test_a_worker_far_behind_takes_only_what_it_would_keep() -> None:
    # given no snapshot yet over a log of 205 events
    due = due_positions(205, 0, every=10, keep=3, thin=4)
    # then it takes the multiples of 40 and the newest 3 multiples of 10, oldest first
    assert due == [40, 80, 120, 160, 180, 190, 200]


def test_nothing_is_due_until_the_next_multiple_is_sealed() -> None:
    assert due_positions(209, 200, every=10, keep=3, thin=4) == []
    assert due_positions(210, 200, every=10, keep=3, thin=4) == [210]
