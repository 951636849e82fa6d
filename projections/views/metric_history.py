"""Metric history: every logged point of every version, per metric key, dataset and step.

Answers "how did the loss of version 3 move over training?" (``metric_history``, paged),
"which metrics does it have?" (``metric_series``), "what is its best / last auc?"
(``best_metric``, ``last_metric``) and "how do versions 3, 4 and 7 differ?"
(``compare_versions``: parameters and latest metrics side by side).

Table ``metric_batches``: one row per ``metrics.logged`` event, keyed (model_id, version,
log position), holding the event's JSON data as it was logged (points under ``metrics``);
queries expand the points with ``json_to_recordset``. Why not a row per point: a batch
holds up to 1,000 points and metric batches are most of the log, so a row (and an index
entry) per point would bound a rebuild by points/s, far below the 15,000 events/s target
on 10-point batches. A version's history is read whole anyway (points of one step can sit
in any batch), and a version holds tens to thousands of batches. The order of a history is (dataset,
step, timestamp, log position, ordinal in the batch), which also decides "latest"
(``events.metrics``): highest step, then latest timestamp, then the later event.
``dataset`` is "" for points logged without one.

``compare_versions`` reads the ``model_versions`` view (parameters from the frozen
content, the latest metric values), so its ``names`` must hold those tables too
(``projections.search.merge_names``). The best version of a model by a metric is a
version search ordered by it (``search_versions(..., order="-metric:auc")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec

from eventlog.log import LoggedEvent
from events.metrics import MetricsLogged
from events.streams import metrics_of
from events.version_content import ParamValue
from projections.base import Fold, Names, Projection, Table, changed
from projections.paging import InvalidQueryError, Page, decode_cursor, encode_cursor
from projections.views.model_versions import POINTS_OF, metrics_data

Conn = asyncpg.Connection | asyncpg.Pool

MAX_HISTORY_PAGE = 10_000
MAX_COMPARED = 50

TABLES = [
    Table(
        "metric_batches",
        'model_id text COLLATE "C" NOT NULL, version int NOT NULL, position bigint NOT NULL, data json NOT NULL,'
        " PRIMARY KEY (model_id, version, position)",
        key=("model_id", "version", "position"),
    ),
]


class MetricSample(msgspec.Struct, frozen=True, kw_only=True):
    """One logged point; ``position`` is the log position of the batch that carried it."""

    key: str
    dataset: str
    step: int
    timestamp: datetime
    value: float
    position: int


class MetricSeries(msgspec.Struct, frozen=True, kw_only=True):
    """One (key, dataset) of a version: how many points, over which steps."""

    key: str
    dataset: str
    points: int
    first_step: int
    last_step: int


class MetricHistory(msgspec.Struct, frozen=True, kw_only=True):
    """One series of a version and its first points in step order; ``series.points``
    counts them all, so more than ``len(samples)`` means the history was cut."""

    series: MetricSeries
    samples: tuple[MetricSample, ...]


class ParamComparison(msgspec.Struct, frozen=True, kw_only=True):
    """A parameter's value in each compared version (None: not set), in ``Comparison.versions`` order."""

    name: str
    values: tuple[ParamValue | None, ...]
    differs: bool


class MetricComparison(msgspec.Struct, frozen=True, kw_only=True):
    """A metric's latest value in each compared version (None: never logged)."""

    key: str
    dataset: str
    values: tuple[float | None, ...]
    differs: bool


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """Versions side by side; ``missing`` lists requested versions that do not exist."""

    model_id: str
    versions: tuple[int, ...]
    missing: tuple[int, ...]
    params: tuple[ParamComparison, ...]
    metrics: tuple[MetricComparison, ...]


# One metric batch: (model_id, version, log position) -> the event's data as JSON text.
BatchKey = tuple[str, int, int]


def evolve(rows: dict[BatchKey, str], events: Sequence[LoggedEvent]) -> dict[BatchKey, str]:
    """Add a row per metric batch. Pure."""
    new = dict(rows)
    for e in events:
        if e.event_type == MetricsLogged.event_type:
            model_id, version = metrics_of(e.stream_id)
            new[(model_id, version, e.log_position)] = metrics_data(e).decode()
    return new


async def load(
    conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]
) -> dict[BatchKey, str]:
    """Nothing: a batch only adds rows."""
    return {}


