"""The model catalogue: one row per registered model, what the registry's front page lists.

Answers "what is model X?" by id (``get_model``) or by name (``get_model_by_name``):
its name, description, tags, owner, archived flag, latest version, the latest version in
each stage, its aliases, version counts and when it was created and last changed.
Searching and listing live in ``projections.search``.

Tables (SQL names come from ``names``; see ``projections.base``):

- ``model_catalogue``: the rows. Keyed by ``model_id`` because a rename keeps the id.
  ``name`` has an ordinary index, not a unique one: the write side keeps names unique,
  but two transactions (a rename releasing a name, a registration taking it) can reach
  the log in the opposite order, and a unique index would then stop the projection for
  good. ``named_at`` (the log position that gave a row its name) breaks such a tie.
- ``model_catalogue_stages``: each version's current stage, from which the latest version
  per stage and the per-stage counts are aggregated after every batch.

``updated_at`` is the business time (``occurred_at``) of the latest event of the model's
own stream, whatever it changed (versions, stages, promotions, deployments included);
metric batches do not count. ``position`` is that event's log position.

A batch is folded by ``load`` (the touched rows, and every version's stage of models whose
stages change), the pure ``evolve`` and ``write`` (one upsert per table), so a rebuild
costs a few statements per batch, not per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import asyncpg
import msgspec
from msgspec.structs import replace

from eventlog.log import LoggedEvent
from events.base import Event
from events.catalogue import CODEC
from events.model.events import (
    MODEL_EVENT_TYPES,
    AliasRemoved,
    AliasSet,
    ModelArchived,
    ModelDeleted,
    ModelDescriptionUpdated,
    ModelRegistered,
    ModelRenamed,
    ModelRestored,
    ModelTagsRemoved,
    ModelTagsSet,
    StageTransitioned,
    VersionRegistered,
)
from events.stages import Stage, placement
from events.streams import model_id_of
from projections.base import Fold, Names, Projection, Table, changed, upsert

Conn = asyncpg.Connection | asyncpg.Pool
V = TypeVar("V")

STAGES: tuple[str, ...] = tuple(str(s) for s in Stage)

TABLES = [
    Table(
        "model_catalogue",
        """
        model_id       text COLLATE "C" PRIMARY KEY,
        name           text COLLATE "C" NOT NULL,
        description    text             NOT NULL,
        tags           jsonb            NOT NULL,
        owner          text COLLATE "C" NOT NULL,
        archived       boolean          NOT NULL,
        latest_version int,
        version_count  int              NOT NULL,
        stages         jsonb            NOT NULL,
        stage_counts   jsonb            NOT NULL,
        aliases        jsonb            NOT NULL,
        created_at     timestamptz      NOT NULL,
        updated_at     timestamptz      NOT NULL,
        named_at       bigint           NOT NULL,
        position       bigint           NOT NULL
        """,
        key=("model_id",),
        indexes=[
            # Keyset orders: (sort column, model_id) so every key is unique.
            "CREATE INDEX {name}_name ON {table} (name, model_id)",
            "CREATE INDEX {name}_created ON {table} (created_at, model_id)",
            "CREATE INDEX {name}_updated ON {table} (updated_at, model_id)",
            "CREATE INDEX {name}_owner ON {table} (owner, name)",
            # Substring and prefix search on names (ILIKE uses trigrams).
            "CREATE INDEX {name}_name_trgm ON {table} USING gin (name public.gin_trgm_ops)",
            # tags @> '{"k": "v"}', tags ? 'k', aliases ? 'champion', stages ?| '{production}'.
            "CREATE INDEX {name}_tags ON {table} USING gin (tags)",
            "CREATE INDEX {name}_aliases ON {table} USING gin (aliases)",
            "CREATE INDEX {name}_stages ON {table} USING gin (stages)",
        ],
    ),
    Table(
        "model_catalogue_stages",
        'model_id text COLLATE "C" NOT NULL, version int NOT NULL, stage text NOT NULL,'
        " environments jsonb NOT NULL, PRIMARY KEY (model_id, version)",
        key=("model_id", "version"),
        indexes=["CREATE INDEX {name}_stage ON {table} (model_id, stage, version)"],
    ),
]


class ModelRow(msgspec.Struct, frozen=True, kw_only=True):
    """A registered model as the catalogue shows it.

    ``stages`` maps every stage to the highest version number in it (None: no version);
    ``stage_counts`` maps every stage to how many versions are in it; a stage with
    environments also has a key per environment it holds a version in (``production@eu``); ``aliases`` maps
    each alias to its version. ``latest_version`` is the highest number ever registered.
    """

    model_id: str
    name: str
    description: str
    tags: dict[str, str]
    owner: str
    archived: bool
    latest_version: int | None
    version_count: int
    stages: dict[str, int | None]
    stage_counts: dict[str, int]
    aliases: dict[str, int]
    created_at: datetime
    updated_at: datetime
    position: int


def _empty_stages() -> dict[str, int | None]:
    return dict.fromkeys(STAGES, None)


# A version's stage and the environments of it the version is in (sorted; () for a stage
# without environments).
Placed = tuple[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class CatalogueRows:
    """The catalogue rows of the models a batch touches.

    ``named_at`` is the log position that gave each model its name (``get_model_by_name``
    breaks ties with it). ``stages`` holds every version's stage of each model whose
    versions the batch moves, whose stage summary is aggregated from all of them; a
    registration counts its version onto the row's summary, which needs no other stage.
    """

    models: dict[str, ModelRow] = field(default_factory=dict)
    named_at: dict[str, int] = field(default_factory=dict)
    stages: dict[tuple[str, int], Placed] = field(default_factory=dict)
    deleted: frozenset[str] = frozenset()  # models the batch deleted: their rows go


def evolve(rows: CatalogueRows, events: Sequence[LoggedEvent]) -> CatalogueRows:
    """Fold a batch of model-stream events into the catalogue rows. Pure."""
    models = dict(rows.models)
    named_at = dict(rows.named_at)
    stages = dict(rows.stages)
    deleted = set(rows.deleted)
    restaged: set[str] = set()
    # A move can take a stage's highest version away, so the models the batch moves are
    # summarised again from every version's stage (``load`` reads them). A registration
    # only adds the model's highest version: counted onto the row, whatever its history.
    regathered = {model_id_of(e.stream_id) for e in events if e.event_type in _REGATHERED}
    for logged in events:
        model_id = model_id_of(logged.stream_id)
        event = CODEC.decode(logged.envelope)
        if isinstance(event, ModelDeleted):
            # The tombstone: nothing of the model is shown any more (its name is free).
            models.pop(model_id, None)
            named_at.pop(model_id, None)
            stages = {k: v for k, v in stages.items() if k[0] != model_id}
            restaged.discard(model_id)
            deleted.add(model_id)
            continue
        row = evolve_row(models.get(model_id), event, logged)
        if row is not None:
            models[model_id] = row
        if isinstance(event, ModelRegistered | ModelRenamed):
            named_at[model_id] = logged.log_position
        elif isinstance(event, VersionRegistered | StageTransitioned):
            placed = _stage_after(event, stages.get((model_id, event.version)))
            stages[(model_id, event.version)] = placed
            if model_id in regathered:
                restaged.add(model_id)
            elif model_id in models:
                models[model_id] = _counted(models[model_id], event.version, placed)
    for model_id, (latest, counts) in _stage_summaries(stages, restaged).items():
        if model_id in models:
            models[model_id] = replace(models[model_id], stages=latest, stage_counts=counts)
    return CatalogueRows(
        models=models, named_at=named_at, stages=stages, deleted=frozenset(deleted)
    )


def evolve_row(row: ModelRow | None, event: Event, logged: LoggedEvent) -> ModelRow | None:
    """Fold one model-stream event into the model's row (None before registration).

    Pure. ``stages`` and ``stage_counts`` are not touched here: ``evolve`` aggregates
    them from every version's stage once per batch.
    """
    at = logged.envelope.occurred_at
    if isinstance(event, ModelRegistered):
        return ModelRow(
            model_id=event.model_id,
            name=event.name,
            description=event.description,
            tags=dict(event.tags),
            owner=event.owner,
            archived=False,
            latest_version=None,
            version_count=0,
            stages=_empty_stages(),
            stage_counts=dict.fromkeys(STAGES, 0),
            aliases={},
            created_at=at,
            updated_at=at,
            position=logged.log_position,
        )
    if row is None:
        return None  # a decider never writes to an unregistered model; nothing to show
    row = replace(row, updated_at=at, position=logged.log_position)
    match event:
        case ModelDescriptionUpdated():
            return replace(row, description=event.description)
        case ModelTagsSet():
            return replace(row, tags={**row.tags, **event.tags})
        case ModelTagsRemoved():
            return replace(row, tags={k: v for k, v in row.tags.items() if k not in event.keys})
        case ModelRenamed():
            return replace(row, name=event.new_name)
        case ModelArchived():
            return replace(row, archived=True)
        case ModelRestored():
            return replace(row, archived=False)
        case VersionRegistered():
            latest = max(row.latest_version or 0, event.version)
            return replace(row, latest_version=latest, version_count=row.version_count + 1)
        case AliasSet():
            return replace(row, aliases={**row.aliases, event.alias: event.version})
        case AliasRemoved():
            return replace(row, aliases={k: v for k, v in row.aliases.items() if k != event.alias})
        case _:
            return row


def _stage_after(event: VersionRegistered | StageTransitioned, before: Placed | None) -> Placed:
    """Where the version is after ``event`` (the rule of ``events.model.evolve``)."""
    if isinstance(event, VersionRegistered):
        return (event.initial_stage(), ())
    entered, left = event.entered_environment(), event.left_environment()
    if before is None or event.from_stage != event.to_stage or before[0] != event.to_stage:
        return (event.to_stage, () if entered is None else (entered,))
    environments = {*before[1], *(() if entered is None else (entered,))}
    environments.discard(left or "")
    return (event.to_stage, tuple(sorted(environments)))


def _counted(row: ModelRow, version: int, placed: Placed) -> ModelRow:
    """``row`` with a newly registered ``version`` (the model's highest) counted into its
    stage summary, as ``_stage_summaries`` would count it."""
    stage, environments = placed
    latest, counts = dict(row.stages), dict(row.stage_counts)
    for key in (stage, *(placement(stage, e) for e in environments)):
        latest[key] = max(latest.get(key) or 0, version)
        counts[key] = counts.get(key, 0) + 1
    return replace(row, stages=latest, stage_counts=counts)


def _stage_summaries(
    stages: dict[tuple[str, int], Placed], model_ids: set[str]
) -> dict[str, tuple[dict[str, int | None], dict[str, int]]]:
    """Per model: the highest version in each stage (and each stage@environment) and how
    many versions each holds."""
    summaries = {m: (_empty_stages(), dict.fromkeys(STAGES, 0)) for m in sorted(model_ids)}
    for (model_id, version), (stage, environments) in stages.items():
        if model_id in summaries:
            latest, counts = summaries[model_id]
            for key in (stage, *(placement(stage, e) for e in environments)):
                latest[key] = max(latest.get(key) or 0, version)
                counts[key] = counts.get(key, 0) + 1
    return summaries


_COLUMN_NAMES = (
    "model_id",
    "name",
    "description",
    "tags",
    "owner",
    "archived",
    "latest_version",
    "version_count",
    "stages",
    "stage_counts",
    "aliases",
    "created_at",
    "updated_at",
    "position",
)
_JSON = {"tags", "stages", "stage_counts", "aliases"}


def columns(alias: str = "") -> str:
    """The select list ``row_from_record`` reads (jsonb as text), for a table aliased ``alias``."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(
        f"{prefix}{c}::text AS {c}" if c in _JSON else f"{prefix}{c}" for c in _COLUMN_NAMES
    )


