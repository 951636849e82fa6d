"""Model versions: every field of every registered version, with its stage, aliases and the
latest value of each of its metrics.

Answers "what is version N of model X?" (``get_version``), "which version does alias A
(or ``latest``, or ``v3``) point at?" (``version_by_alias``) and "what are its current
metric values?" (``latest_metrics``). Version search lives in ``projections.search``.

Tables (SQL names come from ``names``):

- ``model_versions``: one row per version, keyed (model_id, version). The content
  (artifacts, code, dependencies, parameters, datasets, run, signature) is kept as the
  canonical JSON the event carried (type ``json``, byte for byte), so a float parameter
  comes back a float. The model's name, owner and archived flag are copied onto each row,
  so a search by model name or owner needs no join; a rename rewrites the model's rows.
  What MLflow's API reads of the content (the one external artifact's URI, the run's id
  and URL) is kept in columns of its own, so its reads never parse the content, and
  ``mlflow_json`` holds the row as MLflow's API shows it, rendered by a trigger on every
  write (``projections/migrations/0004_mlflow_version_json.sql``).
- ``model_version_metrics``: the latest point per (version, metric key, dataset), by the
  domain's rule (``events.metrics``): highest step, then latest timestamp, then the later
  point. Indexed by (key, dataset, value) for threshold filters and ordering by a metric,
  and by (key, dataset, created_at) with the version's registration time copied in, for
  threshold filters in the default newest-first order. The time is copied when the
  metric's first point is folded: the service logs metrics only for registered versions,
  so it is known by then (in a log where metrics came first it stays NULL). Full histories are in
  ``projections.views.metric_history``.
- ``model_versions_models``: the model facts copied onto versions (name, owner,
  archived), so a version registered later gets them without reading another view.

``updated_at`` is the business time of the last model-stream event about the version
(registration, description, tags, deprecation, stage, alias); metric batches and model
renames do not change it. ``stage_since`` is when it entered its current stage.

A batch is folded by ``load`` (one read per table of the touched rows), the pure
``evolve`` and ``write`` (one statement per table). Metric batches are most of the log, so
their points go through one tight loop (``fold_latest``) and one upsert per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from msgspec.structs import replace

from eventlog.log import LoggedEvent
from events.base import Event
from events.catalogue import CODEC
from events.envelope import encode_canonical
from events.metrics import MetricsLogged
from events.mlflow_artifacts import external_source
from events.model.events import (
    AliasRemoved,
    AliasSet,
    ModelArchived,
    ModelDeleted,
    ModelRegistered,
    ModelRenamed,
    ModelRestored,
    StageTransitioned,
    VersionDeprecated,
    VersionDescriptionUpdated,
    VersionRegistered,
    VersionTagsRemoved,
    VersionTagsSet,
)
from events.stages import StageName
from events.streams import metrics_of, model_id_of
from events.version_content import VersionContent
from projections.base import Fold, Names, Projection, Table, changed, upsert

Conn = asyncpg.Connection | asyncpg.Pool

TABLES = [
    Table(
        "model_versions",
        """
        model_id           text COLLATE "C" NOT NULL,
        version            int              NOT NULL,
        model_name         text COLLATE "C" NOT NULL,
        owner              text COLLATE "C" NOT NULL,
        model_archived     boolean          NOT NULL,
        stage              text             NOT NULL,
        stage_since        timestamptz      NOT NULL,
        aliases            text[]           NOT NULL,
        environments       text[]           NOT NULL,
        description        text             NOT NULL,
        tags               jsonb            NOT NULL,
        content            json             NOT NULL,
        content_digest     text             NOT NULL,
        registered_by      text             NOT NULL,
        deprecated         boolean          NOT NULL,
        deprecation_reason text             NOT NULL,
        deprecated_at      timestamptz,
        created_at         timestamptz      NOT NULL,
        updated_at         timestamptz      NOT NULL,
        position           bigint           NOT NULL,
        external_source    text,
        run_id             text             NOT NULL,
        run_url            text             NOT NULL,
        mlflow_json        text             NOT NULL,
        PRIMARY KEY (model_id, version)
        """,
        key=("model_id", "version"),
        indexes=[
            # Keyset orders: each ends with (model_id, version), which makes the key unique.
            "CREATE INDEX {name}_created ON {table} (created_at, model_id, version)",
            "CREATE INDEX {name}_updated ON {table} (updated_at, model_id, version)",
            "CREATE INDEX {name}_name ON {table} (model_name, model_id, version)",
            "CREATE INDEX {name}_name_trgm ON {table} USING gin (model_name public.gin_trgm_ops)",
            # One stage, or one owner, newest first: the default order, straight from the index.
            "CREATE INDEX {name}_stage ON {table} (stage, created_at, model_id, version)",
            "CREATE INDEX {name}_owner ON {table} (owner, created_at, model_id, version)",
            "CREATE INDEX {name}_tags ON {table} USING gin (tags)",
            "CREATE INDEX {name}_aliases ON {table} USING gin (aliases)",
            # MLflow's latest_versions, the highest live version of each stage of a model:
            # a skip from stage to stage and one step back in each, not a sort of them all.
            "CREATE INDEX {name}_latest ON {table} (model_id, stage, version) WHERE NOT deprecated",
            # mlflow_json: MLflow's JSON of the row, rendered on every write (migration 0004).
            "CREATE TRIGGER {name}_mlflow_json BEFORE INSERT OR UPDATE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION mlflow_version_json()",
        ],
    ),
    Table(
        "model_version_metrics",
        """
        model_id  text COLLATE "C" NOT NULL,
        version   int              NOT NULL,
        key       text COLLATE "C" NOT NULL,
        dataset   text COLLATE "C" NOT NULL,
        value     float8           NOT NULL,
        step      bigint           NOT NULL,
        timestamp timestamptz      NOT NULL,
        position  bigint           NOT NULL,
        created_at timestamptz,
        PRIMARY KEY (model_id, version, key, dataset)
        """,
        key=("model_id", "version", "key", "dataset"),
        indexes=[
            # `auc > 0.9` over all versions, and ordering versions by a metric.
            "CREATE INDEX {name}_value ON {table} (key, dataset, value, model_id, version)",
            # `auc > 0.9` newest versions first (the default order): the version's created_at
            # is copied here so the scan in that order checks values without leaving the index.
            "CREATE INDEX {name}_created ON {table} (key, dataset, created_at, model_id, version) INCLUDE (value)",
            # `auc > 0.9` for one model at a time (a model search walks models in its order).
            "CREATE INDEX {name}_model_value ON {table} (model_id, key, dataset, value)",
        ],
    ),
    Table(
        "model_versions_models",
        'model_id text COLLATE "C" PRIMARY KEY, name text COLLATE "C" NOT NULL,'
        ' owner text COLLATE "C" NOT NULL, archived boolean NOT NULL',
        key=("model_id",),
        # A version search by name finds the models first (see projections.search).
        indexes=["CREATE INDEX {name}_name_trgm ON {table} USING gin (name public.gin_trgm_ops)"],
    ),
]

HANDLES = frozenset(
    t.event_type
    for t in (
        ModelRegistered,
        ModelRenamed,
        ModelArchived,
        ModelRestored,
        ModelDeleted,
        VersionRegistered,
        VersionDescriptionUpdated,
        VersionTagsSet,
        VersionTagsRemoved,
        VersionDeprecated,
        StageTransitioned,
        AliasSet,
        AliasRemoved,
        MetricsLogged,
    )
)


class MetricValue(msgspec.Struct, frozen=True, kw_only=True):
    """The latest value of one metric of a version; ``dataset`` is "" when none was named."""

    key: str
    dataset: str
    value: float
    step: int
    timestamp: datetime


class VersionRow(msgspec.Struct, frozen=True, kw_only=True):
    """A registered version: its frozen content and everything that changed since.

    ``aliases`` is sorted; ``metrics`` holds the latest value per (key, dataset), sorted.
    ``owner`` and ``model_archived`` are the model's. ``content`` is None in search results
    unless asked for (``VersionQuery.with_content``): it may list thousands of artifacts.
    """

    model_id: str
    model_name: str
    version: int
    stage: StageName
    stage_since: datetime
    aliases: tuple[str, ...]
    description: str
    tags: dict[str, str]
    content: VersionContent | None
    content_digest: str
    registered_by: str
    deprecated: bool
    deprecation_reason: str
    deprecated_at: datetime | None
    owner: str
    model_archived: bool
    created_at: datetime
    updated_at: datetime
    position: int
    metrics: tuple[MetricValue, ...] = ()
    # The environments of ``stage`` the version is in (sorted), for a stage with environments.
    environments: tuple[str, ...] = ()


# --- the fold ---------------------------------------------------------------------------


class ModelFacts(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    owner: str
    archived: bool


class VersionFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What may change about a version after its registration."""

    stage: str
    stage_since: datetime
    aliases: tuple[str, ...]
    description: str
    tags: dict[str, str]
    deprecated: bool
    deprecation_reason: str
    deprecated_at: datetime | None
    updated_at: datetime
    position: int
    environments: tuple[str, ...] = ()


