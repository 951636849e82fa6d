"""The metrics stream: validated batches and the latest value per key and dataset."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.errors import ConflictError, ValidationError
from events.metrics import (
    MAX_BATCH,
    METRICS,
    LogMetrics,
    MetricInput,
    MetricPoint,
    MetricsLogged,
    MetricsState,
    decide,
    latest_values,
)
from tests.unit.domain_helpers import MODEL_ID, NOW, cmd, later


def _log(*metrics: MetricInput, version: int = 1) -> LogMetrics:
    return cmd(LogMetrics, model_id=MODEL_ID, version=version, metrics=metrics)


def test_a_batch_is_recorded_with_the_command_time_for_points_without_a_timestamp() -> None:
    events = decide(
        _log(
            MetricInput(key="auc", value=0.91, step=3, dataset="holdout"),
            MetricInput(key="loss", value=1, timestamp=later(-60)),
        ),
        MetricsState(),
    )
    assert events == [
        MetricsLogged(
            model_id=MODEL_ID,
            version=1,
            metrics=(
                MetricPoint(key="auc", value=0.91, step=3, timestamp=NOW, dataset="holdout"),
                MetricPoint(key="loss", value=1.0, step=0, timestamp=later(-60), dataset=""),
            ),
        )
    ]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_value_is_rejected_naming_its_position(value: float) -> None:
    batch = [MetricInput(key="auc", value=0.5) for _ in range(3)] + [
        MetricInput(key="auc", value=value)
    ]
    with pytest.raises(ValidationError) as error:
        decide(_log(*batch), MetricsState())
    assert (error.value.field, error.value.rule) == ("metrics[3].value", "finite")


def test_a_batch_holds_between_one_and_the_maximum_number_of_points() -> None:
    with pytest.raises(ValidationError) as error:
        decide(_log(), MetricsState())
    assert error.value.rule == "required"
    decide(
        _log(*[MetricInput(key="auc", value=0.5, step=i) for i in range(MAX_BATCH)]), MetricsState()
    )
    with pytest.raises(ValidationError) as error:
        decide(
            _log(*[MetricInput(key="auc", value=0.5, step=i) for i in range(MAX_BATCH + 1)]),
            MetricsState(),
        )
    assert error.value.rule == "too_many"


@pytest.mark.parametrize(
    ("metric", "field", "rule"),
    [
        (MetricInput(key="a b", value=1), "metrics[0].key", "pattern"),
        (MetricInput(key="", value=1), "metrics[0].key", "required"),
        (MetricInput(key="k" * 251, value=1), "metrics[0].key", "length"),
        (MetricInput(key="auc", value=1, step=-1), "metrics[0].step", "range"),
        (MetricInput(key="auc", value=1, step=2**53 + 1), "metrics[0].step", "range"),
        (MetricInput(key="auc", value=1, step=2**63 - 1), "metrics[0].step", "range"),
        (
            MetricInput(key="auc", value=1, timestamp=datetime(1969, 12, 31, 23, 59, tzinfo=UTC)),
            "metrics[0].timestamp",
            "range",
        ),
        (
            MetricInput(key="auc", value=1, timestamp=datetime(1, 1, 1, tzinfo=UTC)),
            "metrics[0].timestamp",
            "range",
        ),
        (
            MetricInput(key="auc", value=1, timestamp=NOW + timedelta(days=1, seconds=1)),
            "metrics[0].timestamp",
            "range",
        ),
        (MetricInput(key="auc", value=1, dataset="hold out"), "metrics[0].dataset", "pattern"),
    ],
)
def test_invalid_points_are_rejected_naming_field_and_rule(
    metric: MetricInput, field: str, rule: str
) -> None:
    with pytest.raises(ValidationError) as error:
        decide(_log(metric), MetricsState())
    assert (error.value.field, error.value.rule) == (field, rule)


def test_the_boundaries_of_step_and_timestamp_are_accepted() -> None:
    decide(
        _log(
            MetricInput(key="auc", value=1, step=2**53, timestamp=NOW + timedelta(days=1)),
            MetricInput(key="auc", value=1, timestamp=datetime(1970, 1, 1, tzinfo=UTC)),
        ),
        MetricsState(),
    )


def test_curves_show_the_highest_step_but_gates_read_the_value_recorded_last() -> None:
    state = METRICS.fold(
        [
            MetricsLogged(
                model_id=MODEL_ID,
                version=1,
                metrics=(
                    MetricPoint(key="auc", value=0.80, step=5, timestamp=NOW, dataset="holdout"),
                    MetricPoint(
                        key="auc", value=0.70, step=4, timestamp=later(10), dataset="holdout"
                    ),
                    MetricPoint(key="loss", value=0.3, step=1, timestamp=NOW),
                    MetricPoint(key="loss", value=0.2, step=1, timestamp=later(1)),
                ),
            ),
            MetricsLogged(
                model_id=MODEL_ID,
                version=1,
                metrics=(
                    MetricPoint(key="loss", value=0.25, step=1, timestamp=later(1)),
                    MetricPoint(key="auc", value=0.9, step=5, timestamp=NOW, dataset="validation"),
                ),
            ),
        ]
    )
    latest = {k: {d: m.value for d, m in by.items()} for k, by in state.latest.items()}
    assert latest == {"auc": {"holdout": 0.80, "validation": 0.9}, "loss": {"": 0.25}}
    assert latest_values(state) == {"auc": {"holdout": 0.70, "validation": 0.9}, "loss": {"": 0.25}}
    assert (state.batches, state.points) == (2, 6)


def test_a_metrics_stream_holds_one_version() -> None:
    state = METRICS.fold(decide(_log(MetricInput(key="auc", value=0.5)), MetricsState()))
    with pytest.raises(ConflictError):
        decide(_log(MetricInput(key="auc", value=0.5), version=2), state)


points = st.builds(
    MetricInput,
    key=st.sampled_from(["auc", "loss"]),
    value=st.floats(allow_nan=True, allow_infinity=True),
    step=st.integers(0, 5),
    timestamp=st.sampled_from([None, later(-10), later(10)]),
    dataset=st.sampled_from([None, "holdout"]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(points, min_size=1, max_size=8), max_size=8))
def test_latest_values_match_a_brute_force_reference_and_non_finite_batches_are_refused(
    batches: list[list[MetricInput]],
) -> None:
    state, accepted = MetricsState(), list[MetricPoint]()
    for batch in batches:
        if not all(math.isfinite(m.value) for m in batch):
            with pytest.raises(ValidationError):
                decide(_log(*batch), state)
            continue
        for event in decide(_log(*batch), state):
            state = METRICS.evolve(state, event)
            accepted.extend(event.metrics)
    reference: dict[str, dict[str, MetricPoint]] = {}
    last: dict[str, dict[str, float]] = {}
    for point in accepted:  # later wins ties, as documented
        best = reference.setdefault(point.key, {}).get(point.dataset)
        if best is None or (point.step, point.timestamp) >= (best.step, best.timestamp):
            reference[point.key][point.dataset] = point
        last.setdefault(point.key, {})[point.dataset] = point.value
    assert {k: {d: m.value for d, m in by.items()} for k, by in state.latest.items()} == {
        k: {d: p.value for d, p in by.items()} for k, by in reference.items()
    }
    assert latest_values(state) == last
    assert state.points == len(accepted)