_COLUMNS = columns()

_tags = msgspec.json.Decoder(dict[str, str])
_stage_map = msgspec.json.Decoder(dict[str, int])


def _sorted(mapping: dict[str, V]) -> dict[str, V]:
    # jsonb keeps keys shortest first; callers expect them in name order.
    return dict(sorted(mapping.items()))


def row_from_record(r: asyncpg.Record) -> ModelRow:
    """A ``ModelRow`` from a record selected with ``columns()`` (``projections.search`` uses it)."""
    latest_per_stage = _stage_map.decode(r["stages"])
    count_per_stage = _stage_map.decode(r["stage_counts"])
    return ModelRow(
        model_id=r["model_id"],
        name=r["name"],
        description=r["description"],
        tags=_sorted(_tags.decode(r["tags"])),
        owner=r["owner"],
        archived=r["archived"],
        latest_version=r["latest_version"],
        version_count=r["version_count"],
        stages={**_empty_stages(), **latest_per_stage},
        stage_counts={**dict.fromkeys(STAGES, 0), **count_per_stage},
        aliases=_sorted(_stage_map.decode(r["aliases"])),
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        position=r["position"],
    )


_encode = msgspec.json.Encoder(order="sorted").encode


async def load(
    conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]
) -> CatalogueRows:
    """The rows of every model the batch touches, and every version's stage of the models
    whose versions it moves (``evolve`` summarises those again)."""
    touched = list(dict.fromkeys(model_id_of(e.stream_id) for e in events))
    restaged = list(
        dict.fromkeys(model_id_of(e.stream_id) for e in events if e.event_type in _REGATHERED)
    )
    rows = CatalogueRows()
    for record in await conn.fetch(
        f"SELECT {_COLUMNS}, named_at FROM {names.model_catalogue} WHERE model_id = ANY ($1::text[])",
        touched,
    ):
        rows.models[record["model_id"]] = row_from_record(record)
        rows.named_at[record["model_id"]] = record["named_at"]
    if restaged:
        for record in await conn.fetch(
            f"SELECT model_id, version, stage, environments::text AS environments"
            f" FROM {names.model_catalogue_stages} WHERE model_id = ANY ($1::text[])",
            restaged,
        ):
            rows.stages[(record["model_id"], record["version"])] = (
                record["stage"],
                tuple(_environments.decode(record["environments"])),
            )
    return rows