class NewVersion(msgspec.Struct, frozen=True, kw_only=True):
    """What never changes after ``model.version_registered``. The content's MLflow facts
    (``events.mlflow_artifacts.external_source``, the run's id and URL) are kept as
    columns too: read from a ``json`` column, each would parse the whole content again on
    every row of every MLflow read (about 5 ms of Postgres CPU per page of 100)."""

    content: str
    content_digest: str
    registered_by: str
    created_at: datetime
    external_source: str | None = None
    run_id: str = ""
    run_url: str = ""


def evolve_model(facts: ModelFacts | None, event: Event) -> ModelFacts | None:
    """Fold a model-level event into the facts copied onto its versions. Pure."""
    match event:
        case ModelRegistered():
            return ModelFacts(name=event.name, owner=event.owner, archived=False)
        case ModelRenamed() if facts is not None:
            return replace(facts, name=event.new_name)
        case ModelArchived() if facts is not None:
            return replace(facts, archived=True)
        case ModelRestored() if facts is not None:
            return replace(facts, archived=False)
        case _:
            return facts


def registered_facts(
    event: VersionRegistered, logged: LoggedEvent
) -> tuple[NewVersion, VersionFacts]:
    at = logged.envelope.occurred_at
    return (
        NewVersion(
            content=encode_canonical(event.content).decode(),
            content_digest=event.content_digest,
            registered_by=event.registered_by,
            created_at=at,
            external_source=external_source(event.content.artifacts),
            run_id="" if event.content.run is None else event.content.run.run_id,
            run_url="" if event.content.run is None else event.content.run.url,
        ),
        VersionFacts(
            stage=event.initial_stage(),
            stage_since=at,
            aliases=(),
            description=event.description,
            tags=dict(event.tags),
            deprecated=False,
            deprecation_reason="",
            deprecated_at=None,
            updated_at=at,
            position=logged.log_position,
        ),
    )


