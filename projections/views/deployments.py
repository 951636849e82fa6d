"""Deployments: what should run where (desired) against what runs there (actual), and the drift.

Answers "is production serving what the registry says it should?" (``places`` with
``drifted_only=True``), "what runs at (environment, target)?" (``place``) and "how did it get
there?" (``runs``).

A place is (model, environment, target). *Actual* is the live deployment there (the last
one that succeeded, unless rolled back, as ``events.model.state`` folds it) plus any
deployment still in flight. *Desired* is what the live deployment follows (a stage or an
alias, from its ``model.deployment_started``; with nothing live, what the latest
deployment followed) resolved against the registry now: the version under that alias, or
for ``production`` the production version (with production per environment, the one in
production in the place's environment: drift compares per environment). For another stage, several versions may share
it, so the place is in sync while the deployed version is still in that stage. This is
``events.model.deployments.compare_deployments``, extended to places with nothing live.

A projection reads only its own tables, so this one keeps each version's stage and each
alias's target itself, from the same stage and alias events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import asyncpg
import msgspec
from msgspec.structs import replace

from eventlog.log import LoggedEvent
from events.catalogue import CODEC
from events.model.events import (
    AliasRemoved,
    AliasSet,
    DeploymentFailed,
    DeploymentRolledBack,
    DeploymentStarted,
    DeploymentSucceeded,
    StageTransitioned,
    VersionRegistered,
)
from events.stages import Stage
from events.streams import model_id_of
from projections.base import Fold, Names, Projection, Table, changed, upsert

Conn = asyncpg.Connection | asyncpg.Pool

TABLES = [
    Table(
        "deployment_runs",
        """
        model_id               text        NOT NULL,
        deployment_id          text        NOT NULL,
        version                int         NOT NULL,
        environment            text        NOT NULL,
        target                 text        NOT NULL,
        desired_stage          text,
        desired_alias          text,
        status                 text        NOT NULL,
        started_by             text        NOT NULL,
        started_at             timestamptz NOT NULL,
        started_position       bigint      NOT NULL,
        finished_by            text,
        finished_at            timestamptz,
        finished_position      bigint,
        replaced_deployment_id text,
        restored_deployment_id text,
        comment                text        NOT NULL,
        reason                 text        NOT NULL,
        PRIMARY KEY (model_id, deployment_id)
        """,
        key=("model_id", "deployment_id"),
        indexes=[
            "CREATE INDEX {name}_place ON {table} (model_id, environment, target, started_position)"
        ],
    ),
    Table(
        "deployment_places",
        """
        model_id           text        NOT NULL,
        environment        text        NOT NULL,
        target             text        NOT NULL,
        live_deployment_id text,
        since_position     bigint      NOT NULL,
        since_time         timestamptz NOT NULL,
        PRIMARY KEY (model_id, environment, target)
        """,
        key=("model_id", "environment", "target"),
        indexes=["CREATE INDEX {name}_environment ON {table} (environment)"],
    ),
    # The registry's side, kept here because a view may read only its own tables.
    Table(
        "deployment_versions",
        "model_id text NOT NULL, version int NOT NULL, stage text NOT NULL,"
        " environments jsonb NOT NULL, PRIMARY KEY (model_id, version)",
        key=("model_id", "version"),
        indexes=["CREATE INDEX {name}_stage ON {table} (model_id, stage)"],
    ),
    Table(
        "deployment_aliases",
        "model_id text NOT NULL, alias text NOT NULL, version int NOT NULL,"
        " PRIMARY KEY (model_id, alias)",
        key=("model_id", "alias"),
    ),
]


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """One deployment: started, then succeeded, failed or rolled back."""

    model_id: str
    deployment_id: str
    version: int
    environment: str
    target: str
    desired_stage: str | None
    desired_alias: str | None
    status: str
    started_by: str
    started_at: datetime
    started_position: int
    finished_by: str | None
    finished_at: datetime | None
    finished_position: int | None
    replaced_deployment_id: str | None
    restored_deployment_id: str | None
    comment: str
    reason: str


class Place(msgspec.Struct, frozen=True, kw_only=True):
    """Desired against actual at one (model, environment, target).

    ``follows`` is ``stage:<stage>``, ``alias:<alias>`` or None (a deployment that follows
    nothing cannot drift). ``drift_code`` is one of ``in_sync``, ``untracked``,
    ``version_mismatch``, ``stage_mismatch``, ``no_desired_version``, ``nothing_live``.
    """

    model_id: str
    environment: str
    target: str
    follows: str | None
    desired_version: int | None
    live_deployment_id: str | None
    live_version: int | None
    live_version_stage: str | None
    live_since: datetime
    in_flight_deployment_id: str | None
    in_flight_version: int | None
    in_flight_since: datetime | None
    drift: bool
    drift_code: str
    drift_reason: str


# --- the fold ----------------------------------------------------------------------------


class PlaceRow(msgspec.Struct, frozen=True, kw_only=True):
    """A ``deployment_places`` row: what serves at a place, since when."""

    model_id: str
    environment: str
    target: str
    live_deployment_id: str | None
    since_position: int
    since_time: datetime


RunKey = tuple[str, str]  # model_id, deployment_id
PlaceKey = tuple[str, str, str]  # model_id, environment, target


@dataclass(frozen=True, slots=True)
class DeploymentRows:
    """The rows a batch touches: runs (loaded when it reports on them) and their places,
    and each version's stage and alias target it writes (``None``: alias removed)."""

    runs: dict[RunKey, Run] = field(default_factory=dict)
    places: dict[PlaceKey, PlaceRow] = field(default_factory=dict)
    # Each version's stage and the environments of it the version is in.
    stages: dict[tuple[str, int], tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    aliases: dict[tuple[str, str], int | None] = field(default_factory=dict)


def evolve(rows: DeploymentRows, events: Sequence[LoggedEvent]) -> DeploymentRows:
    """Fold a batch into runs, places, stages and aliases. Pure."""
    new = DeploymentRows(
        runs=dict(rows.runs),
        places=dict(rows.places),
        stages=dict(rows.stages),
        aliases=dict(rows.aliases),
    )
    for logged in events:
        event = CODEC.decode(logged.envelope)
        model_id = model_id_of(logged.stream_id)
        match event:
            case VersionRegistered():
                new.stages[(model_id, event.version)] = (event.initial_stage(), ())
            case StageTransitioned():
                new.stages[(model_id, event.version)] = _placed(
                    new.stages.get((model_id, event.version)), event
                )
            case AliasSet():
                new.aliases[(model_id, event.alias)] = event.version
            case AliasRemoved():
                new.aliases[(model_id, event.alias)] = None
            case DeploymentStarted():
                _started(new, model_id, event, logged)
            case DeploymentSucceeded() | DeploymentFailed() | DeploymentRolledBack():
                _reported(new, model_id, event, logged)
            case _:
                pass
    return new


def _placed(
    before: tuple[str, tuple[str, ...]] | None, event: StageTransitioned
) -> tuple[str, tuple[str, ...]]:
    """Where the version is after ``event`` (the rule of ``events.model.evolve``). A batch
    that moves a version within its stage without knowing where it was (the write keeps
    its stored row) cannot happen: ``load`` reads the stored placement of every version
    the batch moves."""
    entered, left = event.entered_environment(), event.left_environment()
    if before is None or event.from_stage != event.to_stage or before[0] != event.to_stage:
        return (str(event.to_stage), () if entered is None else (entered,))
    environments = {*before[1], *(() if entered is None else (entered,))}
    environments.discard(left or "")
    return (str(event.to_stage), tuple(sorted(environments)))


def _started(
    rows: DeploymentRows, model_id: str, event: DeploymentStarted, logged: LoggedEvent
) -> None:
    envelope = logged.envelope
    rows.runs[(model_id, event.deployment_id)] = Run(
        model_id=model_id,
        deployment_id=event.deployment_id,
        version=event.version,
        environment=event.environment,
        target=event.target,
        desired_stage=None if event.desired_stage is None else str(event.desired_stage),
        desired_alias=event.desired_alias,
        status="started",
        started_by=envelope.actor,
        started_at=envelope.occurred_at,
        started_position=logged.log_position,
        finished_by=None,
        finished_at=None,
        finished_position=None,
        replaced_deployment_id=None,
        restored_deployment_id=None,
        comment=event.comment,
        reason="",
    )
    place = (model_id, event.environment, event.target)
    if place not in rows.places:
        rows.places[place] = PlaceRow(
            model_id=model_id,
            environment=event.environment,
            target=event.target,
            live_deployment_id=None,
            since_position=logged.log_position,
            since_time=envelope.occurred_at,
        )


def _reported(
    rows: DeploymentRows,
    model_id: str,
    event: DeploymentSucceeded | DeploymentFailed | DeploymentRolledBack,
    logged: LoggedEvent,
) -> None:
    """A deployment finished: its run records how, and its place what serves now."""
    run = rows.runs.get((model_id, event.deployment_id))
    if run is None:
        return  # a decider never reports on a deployment it has not started; nothing to show
    envelope = logged.envelope
    run = replace(
        run,
        finished_by=envelope.actor,
        finished_at=envelope.occurred_at,
        finished_position=logged.log_position,
    )
    place = (model_id, run.environment, run.target)
    live: tuple[str | None] | None = None  # (what serves now,) when the report changes it
    match event:
        case DeploymentSucceeded():
            run = replace(
                run,
                status="succeeded",
                replaced_deployment_id=event.replaced_deployment_id,
                comment=event.comment or run.comment,
            )
            live = (event.deployment_id,)
        case DeploymentFailed():
            run = replace(run, status="failed", reason=event.reason)
        case DeploymentRolledBack():
            run = replace(
                run,
                status="rolled_back",
                reason=event.reason,
                restored_deployment_id=event.restored_deployment_id,
            )
            # As the domain folds it: only rolling back the live one changes what serves.
            serving = rows.places.get(place)
            if serving is not None and serving.live_deployment_id == event.deployment_id:
                live = (event.restored_deployment_id,)
    rows.runs[(model_id, event.deployment_id)] = run
    if live is not None and place in rows.places:
        rows.places[place] = replace(
            rows.places[place],
            live_deployment_id=live[0],
            since_position=logged.log_position,
            since_time=envelope.occurred_at,
        )


# --- load and write ------------------------------------------------------------------------

_REPORTS = (DeploymentSucceeded, DeploymentFailed, DeploymentRolledBack)
_REPORT_TYPES = frozenset(t.event_type for t in _REPORTS)


async def load(
    conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]
) -> DeploymentRows:
    """The runs the batch reports on, and the places of those and of the runs it starts."""
    reported: set[RunKey] = set()
    places: set[PlaceKey] = set()
    moved: set[tuple[str, int]] = set()
    for logged in events:
        if logged.event_type == StageTransitioned.event_type:
            transition = CODEC.decode(logged.envelope)
            assert isinstance(transition, StageTransitioned)
            if transition.from_stage == transition.to_stage:
                moved.add((model_id_of(logged.stream_id), transition.version))
        elif logged.event_type == DeploymentStarted.event_type:
            started = CODEC.decode(logged.envelope)
            assert isinstance(started, DeploymentStarted)
            places.add((model_id_of(logged.stream_id), started.environment, started.target))
        elif logged.event_type in _REPORT_TYPES:
            report = CODEC.decode(logged.envelope)
            assert isinstance(report, _REPORTS)
            reported.add((model_id_of(logged.stream_id), report.deployment_id))
    rows = DeploymentRows()
    for r in await _load(conn, names.deployment_runs, Run, ("model_id", "deployment_id"), reported):
        rows.runs[(r.model_id, r.deployment_id)] = r
    places |= {(r.model_id, r.environment, r.target) for r in rows.runs.values()}
    for p in await _load(
        conn, names.deployment_places, PlaceRow, ("model_id", "environment", "target"), places
    ):
        rows.places[(p.model_id, p.environment, p.target)] = p
    if moved:
        ordered = sorted(moved)
        for placed in await conn.fetch(
            f"SELECT t.model_id, t.version, t.stage, t.environments::text AS environments"
            f" FROM {names.deployment_versions} t"
            " JOIN unnest($1::text[], $2::int[]) AS k(model_id, version)"
            " ON t.model_id = k.model_id AND t.version = k.version",
            [m for m, _ in ordered],
            [v for _, v in ordered],
        ):
            rows.stages[(placed["model_id"], placed["version"])] = (
                placed["stage"],
                tuple(_environments.decode(placed["environments"])),
            )
    return rows