# The events after which a model's stage summary is gathered from all its versions.
_REGATHERED = frozenset({StageTransitioned.event_type})


async def write(
    conn: asyncpg.Connection, names: Names, loaded: CatalogueRows, evolved: CatalogueRows
) -> None:
    stages = changed(loaded.stages, evolved.stages)
    await upsert(
        conn,
        names.model_catalogue_stages,
        (("model_id", "text"), ("version", "int"), ("stage", "text"), ("environments", "jsonb")),
        2,
        [(m, v, stage, _encode(list(envs)).decode()) for (m, v), (stage, envs) in stages.items()],
    )
    gone = sorted(evolved.deleted - loaded.deleted)
    if gone:
        for table in (names.model_catalogue, names.model_catalogue_stages):
            await conn.execute(f"DELETE FROM {table} WHERE model_id = ANY ($1::text[])", gone)
    models = changed(loaded.models, evolved.models)
    renamed = changed(loaded.named_at, evolved.named_at)
    rows = [evolved.models[m] for m in dict.fromkeys([*models, *renamed]) if m in evolved.models]
    await _write_rows(conn, names, rows, evolved.named_at)


async def _write_rows(
    conn: asyncpg.Connection, names: Names, rows: list[ModelRow], named_at: dict[str, int]
) -> None:
    await upsert(
        conn,
        names.model_catalogue,
        _ROW_COLUMNS,
        1,
        [
            (
                r.model_id,
                r.name,
                r.description,
                _encode(r.tags).decode(),
                r.owner,
                r.archived,
                r.latest_version,
                r.version_count,
                # Only stages that hold a version are stored, so ``stages ?| $1`` means "has one in".
                _encode({s: v for s, v in r.stages.items() if v is not None}).decode(),
                _encode({s: n for s, n in r.stage_counts.items() if n}).decode(),
                _encode(r.aliases).decode(),
                r.created_at,
                r.updated_at,
                named_at[r.model_id],
                r.position,
            )
            for r in rows
        ],
    )