def evolve_version(
    facts: VersionFacts, event: Event, logged: LoggedEvent, *, number: int
) -> VersionFacts:
    """Fold a version-level event into version ``number``'s changing facts. Pure.

    An ``AliasSet`` reaches both its new and its previous version; ``number`` says which
    one is being folded.
    """
    at = logged.envelope.occurred_at
    facts = replace(facts, updated_at=at, position=logged.log_position)
    match event:
        case VersionDescriptionUpdated():
            return replace(facts, description=event.description)
        case VersionTagsSet():
            return replace(facts, tags={**facts.tags, **event.tags})
        case VersionTagsRemoved():
            return replace(facts, tags={k: v for k, v in facts.tags.items() if k not in event.keys})
        case VersionDeprecated():
            return replace(
                facts, deprecated=True, deprecation_reason=event.reason, deprecated_at=at
            )
        case StageTransitioned() if event.from_stage == event.to_stage == facts.stage:
            # Another environment of the same stage: ``stage_since`` stays.
            entered, left = event.entered_environment(), event.left_environment()
            environments = {*facts.environments, *(() if entered is None else (entered,))}
            environments.discard(left or "")
            return replace(facts, environments=tuple(sorted(environments)))
        case StageTransitioned():
            entered = event.entered_environment()
            return replace(
                facts,
                stage=str(event.to_stage),
                stage_since=at,
                environments=() if entered is None else (entered,),
            )
        case AliasSet() if event.version == number:
            return replace(facts, aliases=tuple(sorted({*facts.aliases, event.alias})))
        case AliasSet() | AliasRemoved():
            return replace(facts, aliases=tuple(a for a in facts.aliases if a != event.alias))
        case _:
            return facts


def _versions_touched(event: Event) -> tuple[int, ...]:
    match event:
        case AliasSet() if event.previous_version is not None:
            return (event.version, event.previous_version)
        case (
            VersionDescriptionUpdated()
            | VersionTagsSet()
            | VersionTagsRemoved()
            | VersionDeprecated()
            | StageTransitioned()
            | AliasSet()
            | AliasRemoved()
        ):
            return (event.version,)
        case _:
            return ()


def metrics_data(logged: LoggedEvent) -> bytes:
    """The JSON data of a ``metrics.logged`` event in the current schema (old schema
    versions go through the codec's upcasters first)."""
    if logged.envelope.schema_version == MetricsLogged.schema_version:
        return bytes(logged.envelope.data)
    return encode_canonical(CODEC.decode(logged.envelope))


# A metric batch's points as rows, numbered in batch order (``ordinal`` from 1).
POINTS_OF = (
    "ROWS FROM (json_to_recordset({points}) AS (key text, value float8, step bigint, timestamp timestamptz,"
    " dataset text)) WITH ORDINALITY AS p(key, value, step, timestamp, dataset, ordinal)"
)


