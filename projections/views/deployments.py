"""Deployments: what should run where (desired) against what runs there (actual), and the drift.

Answers "is production serving what the registry says it should?" (``places`` with
``drifted_only=True``), "what runs at (environment, target)?" (``place``) and "how did it get
there?" (``runs``).

A place is (model, environment, target). *Actual* is the live deployment there (the last
one that succeeded, unless rolled back, as ``events.model.state`` folds it) plus any
deployment still in flight. *Desired* is what the live deployment follows (a stage or an
alias, from its ``model.deployment_started``; with nothing live, what the latest
deployment followed) resolved against the registry now: the version under that alias, or
for ``production`` the production version. For another stage, several versions may share
it, so the place is in sync while the deployed version is still in that stage. This is
``events.model.deployments.compare_deployments``, extended to places with nothing live.

A projection reads only its own tables, so this one keeps each version's stage and each
alias's target itself, from the same stage and alias events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import asyncpg
import msgspec

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
from events.stages import INITIAL_STAGE, Stage
from events.streams import model_id_of
from projections.base import Names, Projection, Table

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
        indexes=["CREATE INDEX {name}_environment ON {table} (environment)"],
    ),
    # The registry's side, kept here because apply may read only this view's tables.
    Table(
        "deployment_versions",
        "model_id text NOT NULL, version int NOT NULL, stage text NOT NULL,"
        " PRIMARY KEY (model_id, version)",
        indexes=["CREATE INDEX {name}_stage ON {table} (model_id, stage)"],
    ),
    Table(
        "deployment_aliases",
        "model_id text NOT NULL, alias text NOT NULL, version int NOT NULL,"
        " PRIMARY KEY (model_id, alias)",
    ),
]

_RUN_COLUMNS = (
    "model_id",
    "deployment_id",
    "version",
    "environment",
    "target",
    "desired_stage",
    "desired_alias",
    "status",
    "started_by",
    "started_at",
    "started_position",
    "finished_by",
    "finished_at",
    "finished_position",
    "replaced_deployment_id",
    "restored_deployment_id",
    "comment",
    "reason",
)
_RUN_TYPES = (
    "text",
    "text",
    "int",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "timestamptz",
    "bigint",
    "text",
    "timestamptz",
    "bigint",
    "text",
    "text",
    "text",
    "text",
)
_PLACE_COLUMNS = (
    "model_id",
    "environment",
    "target",
    "live_deployment_id",
    "since_position",
    "since_time",
)
_PLACE_TYPES = ("text", "text", "text", "text", "bigint", "timestamptz")


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


# --- apply -------------------------------------------------------------------------------


def _upsert_sql(table: str, columns: Sequence[str], types: Sequence[str], key: int) -> str:
    params = ", ".join(f"${i + 1}::{kind}[]" for i, kind in enumerate(types))
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[key:])
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({params})"
        f" ON CONFLICT ({', '.join(columns[:key])}) DO UPDATE SET {updates}"
    )


async def _upsert(
    conn: asyncpg.Connection,
    table: str,
    columns: Sequence[str],
    types: Sequence[str],
    key: int,
    rows: Sequence[Sequence[object]],
) -> None:
    """One set-based upsert; ``rows`` must have distinct keys (a statement may touch a row once)."""
    if rows:
        await conn.execute(
            _upsert_sql(table, columns, types, key),
            *([r[i] for r in rows] for i in range(len(columns))),
        )


async def _load(
    conn: asyncpg.Connection,
    table: str,
    columns: Sequence[str],
    key: Sequence[str],
    keys: Iterable[tuple[str, ...]],
) -> dict[tuple[str, ...], dict[str, object]]:
    ordered = sorted(keys)
    if not ordered:
        return {}
    join = " AND ".join(f"t.{k} = k.{k}" for k in key)
    params = ", ".join(f"${i + 1}::text[]" for i in range(len(key)))
    rows = await conn.fetch(
        f"SELECT {', '.join('t.' + c for c in columns)} FROM {table} t"
        f" JOIN unnest({params}) AS k({', '.join(key)}) ON {join}",
        *([k[i] for k in ordered] for i in range(len(key))),
    )
    return {tuple(r[k] for k in key): dict(r) for r in rows}


async def apply(conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]) -> None:
    decoded = [
        (logged, model_id_of(logged.stream_id), CODEC.decode(logged.envelope)) for logged in events
    ]
    stages: dict[tuple[str, int], str] = {}
    aliases: dict[tuple[str, str], int | None] = {}

    # Runs and places this batch changes: load the ones that exist, fold in memory, write once.
    started = {(m, e.deployment_id) for _, m, e in decoded if isinstance(e, DeploymentStarted)}
    reported = {
        (m, e.deployment_id)
        for _, m, e in decoded
        if isinstance(e, DeploymentSucceeded | DeploymentFailed | DeploymentRolledBack)
    }
    runs = await _load(
        conn, names.deployment_runs, _RUN_COLUMNS, ("model_id", "deployment_id"), reported - started
    )
    place_keys = {
        (m, e.environment, e.target) for _, m, e in decoded if isinstance(e, DeploymentStarted)
    }
    place_keys |= {(r["model_id"], r["environment"], r["target"]) for r in runs.values()}  # type: ignore[misc]
    places = await _load(
        conn,
        names.deployment_places,
        _PLACE_COLUMNS,
        ("model_id", "environment", "target"),
        place_keys,
    )
    changed_runs: set[tuple[str, ...]] = set()
    changed_places: set[tuple[str, ...]] = set()

    for logged, model_id, event in decoded:
        envelope = logged.envelope
        match event:
            case VersionRegistered():
                stages[(model_id, event.version)] = str(INITIAL_STAGE)
            case StageTransitioned():
                stages[(model_id, event.version)] = str(event.to_stage)
            case AliasSet():
                aliases[(model_id, event.alias)] = event.version
            case AliasRemoved():
                aliases[(model_id, event.alias)] = None
            case DeploymentStarted():
                key = (model_id, event.deployment_id)
                runs[key] = {
                    "model_id": model_id,
                    "deployment_id": event.deployment_id,
                    "version": event.version,
                    "environment": event.environment,
                    "target": event.target,
                    "desired_stage": None
                    if event.desired_stage is None
                    else str(event.desired_stage),
                    "desired_alias": event.desired_alias,
                    "status": "started",
                    "started_by": envelope.actor,
                    "started_at": envelope.occurred_at,
                    "started_position": logged.log_position,
                    "finished_by": None,
                    "finished_at": None,
                    "finished_position": None,
                    "replaced_deployment_id": None,
                    "restored_deployment_id": None,
                    "comment": event.comment,
                    "reason": "",
                }
                changed_runs.add(key)
                place = (model_id, event.environment, event.target)
                if place not in places:
                    places[place] = dict(
                        zip(
                            _PLACE_COLUMNS,
                            (*place, None, logged.log_position, envelope.occurred_at),
                            strict=True,
                        )
                    )
                    changed_places.add(place)
            case DeploymentSucceeded() | DeploymentFailed() | DeploymentRolledBack():
                key = (model_id, event.deployment_id)
                run = runs[key]
                run.update(
                    finished_by=envelope.actor,
                    finished_at=envelope.occurred_at,
                    finished_position=logged.log_position,
                )
                changed_runs.add(key)
                place = (model_id, str(run["environment"]), str(run["target"]))
                if isinstance(event, DeploymentSucceeded):
                    run.update(
                        status="succeeded",
                        replaced_deployment_id=event.replaced_deployment_id,
                        comment=event.comment or run["comment"],
                    )
                    _set_live(places[place], event.deployment_id, logged)
                    changed_places.add(place)
                elif isinstance(event, DeploymentFailed):
                    run.update(status="failed", reason=event.reason)
                else:
                    run.update(
                        status="rolled_back",
                        reason=event.reason,
                        restored_deployment_id=event.restored_deployment_id,
                    )
                    # As the domain folds it: only rolling back the live one changes what serves.
                    if places[place]["live_deployment_id"] == event.deployment_id:
                        _set_live(places[place], event.restored_deployment_id, logged)
                        changed_places.add(place)
            case _:
                pass

    await _upsert(
        conn,
        names.deployment_versions,
        ("model_id", "version", "stage"),
        ("text", "int", "text"),
        2,
        [(m, v, s) for (m, v), s in stages.items()],
    )
    kept = [(m, a, v) for (m, a), v in aliases.items() if v is not None]
    removed = [(m, a) for (m, a), v in aliases.items() if v is None]
    if removed:
        await conn.execute(
            f"DELETE FROM {names.deployment_aliases} t USING unnest($1::text[], $2::text[]) AS k(m, a)"
            " WHERE t.model_id = k.m AND t.alias = k.a",
            [r[0] for r in removed],
            [r[1] for r in removed],
        )
    await _upsert(
        conn,
        names.deployment_aliases,
        ("model_id", "alias", "version"),
        ("text", "text", "int"),
        2,
        kept,
    )
    await _upsert(
        conn,
        names.deployment_runs,
        _RUN_COLUMNS,
        _RUN_TYPES,
        2,
        [tuple(runs[k][c] for c in _RUN_COLUMNS) for k in sorted(changed_runs)],
    )
    await _upsert(
        conn,
        names.deployment_places,
        _PLACE_COLUMNS,
        _PLACE_TYPES,
        3,
        [tuple(places[k][c] for c in _PLACE_COLUMNS) for k in sorted(changed_places)],
    )


def _set_live(place: dict[str, object], deployment_id: str | None, logged: LoggedEvent) -> None:
    place.update(
        live_deployment_id=deployment_id,
        since_position=logged.log_position,
        since_time=logged.envelope.occurred_at,
    )


PROJECTION = Projection(
    name="deployments",
    version=1,
    tables=TABLES,
    handles=frozenset(
        {
            VersionRegistered.event_type,
            StageTransitioned.event_type,
            AliasSet.event_type,
            AliasRemoved.event_type,
            DeploymentStarted.event_type,
            DeploymentSucceeded.event_type,
            DeploymentFailed.event_type,
            DeploymentRolledBack.event_type,
        }
    ),
    apply=apply,
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
                      WHERE v.model_id = p.model_id AND v.stage = 'production' LIMIT 1) prod ON true
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
        f"SELECT {', '.join(_RUN_COLUMNS)} FROM {names.deployment_runs}"
        " WHERE model_id = $1 AND ($2::text IS NULL OR environment = $2) AND ($3::text IS NULL OR target = $3)"
        " AND ($4::bigint IS NULL OR started_position < $4) ORDER BY started_position DESC LIMIT $5",
        model_id,
        environment,
        target,
        before_position,
        limit,
    )
    return [Run(**dict(r)) for r in rows]


async def checksum(conn: Conn, names: Names) -> str:
    """A digest of every row, in key order: equal digests mean equal views."""
    parts = []
    for table, order in (
        (names.deployment_runs, "model_id, deployment_id"),
        (names.deployment_places, "model_id, environment, target"),
        (names.deployment_versions, "model_id, version"),
        (names.deployment_aliases, "model_id, alias"),
    ):
        parts.append(
            await conn.fetchval(
                f"SELECT md5(coalesce(string_agg(md5(t::text), '' ORDER BY {order}), '')) FROM {table} t"
            )
        )
    return ":".join(parts)