_environments = msgspec.json.Decoder(list[str])
_encode = msgspec.json.Encoder().encode


RowT = TypeVar("RowT", Run, PlaceRow)


async def _load(
    conn: asyncpg.Connection,
    table: str,
    row_type: type[RowT],
    key: Sequence[str],
    keys: Iterable[tuple[str, ...]],
) -> list[RowT]:
    ordered = sorted(keys)
    if not ordered:
        return []
    columns = ", ".join(f"t.{name}" for name in row_type.__struct_fields__)
    params = ", ".join(f"${i + 1}::text[]" for i in range(len(key)))
    rows = await conn.fetch(
        f"SELECT {columns} FROM {table} t JOIN unnest({params}) AS k({', '.join(key)})"
        f" ON {' AND '.join(f't.{k} = k.{k}' for k in key)}",
        *([k[i] for k in ordered] for i in range(len(key))),
    )
    return [row_type(**dict(r)) for r in rows]


async def write(
    conn: asyncpg.Connection, names: Names, loaded: DeploymentRows, evolved: DeploymentRows
) -> None:
    await upsert(
        conn,
        names.deployment_versions,
        (("model_id", "text"), ("version", "int"), ("stage", "text"), ("environments", "jsonb")),
        2,
        [
            (*k, stage, _encode(list(environments)).decode())
            for k, (stage, environments) in changed(loaded.stages, evolved.stages).items()
        ],
    )
    aliases = changed(loaded.aliases, evolved.aliases)
    removed = [k for k, version in aliases.items() if version is None]
    if removed:
        await conn.execute(
            f"DELETE FROM {names.deployment_aliases} t USING unnest($1::text[], $2::text[]) AS k(m, a)"
            " WHERE t.model_id = k.m AND t.alias = k.a",
            [m for m, _ in removed],
            [a for _, a in removed],
        )
    await upsert(
        conn,
        names.deployment_aliases,
        (("model_id", "text"), ("alias", "text"), ("version", "int")),
        2,
        [(*k, version) for k, version in aliases.items() if version is not None],
    )
    await upsert(
        conn,
        names.deployment_runs,
        _RUN_COLUMNS,
        2,
        [msgspec.structs.astuple(r) for r in changed(loaded.runs, evolved.runs).values()],
    )
    await upsert(
        conn,
        names.deployment_places,
        _PLACE_COLUMNS,
        3,
        [msgspec.structs.astuple(p) for p in changed(loaded.places, evolved.places).values()],
    )