class _Point(msgspec.Struct, frozen=True, gc=False):
    key: str
    value: float
    step: int
    timestamp: datetime
    dataset: str = ""


class _MetricBatch(msgspec.Struct, frozen=True, gc=False):
    """``events.metrics.MetricsLogged`` read for folding: untracked by the garbage
    collector, since a rebuild decodes millions of points."""

    model_id: str
    version: int
    metrics: list[_Point]


# The latest point of one metric of a version, keyed (model_id, version, key, dataset):
# (value, step, timestamp, log position, the version's registration time).
MetricKey = tuple[str, int, str, str]
Point = tuple[float, int, datetime, int, datetime | None]
_metrics_logged = msgspec.json.Decoder(_MetricBatch)


@dataclass(frozen=True, slots=True)
class VersionRows:
    """The rows of the models and versions a batch touches.

    ``registered`` holds what never changes of the versions registered in the batch (the
    write inserts those); ``versions`` the changing facts of every touched version.
    ``created`` is when each version whose metrics the batch logs was registered: a new
    metric row copies it. ``metrics`` holds every latest point of those versions.
    """

    models: dict[str, ModelFacts] = field(default_factory=dict)
    versions: dict[tuple[str, int], VersionFacts] = field(default_factory=dict)
    registered: dict[tuple[str, int], NewVersion] = field(default_factory=dict)
    created: dict[tuple[str, int], datetime] = field(default_factory=dict)
    metrics: dict[MetricKey, Point] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)  # models the batch deleted: rows go


def evolve(rows: VersionRows, events: Sequence[LoggedEvent]) -> VersionRows:
    """Fold a batch into the touched models, versions and latest metrics. Pure."""
    new = VersionRows(
        models=dict(rows.models),
        versions=dict(rows.versions),
        registered=dict(rows.registered),
        created=dict(rows.created),
        metrics=dict(rows.metrics),
        deleted=set(rows.deleted),
    )
    for logged in events:
        if logged.event_type == MetricsLogged.event_type:
            fold_latest(new.metrics, new.created, logged)
        else:
            _evolve_model_stream(new, logged, CODEC.decode(logged.envelope))
    return new


def _evolve_model_stream(rows: VersionRows, logged: LoggedEvent, event: Event) -> None:
    model_id = model_id_of(logged.stream_id)
    if isinstance(event, ModelDeleted):
        _forget(rows, model_id)
        return
    if isinstance(event, ModelRegistered | ModelRenamed | ModelArchived | ModelRestored):
        facts = evolve_model(rows.models.get(model_id), event)
        if facts is not None:
            rows.models[model_id] = facts
    elif isinstance(event, VersionRegistered):
        key = (model_id, event.version)
        rows.registered[key], rows.versions[key] = registered_facts(event, logged)
        rows.created[key] = logged.envelope.occurred_at
    for number in _versions_touched(event):
        current = rows.versions.get((model_id, number))
        if current is not None:  # always, for histories a decider wrote
            rows.versions[(model_id, number)] = evolve_version(
                current, event, logged, number=number
            )


def _forget(rows: VersionRows, model_id: str) -> None:
    """The tombstone: the model's versions and metrics leave the view (the write deletes
    their rows)."""
    rows.models.pop(model_id, None)
    for table in (rows.versions, rows.registered, rows.created):
        for key in [k for k in table if k[0] == model_id]:
            del table[key]
    for measured in [k for k in rows.metrics if k[0] == model_id]:
        del rows.metrics[measured]
    rows.deleted.add(model_id)


def fold_latest(
    latest: dict[MetricKey, Point], created: dict[tuple[str, int], datetime], logged: LoggedEvent
) -> None:
    """Fold one metric batch into ``latest`` by the domain's rule (``events.metrics``):
    higher step, then later timestamp, then the later point. This loop sees every point of
    the log (most of its volume), so it is written for speed: no calls, plain tuples."""
    event = _metrics_logged.decode(metrics_data(logged))
    model_id, version = event.model_id, event.version
    registered_at = created.get((model_id, version))
    position = logged.log_position
    for p in event.metrics:
        key = (model_id, version, p.key, p.dataset)
        current = latest.get(key)
        if current is None:
            latest[key] = (p.value, p.step, p.timestamp, position, registered_at)
        elif p.step > current[1] or (p.step == current[1] and p.timestamp >= current[2]):
            latest[key] = (p.value, p.step, p.timestamp, position, current[4])