_ROW_COLUMNS = (
    ("model_id", "text"),
    ("name", "text"),
    ("description", "text"),
    ("tags", "jsonb"),
    ("owner", "text"),
    ("archived", "boolean"),
    ("latest_version", "int"),
    ("version_count", "int"),
    ("stages", "jsonb"),
    ("stage_counts", "jsonb"),
    ("aliases", "jsonb"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
    ("named_at", "bigint"),
    ("position", "bigint"),
)


_environments = msgspec.json.Decoder(list[str])

CATALOGUE = Projection(
    name="model_catalogue",
    # 2: stages per environment (``model_catalogue_stages.environments``).
    version=2,
    tables=TABLES,
    handles=frozenset(t.event_type for t in MODEL_EVENT_TYPES),
    fold=Fold(load=load, evolve=evolve, write=write),
    description="one row per registered model: name, tags, owner, stages, aliases, counts",
)
PROJECTION = CATALOGUE


def model_query(names: Names, model: str, first: int) -> str:
    """One model's row: its id is the SQL expression ``model`` (the form
    ``service.api.common.FirstRead`` renders; ``first`` numbers no parameter here)."""
    return f"SELECT {_COLUMNS} FROM {names.model_catalogue} WHERE model_id = {model}"


async def get_model(conn: Conn, names: Names, model_id: str) -> ModelRow | None:
    record = await conn.fetchrow(model_query(names, "$1", 2), model_id)
    return None if record is None else row_from_record(record)


async def get_model_by_name(conn: Conn, names: Names, name: str) -> ModelRow | None:
    """The model called ``name`` (exact, case-sensitive). If the log briefly shows two
    models with one name (see the module docstring), the one named last wins."""
    record = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM {names.model_catalogue} WHERE name = $1 ORDER BY named_at DESC LIMIT 1",
        name,
    )
    return None if record is None else row_from_record(record)