_RUN_COLUMNS = (
    ("model_id", "text"),
    ("deployment_id", "text"),
    ("version", "int"),
    ("environment", "text"),
    ("target", "text"),
    ("desired_stage", "text"),
    ("desired_alias", "text"),
    ("status", "text"),
    ("started_by", "text"),
    ("started_at", "timestamptz"),
    ("started_position", "bigint"),
    ("finished_by", "text"),
    ("finished_at", "timestamptz"),
    ("finished_position", "bigint"),
    ("replaced_deployment_id", "text"),
    ("restored_deployment_id", "text"),
    ("comment", "text"),
    ("reason", "text"),
)
_PLACE_COLUMNS = (
    ("model_id", "text"),
    ("environment", "text"),
    ("target", "text"),
    ("live_deployment_id", "text"),
    ("since_position", "bigint"),
    ("since_time", "timestamptz"),
)


PROJECTION = Projection(
    name="deployments",
    # 2: production per environment (``deployment_versions.environments``).
    version=2,
    tables=TABLES,
    handles=frozenset(
        {
            VersionRegistered.event_type,
            StageTransitioned.event_type,
            AliasSet.event_type,
            AliasRemoved.event_type,
            DeploymentStarted.event_type,
            *_REPORT_TYPES,
        }
    ),
    fold=Fold(load=load, evolve=evolve, write=write),
    description="desired vs actual deployments per environment and target, and the drift",
)