_encode = msgspec.json.Encoder(order="sorted").encode
_MODEL_CHANGES = frozenset(
    t.event_type for t in (VersionRegistered, ModelRenamed, ModelArchived, ModelRestored)
)
_VERSION_CHANGES = frozenset(
    t.event_type
    for t in (
        VersionDescriptionUpdated,
        VersionTagsSet,
        VersionTagsRemoved,
        VersionDeprecated,
        StageTransitioned,
        AliasSet,
        AliasRemoved,
    )
)


async def load(
    conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]
) -> VersionRows:
    """The facts of the models and versions the batch changes or registers versions of,
    and the registration time and latest points of the versions it logs metrics for."""
    model_ids: set[str] = set()
    keys: set[tuple[str, int]] = set()
    measured: set[tuple[str, int]] = set()
    for logged in events:
        if logged.event_type == MetricsLogged.event_type:
            measured.add(metrics_of(logged.stream_id))
        elif logged.event_type in _MODEL_CHANGES:
            model_ids.add(model_id_of(logged.stream_id))
        elif logged.event_type in _VERSION_CHANGES:
            event = CODEC.decode(logged.envelope)
            keys.update((model_id_of(logged.stream_id), n) for n in _versions_touched(event))
    rows = VersionRows()
    if model_ids:
        await _load_models(conn, names, model_ids, rows)
    if keys:
        await _load_versions(conn, names, keys, rows)
    if measured:
        await _load_metrics(conn, names, measured, rows)
    return rows


async def _load_models(
    conn: asyncpg.Connection, names: Names, model_ids: set[str], rows: VersionRows
) -> None:
    for r in await conn.fetch(
        f"SELECT model_id, name, owner, archived FROM {names.model_versions_models}"
        " WHERE model_id = ANY ($1::text[])",
        sorted(model_ids),
    ):
        rows.models[r["model_id"]] = ModelFacts(
            name=r["name"], owner=r["owner"], archived=r["archived"]
        )


async def _load_versions(
    conn: asyncpg.Connection, names: Names, keys: set[tuple[str, int]], rows: VersionRows
) -> None:
    ordered = sorted(keys)
    for r in await conn.fetch(
        "SELECT v.model_id, v.version, v.stage, v.stage_since, v.aliases, v.description, v.tags::text AS tags,"
        " v.deprecated, v.deprecation_reason, v.deprecated_at, v.updated_at, v.position, v.environments"
        f" FROM {names.model_versions} v JOIN unnest($1::text[], $2::int[]) AS k(model_id, version)"
        " ON v.model_id = k.model_id AND v.version = k.version",
        [m for m, _ in ordered],
        [n for _, n in ordered],
    ):
        rows.versions[(r["model_id"], r["version"])] = VersionFacts(
            stage=r["stage"],
            stage_since=r["stage_since"],
            aliases=tuple(r["aliases"]),
            description=r["description"],
            tags=_tags.decode(r["tags"]),
            deprecated=r["deprecated"],
            deprecation_reason=r["deprecation_reason"],
            deprecated_at=r["deprecated_at"],
            updated_at=r["updated_at"],
            position=r["position"],
            environments=tuple(r["environments"]),
        )


async def _load_metrics(
    conn: asyncpg.Connection, names: Names, keys: set[tuple[str, int]], rows: VersionRows
) -> None:
    ordered = sorted(keys)
    model_ids, versions = [m for m, _ in ordered], [n for _, n in ordered]
    # Joins on unnest are index lookups per key; a fresh generation has no statistics yet,
    # and a join the planner could turn into a hash would scan the whole table per batch.
    for r in await conn.fetch(
        f"SELECT v.model_id, v.version, v.created_at FROM {names.model_versions} v"
        " JOIN unnest($1::text[], $2::int[]) AS k(model_id, version)"
        " ON v.model_id = k.model_id AND v.version = k.version",
        model_ids,
        versions,
    ):
        rows.created[(r["model_id"], r["version"])] = r["created_at"]
    for r in await conn.fetch(
        "SELECT m.model_id, m.version, m.key, m.dataset, m.value, m.step, m.timestamp, m.position,"
        f" m.created_at FROM {names.model_version_metrics} m"
        " JOIN unnest($1::text[], $2::int[]) AS k(model_id, version)"
        " ON m.model_id = k.model_id AND m.version = k.version",
        model_ids,
        versions,
    ):
        rows.metrics[(r["model_id"], r["version"], r["key"], r["dataset"])] = (
            r["value"],
            r["step"],
            r["timestamp"],
            r["position"],
            r["created_at"],
        )


