"""The metric history view: paged histories, best and last values, comparisons, the domain's
fold as the oracle, rebuild equals live, time travel."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from events.metrics import MetricInput
from projections.paging import InvalidCursorError, InvalidQueryError, merge_names
from projections.views.metric_history import (
    METRIC_HISTORY,
    MetricComparison,
    MetricSample,
    MetricSeries,
    ParamComparison,
    best_metric,
    compare_versions,
    last_metric,
    metric_histories,
    metric_history,
    metric_series,
)
from projections.views.model_versions import VERSIONS
from tests.support.database import Database
from tests.support.registry_history import (
    as_of,
    check_rebuild_equals_live,
    random_history,
    record_live_positions,
    registry,
)

NAMES = merge_names(METRIC_HISTORY.view_names(), VERSIONS.view_names())
checksum = METRIC_HISTORY.checksum


async def test_a_history_comes_in_step_order_a_page_at_a_time(db: Database) -> None:
    # given a loss curve of 25 steps logged in three batches out of order, plus a holdout series
    reg = await registry(db)
    m = await reg.register_model("churn")
    v = await reg.register_version(m)
    for steps in (range(10, 25), range(5), range(5, 10)):
        await reg.log_points(
            m, v, [MetricInput(key="loss", value=1 / (s + 1), step=s) for s in steps]
        )
    await reg.log_metrics(m, v, {"loss": 0.5}, dataset="holdout", step=3)
    await reg.project(METRIC_HISTORY)

    # when it is read 10 points at a time
    points: list[MetricSample] = []
    cursor = None
    pages = 0
    while True:
        page = await metric_history(
            db.pool, NAMES, m, v, "loss", dataset="", limit=10, cursor=cursor
        )
        points += page.items
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    # then the pages hold the curve once, in step order
    assert pages == 3
    assert [p.step for p in points] == list(range(25))
    assert [p.value for p in points] == [1 / (s + 1) for s in range(25)]
    # and without a dataset every series comes, one after the other ("" sorts first)
    everything = await metric_history(db.pool, NAMES, m, v, "loss", limit=100)
    assert [(p.dataset, p.step) for p in everything.items][-2:] == [("", 24), ("holdout", 3)]
    assert await metric_series(db.pool, NAMES, m, v) == (
        MetricSeries(key="loss", dataset="", points=25, first_step=0, last_step=24),
        MetricSeries(key="loss", dataset="holdout", points=1, first_step=3, last_step=3),
    )
    # and a cursor of another metric is refused
    with pytest.raises(InvalidCursorError):
        await metric_history(db.pool, NAMES, m, v, "auc", dataset="", limit=10, cursor=cursor)
    # and every series with its first points comes in one answer, counted in full
    histories = await metric_histories(db.pool, NAMES, m, v, limit=10)
    assert [h.series for h in histories] == list(await metric_series(db.pool, NAMES, m, v))
    assert [h.samples for h in histories] == [
        (await metric_history(db.pool, NAMES, m, v, "loss", dataset="", limit=10)).items,
        (await metric_history(db.pool, NAMES, m, v, "loss", dataset="holdout", limit=10)).items,
    ]
    with pytest.raises(InvalidQueryError):
        await metric_histories(db.pool, NAMES, m, v, limit=0)


async def test_last_follows_the_domains_rule_and_best_takes_the_earliest_of_equal_values(
    db: Database,
) -> None:
    # given points where a lower step came later, and a tie of step and timestamp
    reg = await registry(db)
    m = await reg.register_model("ranker")
    v = await reg.register_version(m)
    moment = reg.last
    await reg.log_points(
        m,
        v,
        [
            MetricInput(key="auc", value=0.7, step=4, timestamp=moment),
            MetricInput(key="auc", value=0.9, step=1, timestamp=moment),
        ],
    )
    await reg.log_points(
        m,
        v,
        [
            MetricInput(key="auc", value=0.6, step=4, timestamp=moment),
            MetricInput(key="auc", value=0.9, step=2, timestamp=moment + timedelta(seconds=1)),
        ],
    )
    await reg.project(METRIC_HISTORY)

    # then the last is the later event of the (step 4, same time) tie, as the domain says
    last = await last_metric(db.pool, NAMES, m, v, "auc")
    assert last is not None
    assert (
        (last.step, last.value) == (4, 0.6) == (4, reg.metrics_state(m, v).latest["auc"][""].value)
    )
    # the best is 0.9, first reached at step 1; the lowest is 0.6
    best = await best_metric(db.pool, NAMES, m, v, "auc")
    assert best is not None
    assert (best.value, best.step) == (0.9, 1)
    worst = await best_metric(db.pool, NAMES, m, v, "auc", goal="min")
    assert worst is not None
    assert worst.value == 0.6
    assert await best_metric(db.pool, NAMES, m, v, "auc", dataset="holdout") is None
    with pytest.raises(InvalidQueryError):
        await best_metric(db.pool, NAMES, m, v, "auc", goal="median")  # type: ignore[arg-type]


async def test_versions_are_compared_side_by_side(db: Database) -> None:
    # given three versions with overlapping parameters and metrics
    reg = await registry(db)
    m = await reg.register_model("fraud")
    await reg.register_version(m, params={"lr": 0.1, "depth": 6, "early": True})
    await reg.register_version(m, params={"lr": 0.1, "depth": 6.0, "early": 1})
    await reg.register_version(m, params={"lr": 0.1, "objective": "xent"})
    await reg.log_metrics(m, 1, {"auc": 0.8})
    await reg.log_metrics(m, 3, {"auc": 0.85})
    await reg.log_metrics(m, 3, {"auc": 0.83}, dataset="holdout")
    await reg.project(METRIC_HISTORY, VERSIONS)

    # when versions 3, 1, 2 and a missing 9 are compared
    comparison = await compare_versions(db.pool, NAMES, m, [3, 1, 9, 2, 3])

    # then values line up with the versions asked (in that order), 6 and 6.0 differ by type
    assert comparison.versions == (3, 1, 2)
    assert comparison.missing == (9,)
    assert comparison.params == (
        ParamComparison(name="depth", values=(None, 6, 6.0), differs=True),
        ParamComparison(name="early", values=(None, True, 1), differs=True),
        ParamComparison(name="lr", values=(0.1, 0.1, 0.1), differs=False),
        ParamComparison(name="objective", values=("xent", None, None), differs=True),
    )
    assert comparison.metrics == (
        MetricComparison(key="auc", dataset="", values=(0.85, 0.8, None), differs=True),
        MetricComparison(key="auc", dataset="holdout", values=(0.83, None, None), differs=True),
    )
    with pytest.raises(InvalidQueryError):
        await compare_versions(db.pool, NAMES, m, [])


async def test_every_point_is_kept_and_the_last_agrees_with_the_domain_after_a_random_history(
    db: Database,
) -> None:
    reg = await registry(db)
    rng = random.Random(9)
    for _ in range(4):
        await random_history(reg, rng, 120)
        await reg.project(METRIC_HISTORY, batch=13)
    checked = 0
    for (model_id, version), state in reg.metric_states.items():
        series = await metric_series(reg.conn, NAMES, model_id, version)
        assert sum(s.points for s in series) == state.points
        for key, by_dataset in state.latest.items():
            for dataset, latest in by_dataset.items():
                last = await last_metric(reg.conn, NAMES, model_id, version, key, dataset)
                assert last is not None
                assert (last.value, last.step, last.timestamp) == (
                    latest.value,
                    latest.step,
                    latest.timestamp,
                )
                checked += 1
    assert checked > 50


async def test_rebuild_equals_live_after_a_long_random_history_and_with_writes_during_it(
    db: Database,
) -> None:
    reg = await registry(db)
    rng = random.Random(47)
    for _ in range(8):
        await random_history(reg, rng, 60)
        await reg.project(METRIC_HISTORY, batch=11)
    await check_rebuild_equals_live(reg, METRIC_HISTORY, checksum, rng, rebuild_batch=10)
    await check_rebuild_equals_live(
        reg, METRIC_HISTORY, checksum, rng, traffic_rounds=6, rebuild_batch=10
    )


async def test_time_travel_at_many_positions_equals_the_live_view_as_it_was(db: Database) -> None:
    reg = await registry(db)
    await random_history(reg, random.Random(10), 250)
    recorded = await record_live_positions(reg, METRIC_HISTORY, checksum, batch=2)
    assert len(recorded) > 20
    for position, expected, _ in random.Random(5).sample(recorded, 12):
        assert await as_of(reg, METRIC_HISTORY, position, checksum) == expected
    # and the scratch-table fold the API serves "as of" reads from gives the same rows
    for position, expected, _ in (
        recorded[-1:] + recorded[len(recorded) // 2 : len(recorded) // 2 + 1]
    ):
        assert await as_of(reg, METRIC_HISTORY, position, checksum, scratch=True) == expected