# --- queries ------------------------------------------------------------------------------


def _places_sql(names: Names) -> str:
    runs = names.deployment_runs
    return f"""
SELECT p.model_id, p.environment, p.target, p.live_deployment_id, p.since_time,
       l.version AS live_version, lv.stage AS live_version_stage,
       coalesce(l.desired_stage, CASE WHEN l.deployment_id IS NULL THEN last.desired_stage END) AS follow_stage,
       coalesce(l.desired_alias, CASE WHEN l.deployment_id IS NULL THEN last.desired_alias END) AS follow_alias,
       f.deployment_id AS in_flight_id, f.version AS in_flight_version, f.started_at AS in_flight_since,
       prod.version AS production_version, a.version AS alias_version
  FROM {names.deployment_places} p
  LEFT JOIN {runs} l ON l.model_id = p.model_id AND l.deployment_id = p.live_deployment_id
  LEFT JOIN {names.deployment_versions} lv ON lv.model_id = l.model_id AND lv.version = l.version
  LEFT JOIN LATERAL (SELECT r.desired_stage, r.desired_alias FROM {runs} r
                      WHERE r.model_id = p.model_id AND r.environment = p.environment AND r.target = p.target
                      ORDER BY r.started_position DESC LIMIT 1) last ON true
  LEFT JOIN LATERAL (SELECT r.deployment_id, r.version, r.started_at FROM {runs} r
                      WHERE r.model_id = p.model_id AND r.environment = p.environment AND r.target = p.target
                        AND r.status = 'started'
                      ORDER BY r.started_position DESC LIMIT 1) f ON true
  LEFT JOIN LATERAL (SELECT v.version FROM {names.deployment_versions} v
                      WHERE v.model_id = p.model_id AND v.stage = 'production'
                        AND (v.environments ? p.environment
                             OR NOT EXISTS (SELECT FROM {names.deployment_versions} w
                                             WHERE w.model_id = p.model_id AND w.stage = 'production'
                                               AND w.environments <> '[]'::jsonb))
                      ORDER BY v.version DESC LIMIT 1) prod ON true
  LEFT JOIN {names.deployment_aliases} a
         ON a.model_id = p.model_id
        AND a.alias = coalesce(l.desired_alias, CASE WHEN l.deployment_id IS NULL THEN last.desired_alias END)
"""