async def write(
    conn: asyncpg.Connection, names: Names, loaded: VersionRows, evolved: VersionRows
) -> None:
    gone = sorted(evolved.deleted - loaded.deleted)
    if gone:
        for table in (
            names.model_versions,
            names.model_version_metrics,
            names.model_versions_models,
        ):
            await conn.execute(f"DELETE FROM {table} WHERE model_id = ANY ($1::text[])", gone)
    models = changed(loaded.models, evolved.models)
    await upsert(
        conn,
        names.model_versions_models,
        (("model_id", "text"), ("name", "text"), ("owner", "text"), ("archived", "boolean")),
        1,
        [(m, f.name, f.owner, f.archived) for m, f in models.items()],
    )
    new_rows = [
        (k, n, evolved.versions[k], m)
        for k, n in changed(loaded.registered, evolved.registered).items()
        if (m := evolved.models.get(k[0])) is not None
    ]
    if new_rows:
        await _insert_versions(conn, names, new_rows)
    facts = [
        (k, f)
        for k, f in changed(loaded.versions, evolved.versions).items()
        if k not in evolved.registered
    ]
    if facts:
        await _update_versions(conn, names, facts)
    if models:
        await _copy_model_facts(conn, names, models)
    # In key order: neighbouring rows land on the same index pages.
    points = sorted((*k, *p) for k, p in changed(loaded.metrics, evolved.metrics).items())
    await upsert(conn, names.model_version_metrics, _METRIC_COLUMNS, 4, points)


_METRIC_COLUMNS = (
    ("model_id", "text"),
    ("version", "int"),
    ("key", "text"),
    ("dataset", "text"),
    ("value", "float8"),
    ("step", "bigint"),
    ("timestamp", "timestamptz"),
    ("position", "bigint"),
    ("created_at", "timestamptz"),
)


_FACT_COLUMNS = (
    "stage, stage_since, aliases, description, tags, deprecated, deprecation_reason, deprecated_at,"
    " updated_at, position, environments"
)
_FACT_TYPES = (
    "$1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::boolean[], $7::text[],"
    " $8::timestamptz[], $9::timestamptz[], $10::bigint[], $11::text[]"
)


def _fact_arrays(facts: list[VersionFacts]) -> list[list[object]]:
    return [
        [f.stage for f in facts],
        [f.stage_since for f in facts],
        # An array of arrays cannot be ragged; each version's aliases travel as one JSON text.
        [_encode(list(f.aliases)).decode() for f in facts],
        [f.description for f in facts],
        [_encode(f.tags).decode() for f in facts],
        [f.deprecated for f in facts],
        [f.deprecation_reason for f in facts],
        [f.deprecated_at for f in facts],
        [f.updated_at for f in facts],
        [f.position for f in facts],
        [_encode(list(f.environments)).decode() for f in facts],
    ]


_ALIASES_FROM_JSON = "ARRAY(SELECT jsonb_array_elements_text(u.aliases::jsonb))::text[]"
_ENVIRONMENTS_FROM_JSON = "ARRAY(SELECT jsonb_array_elements_text(u.environments::jsonb))::text[]"


async def _insert_versions(
    conn: asyncpg.Connection,
    names: Names,
    rows: list[tuple[tuple[str, int], NewVersion, VersionFacts, ModelFacts]],
) -> None:
    facts = [f for _, _, f, _ in rows]
    models = [m for _, _, _, m in rows]
    await conn.execute(
        f"INSERT INTO {names.model_versions} (model_id, version, model_name, owner, model_archived, {_FACT_COLUMNS},"
        " content, content_digest, registered_by, created_at, external_source, run_id, run_url)"
        " SELECT u.model_id, u.version, u.model_name, u.owner, u.model_archived, u.stage, u.stage_since,"
        f" {_ALIASES_FROM_JSON}, u.description, u.tags::jsonb, u.deprecated, u.deprecation_reason, u.deprecated_at,"
        f" u.updated_at, u.position, {_ENVIRONMENTS_FROM_JSON}, u.content::json, u.content_digest,"
        " u.registered_by, u.created_at, u.external_source, u.run_id, u.run_url"
        f" FROM unnest({_FACT_TYPES}, $12::text[], $13::int[], $14::text[], $15::text[], $16::boolean[],"
        " $17::text[], $18::text[], $19::text[], $20::timestamptz[], $21::text[], $22::text[], $23::text[])"
        " AS u(stage, stage_since, aliases, description, tags, deprecated, deprecation_reason, deprecated_at,"
        " updated_at, position, environments, model_id, version, model_name, owner, model_archived, content,"
        " content_digest, registered_by, created_at, external_source, run_id, run_url)",
        *_fact_arrays(facts),
        [k[0] for k, _, _, _ in rows],
        [k[1] for k, _, _, _ in rows],
        [m.name for m in models],
        [m.owner for m in models],
        [m.archived for m in models],
        [n.content for _, n, _, _ in rows],
        [n.content_digest for _, n, _, _ in rows],
        [n.registered_by for _, n, _, _ in rows],
        [n.created_at for _, n, _, _ in rows],
        [n.external_source for _, n, _, _ in rows],
        [n.run_id for _, n, _, _ in rows],
        [n.run_url for _, n, _, _ in rows],
    )