async def write(
    conn: asyncpg.Connection,
    names: Names,
    loaded: dict[BatchKey, str],
    evolved: dict[BatchKey, str],
) -> None:
    rows = [(*key, data) for key, data in changed(loaded, evolved).items()]
    if rows:
        await conn.copy_records_to_table(names.metric_batches, records=rows)


METRIC_HISTORY = Projection(
    name="metric_history",
    version=1,
    tables=TABLES,
    handles=frozenset({MetricsLogged.event_type}),
    fold=Fold(load=load, evolve=evolve, write=write),
    description="every logged metric point, per version, key, dataset and step",
)
PROJECTION = METRIC_HISTORY


def _sample(r: asyncpg.Record) -> MetricSample:
    return MetricSample(
        key=r["key"],
        dataset=r["dataset"],
        step=r["step"],
        timestamp=r["timestamp"],
        value=r["value"],
        position=r["position"],
    )


# Every point of one version, as rows (key, dataset, step, timestamp, value, position, ordinal).
_POINTS = (
    "SELECT p.key, coalesce(p.dataset, '') AS dataset, p.step, p.timestamp, p.value, b.position, p.ordinal"
    " FROM {table} b CROSS JOIN LATERAL "
    + POINTS_OF.format(points="b.data -> 'metrics'")
    + " WHERE b.model_id = $1 AND b.version = $2"
)
_HISTORY_KEY = ("dataset", "step", "timestamp", "position", "ordinal")


async def metric_history(
    conn: Conn,
    names: Names,
    model_id: str,
    version: int,
    key: str,
    *,
    dataset: str | None = None,
    limit: int = 1000,
    cursor: str | None = None,
) -> Page[MetricSample]:
    """The points of one metric of a version in step order (``dataset`` None: every
    dataset, one after the other), a page at a time."""
    if not 1 <= limit <= MAX_HISTORY_PAGE:
        raise InvalidQueryError(f"limit must be between 1 and {MAX_HISTORY_PAGE}")
    params: list[Any] = [model_id, version, key]
    where = " AND p.key = $3"
    if dataset is not None:
        params.append(dataset)
        where += " AND coalesce(p.dataset, '') = $4"
    tag = f"history:{key}[{'*' if dataset is None else dataset}]"
    sql = f"SELECT * FROM ({_POINTS.format(table=names.metric_batches)}{where}) AS q"
    if cursor:
        after = decode_cursor(cursor, tag, tuple[str, int, datetime, int, int])
        placeholders = ", ".join(f"${len(params) + i}" for i in range(1, 6))
        params.extend(after)
        sql += f" WHERE ({', '.join(_HISTORY_KEY)}) > ({placeholders})"
    params.append(limit + 1)
    records = await conn.fetch(
        f"{sql} ORDER BY {', '.join(_HISTORY_KEY)} LIMIT ${len(params)}", *params
    )
    page = records[:limit]
    next_cursor = None
    if len(records) > limit:
        next_cursor = encode_cursor(tag, tuple(page[-1][c] for c in _HISTORY_KEY))
    return Page(items=tuple(_sample(r) for r in page), next_cursor=next_cursor)


async def metric_series(
    conn: Conn, names: Names, model_id: str, version: int
) -> tuple[MetricSeries, ...]:
    """Every (key, dataset) a version has points for, sorted."""
    rows = await conn.fetch(
        "SELECT key, dataset, count(*)::int AS points, min(step) AS first_step, max(step) AS last_step"
        f" FROM ({_POINTS.format(table=names.metric_batches)}) AS q GROUP BY key, dataset ORDER BY key, dataset",
        model_id,
        version,
    )
    return tuple(
        MetricSeries(
            key=r["key"],
            dataset=r["dataset"],
            points=r["points"],
            first_step=r["first_step"],
            last_step=r["last_step"],
        )
        for r in rows
    )


async def metric_histories(
    conn: Conn, names: Names, model_id: str, version: int, *, limit: int = 1000
) -> tuple[MetricHistory, ...]:
    """Every series of a version with up to ``limit`` points each, in one query (a page
    drawing a chart per metric must not ask once per metric)."""
    if not 1 <= limit <= MAX_HISTORY_PAGE:
        raise InvalidQueryError(f"limit must be between 1 and {MAX_HISTORY_PAGE}")
    series = "PARTITION BY key, dataset"
    records = await conn.fetch(
        "SELECT * FROM (SELECT q.*,"
        f" row_number() OVER ({series} ORDER BY step, timestamp, position, ordinal) AS n,"
        f" count(*) OVER ({series})::int AS points, min(step) OVER ({series}) AS first_step,"
        f" max(step) OVER ({series}) AS last_step"
        f" FROM ({_POINTS.format(table=names.metric_batches)}) AS q) AS r"
        " WHERE n <= $3 ORDER BY key, dataset, n",
        model_id,
        version,
        limit,
    )
    found: dict[tuple[str, str], list[asyncpg.Record]] = {}
    for r in records:
        found.setdefault((r["key"], r["dataset"]), []).append(r)
    return tuple(
        MetricHistory(
            series=MetricSeries(
                key=key,
                dataset=dataset,
                points=rows[0]["points"],
                first_step=rows[0]["first_step"],
                last_step=rows[0]["last_step"],
            ),
            samples=tuple(_sample(r) for r in rows),
        )
        for (key, dataset), rows in found.items()
    )