def _place(row: asyncpg.Record) -> Place:
    stage, alias = row["follow_stage"], row["follow_alias"]
    live, live_stage = row["live_version"], row["live_version_stage"]
    desired: int | None = None
    follows: str | None = None
    if alias is not None:
        follows, desired = f"alias:{alias}", row["alias_version"]
    elif stage is not None:
        follows = f"stage:{stage}"
        desired = row["production_version"] if stage == Stage.PRODUCTION else None
    code, reason = _drift(follows, stage, desired, live, live_stage)
    in_flight = row["in_flight_version"]
    if in_flight is not None:
        reason += f"; deployment {row['in_flight_id']} of v{in_flight} is in flight"
    return Place(
        model_id=row["model_id"],
        environment=row["environment"],
        target=row["target"],
        follows=follows,
        desired_version=desired,
        live_deployment_id=row["live_deployment_id"],
        live_version=live,
        live_version_stage=live_stage,
        live_since=row["since_time"],
        in_flight_deployment_id=row["in_flight_id"],
        in_flight_version=in_flight,
        in_flight_since=row["in_flight_since"],
        drift=code not in ("in_sync", "untracked"),
        drift_code=code,
        drift_reason=reason,
    )


def _drift(
    follows: str | None,
    stage: str | None,
    desired: int | None,
    live: int | None,
    live_stage: str | None,
) -> tuple[str, str]:
    if follows is None:
        return (
            ("untracked", "follows no stage or alias")
            if live is not None
            else ("untracked", "nothing live")
        )
    if live is None:
        wanted = f"v{desired}" if desired is not None else follows
        return "nothing_live", f"nothing serves here; {follows} wants {wanted}"
    if follows.startswith("alias:") or stage == Stage.PRODUCTION:
        if desired is None:
            return "no_desired_version", f"{follows} names no version; v{live} is deployed"
        if desired != live:
            return "version_mismatch", f"{follows} is v{desired}; v{live} is deployed"
        return "in_sync", f"{follows} is v{live}, deployed"
    if live_stage != stage:
        return "stage_mismatch", f"deployed v{live} is in {live_stage}, not {stage}"
    return "in_sync", f"deployed v{live} is in {stage}"


async def places(
    conn: Conn,
    names: Names,
    model_id: str | None = None,
    *,
    environment: str | None = None,
    drifted_only: bool = False,
) -> list[Place]:
    """Every place (optionally of one model / environment), sorted by model, environment, target."""
    rows = await conn.fetch(
        _places_sql(names)
        + " WHERE ($1::text IS NULL OR p.model_id = $1) AND ($2::text IS NULL OR p.environment = $2)"
        " ORDER BY p.model_id, p.environment, p.target",
        model_id,
        environment,
    )
    found = [_place(r) for r in rows]
    return [p for p in found if p.drift] if drifted_only else found


async def place(
    conn: Conn, names: Names, model_id: str, environment: str, target: str
) -> Place | None:
    rows = await conn.fetch(
        _places_sql(names) + " WHERE p.model_id = $1 AND p.environment = $2 AND p.target = $3",
        model_id,
        environment,
        target,
    )
    return _place(rows[0]) if rows else None


async def runs(
    conn: Conn,
    names: Names,
    model_id: str,
    *,
    environment: str | None = None,
    target: str | None = None,
    before_position: int | None = None,
    limit: int = 100,
) -> list[Run]:
    """Deployments of a model, newest first; page on with ``before_position`` = last ``started_position``."""
    rows = await conn.fetch(
        f"SELECT {', '.join(c for c, _ in _RUN_COLUMNS)} FROM {names.deployment_runs}"
        " WHERE model_id = $1 AND ($2::text IS NULL OR environment = $2) AND ($3::text IS NULL OR target = $3)"
        " AND ($4::bigint IS NULL OR started_position < $4) ORDER BY started_position DESC LIMIT $5",
        model_id,
        environment,
        target,
        before_position,
        limit,
    )
    return [Run(**dict(r)) for r in rows]