async def _update_versions(
    conn: asyncpg.Connection, names: Names, rows: list[tuple[tuple[str, int], VersionFacts]]
) -> None:
    await conn.execute(
        f"UPDATE {names.model_versions} v SET stage = u.stage, stage_since = u.stage_since,"
        f" aliases = {_ALIASES_FROM_JSON}, description = u.description, tags = u.tags::jsonb,"
        " deprecated = u.deprecated, deprecation_reason = u.deprecation_reason, deprecated_at = u.deprecated_at,"
        f" updated_at = u.updated_at, position = u.position, environments = {_ENVIRONMENTS_FROM_JSON}"
        f" FROM unnest({_FACT_TYPES}, $12::text[], $13::int[])"
        " AS u(stage, stage_since, aliases, description, tags, deprecated, deprecation_reason, deprecated_at,"
        " updated_at, position, environments, model_id, version)"
        " WHERE v.model_id = u.model_id AND v.version = u.version",
        *_fact_arrays([f for _, f in rows]),
        [k[0] for k, _ in rows],
        [k[1] for k, _ in rows],
    )


async def _copy_model_facts(
    conn: asyncpg.Connection, names: Names, models: dict[str, ModelFacts]
) -> None:
    """The model's facts are copied onto every one of its versions."""
    await conn.execute(
        f"UPDATE {names.model_versions} v SET model_name = u.name, owner = u.owner, model_archived = u.archived"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[]) AS u(model_id, name, owner, archived)"
        " WHERE v.model_id = u.model_id"
        " AND (v.model_name, v.owner, v.model_archived) IS DISTINCT FROM (u.name, u.owner, u.archived)",
        list(models),
        [f.name for f in models.values()],
        [f.owner for f in models.values()],
        [f.archived for f in models.values()],
    )


VERSIONS = Projection(
    name="model_versions",
    # 2: the environments of a version's stage (``model_versions.environments``).
    # 3: the content's MLflow facts as columns (``external_source``, ``run_id``, ``run_url``).
    # 4: MLflow's JSON of each version (``mlflow_json``, migration 0004).
    # 5: the index of each stage's highest live version (``model_versions_latest``).
    version=5,
    tables=TABLES,
    handles=HANDLES,
    fold=Fold(load=load, evolve=evolve, write=write),
    description="one row per model version: content, stage, aliases, tags, deprecation, latest metrics",
)
PROJECTION = VERSIONS


# --- queries ----------------------------------------------------------------------------

_COLUMN_NAMES = (
    "model_id",
    "model_name",
    "version",
    "stage",
    "stage_since",
    "aliases",
    "description",
    "tags",
    "content",
    "content_digest",
    "registered_by",
    "deprecated",
    "deprecation_reason",
    "deprecated_at",
    "owner",
    "model_archived",
    "created_at",
    "updated_at",
    "position",
    "environments",
)
_TEXT = {"tags", "content"}

_tags = msgspec.json.Decoder(dict[str, str])
_content = msgspec.json.Decoder(VersionContent)


