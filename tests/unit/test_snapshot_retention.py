"""Which view snapshots are taken and kept (projections.snapshots), and the tables they are
folded in: pure, no database."""

from __future__ import annotations

from projections.base import Names
from projections.registry_state import REGISTRY_PROJECTIONS
from projections.snapshots import due_positions, retained_positions, spacing


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


def test_small_views_are_snapshotted_every_n_events() -> None:
    # given views of 900 rows, one event per 10 rows, every 100 events and thinning by 4
    # then the spacing is the configured 100, and without rows_per_event always is
    assert spacing(900, every=100, thin=4, rows_per_event=10) == 100
    assert spacing(10**9, every=100, thin=4, rows_per_event=None) == 100


def test_larger_views_wait_longer_on_the_grid_that_retention_thins() -> None:
    # given every 100 events, thinned to every 400: then the spacing grows with the rows,
    # rounded up to a divisor of 400 below it and to a multiple of 400 above it
    assert spacing(1_001, every=100, thin=4, rows_per_event=10) == 200
    assert spacing(2_001, every=100, thin=4, rows_per_event=10) == 400
    assert spacing(4_000, every=100, thin=4, rows_per_event=10) == 400
    assert spacing(4_001, every=100, thin=4, rows_per_event=10) == 800
    assert spacing(1_000_000, every=100, thin=4, rows_per_event=10) == 100_000
    # and with a thinning of 3, no multiple of 100 between 100 and 300 divides 300
    assert spacing(1_500, every=100, thin=3, rows_per_event=10) == 300


def test_due_positions_follow_the_spacing() -> None:
    # given the last snapshot at 400 and a spacing of 800: then the next is due at 800, on
    # the grid, and the one after at 1,600
    assert due_positions(1_700, 400, every=100, keep=3, thin=4, gap=800) == [800, 1_600]
    assert due_positions(799, 400, every=100, keep=3, thin=4, gap=800) == []


def test_tables_only_folded_and_copied_keep_what_the_fold_needs_and_no_search_index() -> None:
    # given the registry views' table definitions
    for projection in REGISTRY_PROJECTIONS:
        names = Names({t.name: f"{t.name}__scratch" for t in projection.tables})
        full = projection.create_statements(names, temporary=True)
        lean = projection.create_statements(names, temporary=True, lookup_indexes=False)
        # when created without lookup indexes, then every table, key, unique index and
        # trigger is still there, and no plain index is
        assert lean == [s for s in full if not s.startswith("CREATE INDEX")]
    versions = next(p for p in REGISTRY_PROJECTIONS if p.name == "model_versions")
    lean = versions.create_statements(
        Names({t.name: t.name for t in versions.tables}), lookup_indexes=False
    )
    assert any(s.startswith("CREATE TRIGGER") for s in lean)
    assert not any("USING gin" in s for s in lean)


def test_snapshots_off_the_grid_keep_the_last_of_each_thinned_stretch() -> None:
    # given snapshots taken from the live views, a little past their grid positions
    positions = [10, 20, 30, 45, 55, 70, 90, 130, 150]
    # when 2 are kept densely and older ones thinned to one per 40 events
    kept = retained_positions(positions, every=10, keep=2, thin=4)
    # then the newest 2 remain, and of the older ones the last in each stretch
    # (0, 40], (40, 80], (80, 120]
    assert kept == {130, 150, 30, 70, 90}
