"""The ``metrics:{model_id}:{version}`` stream: metric batches for one version. Pure.

Kept apart from the model stream so a training loop logging metrics never contends with
governance. ``decide`` here cannot see the model stream: the shell must check that the
version exists (``ModelState.version(n)`` raises ``NotFoundError``) before it appends.

A batch holds 1 to ``MAX_BATCH`` points. Keys use the key character set of
``events.names`` (at most 250 characters); values must be finite (NaN and ±inf are
refused with rule ``finite``); steps are integers in [0, 2**53] (exact in every JSON
reader); timestamps lie between 1970 and one day after the command's ``now`` (both
refused with rule ``range``); a point without a timestamp takes the command's ``now``.

The state keeps two views per (key, dataset). ``latest`` is what a training curve shows:
highest step, then latest timestamp, then the later batch wins. ``recorded`` is the value
recorded last, in the order the server appended it (stream order, which is log order).
Metric gates read ``recorded`` through ``latest_values``: step and timestamp come from the
client, so a point with a huge step or an old timestamp could otherwise pin a version's
gate value (and a production baseline) forever.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import ClassVar, assert_never

import msgspec
from msgspec.structs import replace

from events.base import Command, Decider, Event, UtcDateTime, utc
from events.errors import ConflictError, ValidationError
from events.names import (
    validate_actor,
    validate_dataset_name,
    validate_finite,
    validate_id,
    validate_key,
)
from events.streams import METRICS_TYPE

STREAM_TYPE = METRICS_TYPE
MAX_BATCH = 1000
MAX_STEP = 2**53
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=1)  # clock skew between a trainer and the registry
NO_DATASET = ""


class MetricInput(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    value: float
    step: int = 0
    timestamp: UtcDateTime | None = None
    dataset: str | None = None


class MetricPoint(msgspec.Struct, frozen=True, kw_only=True):
    """A stored point; ``dataset`` is ``""`` when the metric names no dataset."""

    key: str
    value: float
    step: int
    timestamp: UtcDateTime
    dataset: str = NO_DATASET


class MetricsLogged(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "metrics.logged"
    model_id: str
    version: int
    metrics: tuple[MetricPoint, ...]


class LogMetrics(Command, frozen=True, kw_only=True):
    model_id: str
    version: int
    metrics: tuple[MetricInput, ...]


class LatestMetric(msgspec.Struct, frozen=True, kw_only=True):
    value: float
    step: int
    timestamp: UtcDateTime


class MetricsState(msgspec.Struct, frozen=True, kw_only=True):
    model_id: str = ""
    version: int = 0
    batches: int = 0
    points: int = 0
    latest: dict[str, dict[str, LatestMetric]] = msgspec.field(default_factory=dict)
    recorded: dict[str, dict[str, float]] = msgspec.field(default_factory=dict)


MetricsEvent = MetricsLogged
METRICS_EVENT_TYPES: tuple[type[Event], ...] = (MetricsLogged,)


def initial_state() -> MetricsState:
    return MetricsState()


def _newer(point: MetricPoint, current: LatestMetric | None) -> bool:
    return current is None or (point.step, point.timestamp) >= (current.step, current.timestamp)


def evolve(state: MetricsState, event: MetricsEvent) -> MetricsState:
    match event:
        case MetricsLogged():
            latest = dict(state.latest)
            recorded = dict(state.recorded)
            for point in event.metrics:
                recorded[point.key] = {**recorded.get(point.key, {}), point.dataset: point.value}
                by_dataset = latest.get(point.key, {})
                if _newer(point, by_dataset.get(point.dataset)):
                    entry = LatestMetric(
                        value=point.value, step=point.step, timestamp=point.timestamp
                    )
                    latest[point.key] = {**by_dataset, point.dataset: entry}
            return replace(
                state,
                model_id=event.model_id,
                version=event.version,
                batches=state.batches + 1,
                points=state.points + len(event.metrics),
                latest=latest,
                recorded=recorded,
            )
        case _:
            assert_never(event)


def _point(index: int, metric: MetricInput, now: UtcDateTime) -> MetricPoint:
    where = f"metrics[{index}]"
    validate_key(metric.key, f"{where}.key")
    validate_finite(metric.value, f"{where}.value")
    if not 0 <= metric.step <= MAX_STEP:
        raise ValidationError(f"{where}.step", "range", f"a step is an integer in [0, {MAX_STEP}]")
    if metric.dataset is not None:
        validate_dataset_name(metric.dataset, f"{where}.dataset")
    if metric.timestamp is not None and not EARLIEST <= metric.timestamp <= now + FUTURE_SLACK:
        raise ValidationError(
            f"{where}.timestamp",
            "range",
            "a timestamp lies between 1970-01-01 and one day after the registry's clock",
        )
    timestamp = now if metric.timestamp is None else utc(metric.timestamp)
    return MetricPoint(
        key=metric.key,
        value=float(metric.value),
        step=metric.step,
        timestamp=timestamp,
        dataset=metric.dataset or NO_DATASET,
    )


def decide(command: LogMetrics, state: MetricsState) -> list[MetricsEvent]:
    validate_actor(command.actor)
    validate_id(command.model_id, "model_id")
    if command.version < 1:
        raise ValidationError("version", "range", "versions are numbered from 1")
    if state.batches and (state.model_id, state.version) != (command.model_id, command.version):
        raise ConflictError(
            f"this stream holds metrics of {state.model_id} v{state.version}",
            model_id=state.model_id,
            version=state.version,
        )
    if not command.metrics:
        raise ValidationError("metrics", "required", "a batch needs at least one metric")
    if len(command.metrics) > MAX_BATCH:
        raise ValidationError(
            "metrics", "too_many", f"at most {MAX_BATCH} metrics per batch", max=MAX_BATCH
        )
    now = utc(command.now)
    points = tuple(_point(index, metric, now) for index, metric in enumerate(command.metrics))
    return [MetricsLogged(model_id=command.model_id, version=command.version, metrics=points)]


def latest_values(state: MetricsState) -> dict[str, dict[str, float]]:
    """``{key: {dataset or "": value}}``: one version's entry of a gate ``MetricSnapshot``:
    the value recorded last, whatever step or timestamp the client gave it."""
    return {key: dict(by_dataset) for key, by_dataset in state.recorded.items()}


METRICS: Decider[MetricsState, LogMetrics, MetricsEvent] = Decider(
    stream_type=STREAM_TYPE,
    initial_state=initial_state,
    evolve=evolve,
    decide=decide,
    state_type=MetricsState,
    snapshot_version=2,  # 2: ``recorded`` (snapshots without it would feed gates nothing)
)