def columns(alias: str = "", *, content: bool = True) -> str:
    """The select list ``row_from_record`` reads, for a table aliased ``alias`` (without
    ``content``, it reads NULL in its place)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(
        "NULL::text AS content"
        if c == "content" and not content
        else f"{prefix}{c}::text AS {c}"
        if c in _TEXT
        else f"{prefix}{c}"
        for c in _COLUMN_NAMES
    )


_COLUMNS = columns()


def metrics_column(names: Names, alias: str) -> str:
    """A select-list entry ``metrics``: the latest metrics of the version in row ``alias``
    as an array of records, so a page of versions and their metrics is one query."""
    return (
        f"ARRAY(SELECT ROW(m.key, m.dataset, m.value, m.step, m.timestamp) FROM {names.model_version_metrics} m"
        f" WHERE m.model_id = {alias}.model_id AND m.version = {alias}.version ORDER BY m.key, m.dataset) AS metrics"
    )


def row_from_record(r: asyncpg.Record, metrics: tuple[MetricValue, ...] = ()) -> VersionRow:
    """A ``VersionRow`` from a record selected with ``columns()``; its metrics come from a
    ``metrics_column`` in the record, or else from ``metrics``."""
    listed = r.get("metrics")
    if listed is not None:
        metrics = tuple(
            MetricValue(key=k, dataset=d, value=v, step=n, timestamp=t) for k, d, v, n, t in listed
        )
    return VersionRow(
        model_id=r["model_id"],
        model_name=r["model_name"],
        version=r["version"],
        stage=r["stage"],
        stage_since=r["stage_since"],
        aliases=tuple(r["aliases"]),
        description=r["description"],
        tags=dict(sorted(_tags.decode(r["tags"]).items())),
        content=None if r["content"] is None else _content.decode(r["content"]),
        content_digest=r["content_digest"],
        registered_by=r["registered_by"],
        deprecated=r["deprecated"],
        deprecation_reason=r["deprecation_reason"],
        deprecated_at=r["deprecated_at"],
        owner=r["owner"],
        model_archived=r["model_archived"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        position=r["position"],
        metrics=metrics,
        environments=tuple(r["environments"]),
    )


async def rows_with_metrics(
    conn: Conn, names: Names, records: Sequence[asyncpg.Record]
) -> list[VersionRow]:
    """``VersionRow``s for records selected with ``columns()``, their latest metrics filled in
    by one more query. (Selecting ``metrics_column`` as well saves that query.)"""
    if not records:
        return []
    found: dict[tuple[str, int], list[MetricValue]] = {}
    for m in await conn.fetch(
        "SELECT m.model_id, m.version, m.key, m.dataset, m.value, m.step, m.timestamp"
        f" FROM {names.model_version_metrics} m JOIN unnest($1::text[], $2::int[]) AS k(model_id, version)"
        " ON m.model_id = k.model_id AND m.version = k.version ORDER BY m.model_id, m.version, m.key, m.dataset",
        [r["model_id"] for r in records],
        [r["version"] for r in records],
    ):
        found.setdefault((m["model_id"], m["version"]), []).append(_metric(m))
    return [
        row_from_record(r, tuple(found.get((r["model_id"], r["version"]), ()))) for r in records
    ]


def _metric(m: asyncpg.Record) -> MetricValue:
    return MetricValue(
        key=m["key"],
        dataset=m["dataset"],
        value=m["value"],
        step=m["step"],
        timestamp=m["timestamp"],
    )


def version_query(names: Names, model: str, first: int) -> str:
    """One version, whole, by number: the model's id is the SQL expression ``model``, the
    number ``$first`` (the form ``service.api.common.FirstRead`` renders)."""
    return (
        f"SELECT {columns('v')}, {metrics_column(names, 'v')} FROM {names.model_versions} v"
        f" WHERE v.model_id = {model} AND v.version = ${first}"
    )


def alias_query(alias: str) -> tuple[Callable[[Names, str, int], str], tuple[Any, ...]]:
    """The query (as ``version_query``) and arguments that find the version ``alias`` points
    at. The reserved names resolve by number: ``latest`` is the highest version number,
    ``v3`` is version 3."""
    if alias == "latest":

        def highest(names: Names, model: str, first: int) -> str:
            return (
                f"SELECT {columns('v')}, {metrics_column(names, 'v')} FROM {names.model_versions} v"
                f" WHERE v.model_id = {model} ORDER BY v.version DESC LIMIT 1"
            )

        return highest, ()
    if alias.startswith("v") and alias[1:].isascii() and alias[1:].isdigit() and len(alias) < 12:
        return version_query, (int(alias[1:]),)

    def pointed(names: Names, model: str, first: int) -> str:
        return (
            f"SELECT {columns('v')}, {metrics_column(names, 'v')} FROM {names.model_versions} v"
            f" WHERE v.model_id = {model} AND v.aliases @> ARRAY[${first}]::text[]"
        )

    return pointed, (alias,)


async def get_version(conn: Conn, names: Names, model_id: str, version: int) -> VersionRow | None:
    record = await conn.fetchrow(version_query(names, "$1", 2), model_id, version)
    return None if record is None else row_from_record(record)


async def version_by_alias(
    conn: Conn, names: Names, model_id: str, alias: str
) -> VersionRow | None:
    """The version ``alias`` points at (``alias_query``)."""
    query, args = alias_query(alias)
    record = await conn.fetchrow(query(names, "$1", 2), model_id, *args)
    return None if record is None else row_from_record(record)


async def latest_metrics(
    conn: Conn, names: Names, model_id: str, version: int
) -> tuple[MetricValue, ...]:
    """The latest value of each (metric key, dataset) of a version, sorted by key then dataset."""
    rows = await conn.fetch(
        f"SELECT key, dataset, value, step, timestamp FROM {names.model_version_metrics}"
        " WHERE model_id = $1 AND version = $2 ORDER BY key, dataset",
        model_id,
        version,
    )
    return tuple(_metric(m) for m in rows)