async def last_metric(
    conn: Conn, names: Names, model_id: str, version: int, key: str, dataset: str = ""
) -> MetricSample | None:
    """The latest point by the domain's rule: highest step, latest timestamp, later event."""
    record = await conn.fetchrow(
        f"SELECT * FROM ({_POINTS.format(table=names.metric_batches)}) AS q WHERE key = $3 AND dataset = $4"
        " ORDER BY step DESC, timestamp DESC, position DESC, ordinal DESC LIMIT 1",
        model_id,
        version,
        key,
        dataset,
    )
    return None if record is None else _sample(record)


async def best_metric(
    conn: Conn,
    names: Names,
    model_id: str,
    version: int,
    key: str,
    dataset: str = "",
    goal: Literal["max", "min"] = "max",
) -> MetricSample | None:
    """The highest (``goal="max"``) or lowest point of a metric over the version's history;
    among equal values, the earliest in step order."""
    if goal not in ("max", "min"):
        raise InvalidQueryError("goal is 'max' or 'min'")
    direction = "DESC" if goal == "max" else "ASC"
    record = await conn.fetchrow(
        f"SELECT * FROM ({_POINTS.format(table=names.metric_batches)}) AS q WHERE key = $3 AND dataset = $4"
        f" ORDER BY value {direction}, step, timestamp, position, ordinal LIMIT 1",
        model_id,
        version,
        key,
        dataset,
    )
    return None if record is None else _sample(record)


_params = msgspec.json.Decoder(dict[str, ParamValue])


def _differs(values: Sequence[object]) -> bool:
    # 1, 1.0 and True are equal in Python but not as parameters: compare the types too.
    return len({(type(v), v) for v in values}) > 1


async def compare_versions(
    conn: Conn, names: Names, model_id: str, versions: Sequence[int]
) -> Comparison:
    """Parameters and latest metric values of ``versions`` side by side (in the order
    asked, duplicates dropped). Reads the ``model_versions`` tables."""
    asked = list(dict.fromkeys(versions))
    if not 1 <= len(asked) <= MAX_COMPARED:
        raise InvalidQueryError(f"compare between 1 and {MAX_COMPARED} versions")
    params_by_version = {
        r["version"]: _params.decode(r["params"])
        for r in await conn.fetch(
            f"SELECT version, coalesce(content -> 'parameters', '{{}}'::json)::text AS params"
            f" FROM {names.model_versions} WHERE model_id = $1 AND version = ANY ($2::int[])",
            model_id,
            asked,
        )
    }
    found = tuple(v for v in asked if v in params_by_version)
    metrics: dict[tuple[str, str], dict[int, float]] = {}
    for r in await conn.fetch(
        f"SELECT version, key, dataset, value FROM {names.model_version_metrics}"
        " WHERE model_id = $1 AND version = ANY ($2::int[])",
        model_id,
        list(found),
    ):
        metrics.setdefault((r["key"], r["dataset"]), {})[r["version"]] = r["value"]
    param_names = sorted({name for p in params_by_version.values() for name in p})
    param_rows = []
    for name in param_names:
        values = tuple(params_by_version[v].get(name) for v in found)
        param_rows.append(ParamComparison(name=name, values=values, differs=_differs(values)))
    metric_rows = []
    for (key, dataset), by_version in sorted(metrics.items()):
        metric_values = tuple(by_version.get(v) for v in found)
        metric_rows.append(
            MetricComparison(
                key=key, dataset=dataset, values=metric_values, differs=_differs(metric_values)
            )
        )
    return Comparison(
        model_id=model_id,
        versions=found,
        missing=tuple(v for v in asked if v not in params_by_version),
        params=tuple(param_rows),
        metrics=tuple(metric_rows),
    )
