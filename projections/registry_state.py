"""Time travel over the whole registry or one model: the views as they stood at a log position.

Answers "what did the registry look like at position P (or when the log stood at time T)?"
(``registry_as_of``), "what did model M look like then?" (``model_as_of``), and lets the
API run any view's own query functions against such a past (``views_as_of``: the
``as_of`` parameter).

The past is computed: ``projections.time_travel.folded_views`` folds the log up to the
position into scratch tables with each projection's own ``apply``, so an answer about the
past comes from exactly the code that builds the live views. A registry fold starts from
the views' newest snapshot at or below P (``projections.snapshots``, taken every N sealed
events by ``projections.snapshot_worker``) and reads only the events after it, so its cost
does not grow with the log; a model fold reads only that model's streams, plus the
registry-wide policy events, which some views need to say who may approve.

Positions versus times: a ``datetime`` here means *log time* (``sealed_at``): the last
position sealed at or before it, i.e. what the registry knew then. Business-time questions
("what was in production at 14:03?") are the stage timeline's ``holder_at`` with a
datetime, which reads ``occurred_at``.

``all_projections`` lists every view (``projections.views.ALL``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import msgspec

from eventlog.log import head_position, read_log
from events.registry_policy import RegistryPolicySet
from events.streams import REGISTRY_POLICY_STREAM
from projections.base import Names, Projection
from projections.time_travel import folded_views, resolve_as_of
from projections.views import (
    ALL,
    approvals,
    audit_timeline,
    deployments,
    model_catalogue,
    model_versions,
    stage_timeline,
)
from projections.views.approvals import ApprovalRequest
from projections.views.audit_timeline import AuditEntry
from projections.views.deployments import Place, Run
from projections.views.model_catalogue import ModelRow
from projections.views.model_versions import VersionRow
from projections.views.stage_timeline import AliasInterval, StageInterval

# The views a registry snapshot is made of. The audit timeline is left out on purpose: it
# is append-only, so its past is a filter (``entries(up_to_position=P)``), not a fold.
REGISTRY_PROJECTIONS: tuple[Projection, ...] = (
    model_catalogue.PROJECTION,
    model_versions.PROJECTION,
    stage_timeline.PROJECTION,
    approvals.PROJECTION,
    deployments.PROJECTION,
)
MODEL_PROJECTIONS: tuple[Projection, ...] = (*REGISTRY_PROJECTIONS, audit_timeline.PROJECTION)

# Registry-wide events that views of a single model still need (who may approve depends on
# the registry's policy). Per-event logs such as the audit timeline do not take them: they
# are not the model's events. All are appended to REGISTRY_POLICY_STREAM, their decider's.
_REGISTRY_WIDE = frozenset({RegistryPolicySet.event_type})
_PER_EVENT_LOGS = frozenset({audit_timeline.PROJECTION.name})


class RegistrySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The registry as it stood at ``position`` (sealed at ``sealed_at``; None before the first event).

    ``stages`` holds each version's stage then (its open stage interval), ``aliases`` each
    alias's target; ``open_requests`` are judged overdue against ``sealed_at``.
    """

    position: int
    sealed_at: datetime | None
    models: list[ModelRow]
    versions: list[VersionRow]
    stages: list[StageInterval]
    aliases: list[AliasInterval]
    open_requests: list[ApprovalRequest]
    deployments: list[Place]

    def in_stage(self, model_id: str, stage: str) -> list[int]:
        """The versions of ``model_id`` that were in ``stage``."""
        return sorted(s.version for s in self.stages if s.model_id == model_id and s.stage == stage)


class ModelSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One model as it stood at ``position``: its row, versions, full stage and alias
    history up to then, every promotion request, deployments, and the newest audit entries."""

    position: int
    sealed_at: datetime | None
    model_id: str
    model: ModelRow | None
    versions: list[VersionRow]
    timeline: list[StageInterval]
    alias_timeline: list[AliasInterval]
    requests: list[ApprovalRequest]
    deployments: list[Place]
    runs: list[Run]
    audit: list[AuditEntry]


@asynccontextmanager
async def views_as_of(
    conn: asyncpg.Connection,
    position: int | datetime,
    projections: Sequence[Projection] = REGISTRY_PROJECTIONS,
    *,
    model_id: str | None = None,
    snapshots: bool = True,
) -> AsyncIterator[tuple[int, dict[str, Names]]]:
    """Fold ``projections`` up to ``position`` (a position, or a log time) and yield
    ``(position, names)``: query any of them with its usual functions and ``names[projection]``.

    With ``model_id`` only that model's streams are folded (fast; the views then hold only
    that model). The fold runs in short transactions of its own (see
    ``projections.time_travel.folded_views``), so call it outside a transaction; the
    scratch tables are dropped on exit.

    A whole-registry fold starts from the views' nearest snapshot at or below the position
    (``projections.snapshots``) unless ``snapshots`` is false; the answer is the same.
    """
    at = min(await resolve_as_of(conn, position), await head_position(conn))
    from_snapshots = snapshots and model_id is None
    async with folded_views(
        conn, projections, at, model_id=model_id, snapshots=from_snapshots
    ) as names:
        if model_id is not None:
            await _apply_registry_wide(conn, projections, names, at)
        yield at, names


async def _apply_registry_wide(
    conn: asyncpg.Connection,
    projections: Sequence[Projection],
    names: dict[str, Names],
    position: int,
) -> None:
    """Registry-wide policy events into a one-model fold. The views that read them keep them
    in rows of their own (not interleaved with the model's), so applying them after the
    model's events gives what the whole-log fold gives."""
    takers = [
        p for p in projections if p.handles & _REGISTRY_WIDE and p.name not in _PER_EVENT_LOGS
    ]
    if not takers:
        return
    after = 0
    while True:
        # Read from their one stream through the stream index: filtered by type, the read
        # walked every event of the log up to the position (552 ms at 10,000,000 events).
        read = await read_log(conn, after, 5000, up_to=position, stream_id=REGISTRY_POLICY_STREAM)
        events = [e for e in read if e.event_type in _REGISTRY_WIDE]
        if events:
            async with conn.transaction():
                for projection in takers:
                    await projection.apply(conn, names[projection.name], events)
        if len(read) < 5000:
            return
        after = read[-1].log_position


async def _sealed_at(conn: asyncpg.Connection, position: int) -> datetime | None:
    value: datetime | None = await conn.fetchval(
        "SELECT sealed_at FROM event_log WHERE log_position = $1", position
    )
    return value


async def _models(conn: asyncpg.Connection, names: Names, model_id: str | None) -> list[ModelRow]:
    records = await conn.fetch(
        f"SELECT {model_catalogue.columns()} FROM {names.model_catalogue}"
        " WHERE ($1::text IS NULL OR model_id = $1) ORDER BY model_id",
        model_id,
    )
    return [model_catalogue.row_from_record(r) for r in records]


async def _versions(
    conn: asyncpg.Connection, names: Names, model_id: str | None
) -> list[VersionRow]:
    records = await conn.fetch(
        f"SELECT {model_versions.columns()} FROM {names.model_versions}"
        " WHERE ($1::text IS NULL OR model_id = $1) ORDER BY model_id, version",
        model_id,
    )
    return await model_versions.rows_with_metrics(conn, names, records)


async def registry_as_of(
    conn: asyncpg.Connection, position: int | datetime, *, snapshots: bool = True
) -> RegistrySnapshot:
    """The whole registry at a log position (or as the log stood at a time), by folding the
    log up to it (from the nearest view snapshot, unless ``snapshots`` is false). Positions
    past the head mean the head."""
    async with views_as_of(conn, position, snapshots=snapshots) as (at, names):
        sealed_at = await _sealed_at(conn, at)
        return RegistrySnapshot(
            position=at,
            sealed_at=sealed_at,
            models=await _models(conn, names[model_catalogue.PROJECTION.name], None),
            versions=await _versions(conn, names[model_versions.PROJECTION.name], None),
            stages=await stage_timeline.current_holdings(
                conn, names[stage_timeline.PROJECTION.name]
            ),
            aliases=await stage_timeline.current_aliases(
                conn, names[stage_timeline.PROJECTION.name]
            ),
            open_requests=await approvals.open_requests(
                conn,
                names[approvals.PROJECTION.name],
                now=sealed_at or datetime.min.replace(tzinfo=UTC),
                limit=1_000_000,
            ),
            deployments=await deployments.places(conn, names[deployments.PROJECTION.name]),
        )


async def model_as_of(
    conn: asyncpg.Connection, model_id: str, position: int | datetime, *, audit_limit: int = 200
) -> ModelSnapshot:
    """One model at a log position (or log time), folding only its own streams. ``audit``
    holds its newest ``audit_limit`` entries up to then."""
    async with views_as_of(conn, position, MODEL_PROJECTIONS, model_id=model_id) as (at, names):
        sealed_at = await _sealed_at(conn, at)
        models = await _models(conn, names[model_catalogue.PROJECTION.name], model_id)
        request_rows = await conn.fetch(
            f"SELECT request_id FROM {names[approvals.PROJECTION.name].approval_requests}"
            " WHERE model_id = $1 ORDER BY requested_position",
            model_id,
        )
        requests = []
        for r in request_rows:
            found = await approvals.request(
                conn,
                names[approvals.PROJECTION.name],
                r["request_id"],
                model_id=model_id,
                now=sealed_at or datetime.min.replace(tzinfo=UTC),
            )
            if found is not None:
                requests.append(found)
        deployment_names = names[deployments.PROJECTION.name]
        timeline_names = names[stage_timeline.PROJECTION.name]
        audit = await audit_timeline.entries(
            conn, names[audit_timeline.PROJECTION.name], model_id=model_id, limit=audit_limit
        )
        return ModelSnapshot(
            position=at,
            sealed_at=sealed_at,
            model_id=model_id,
            model=models[0] if models else None,
            versions=await _versions(conn, names[model_versions.PROJECTION.name], model_id),
            timeline=await stage_timeline.timeline(conn, timeline_names, model_id),
            alias_timeline=await stage_timeline.alias_timeline(conn, timeline_names, model_id),
            requests=requests,
            deployments=await deployments.places(conn, deployment_names, model_id),
            runs=await deployments.runs(conn, deployment_names, model_id, limit=1_000_000),
            audit=audit.items,
        )


def all_projections() -> list[Projection]:
    """Every view, in the order of ``projections.views.ALL``."""
    return list(ALL)
