"""Audit timeline: every event, per model and per actor, with who, what, when and why.

Answers "what happened to model M?" (``entries(model_id=...)``), "what did alice do last
week?" (``entries(actor=..., since=..., until=...)``) and "every stage change in March"
(``entries(event_types=[...], since=..., until=...)``), newest or oldest first, paged by
log position (keyset: stable under concurrent writes, no OFFSET).

One row per event of the model, metrics and registry policy streams (``model_id`` is NULL
for registry-wide events). ``summary`` is a short sentence for people ("alice moved v3
staging → production"); ``reason`` is the comment, reason or justification the actor
gave. ``occurred_at`` is when the registry decided (business time), ``sealed_at`` when
the log recorded it (log time); ``since``/``until`` filter on business time.

Each entry returned carries ``data``: the event's data exactly as recorded and hashed,
read from the event store by ``seq`` when a page is fetched. The row does not copy it:
a metric batch's data is ten times the rest of the row, the copy would double the view's
size and halve its rebuild rate, and the original bytes are what an auditor can check
against the hash chains (``modelreg verify``).

This view gets every event, so it writes each batch with one COPY (one INSERT when small).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import msgspec

from eventlog.log import LoggedEvent
from events.base import Event
from events.catalogue import ALL_EVENT_TYPES, CODEC
from events.envelope import Envelope, decode_envelope
from events.metrics import MetricsLogged
from events.model.events import (
    AliasRemovalCause,
    AliasRemoved,
    AliasSet,
    DeploymentFailed,
    DeploymentRolledBack,
    DeploymentStarted,
    DeploymentSucceeded,
    ModelArchived,
    ModelDeleted,
    ModelDescriptionUpdated,
    ModelPolicyCleared,
    ModelPolicySet,
    ModelRegistered,
    ModelRenamed,
    ModelRestored,
    ModelTagsRemoved,
    ModelTagsSet,
    PromotionApproved,
    PromotionCancelled,
    PromotionExecuted,
    PromotionExpired,
    PromotionRejected,
    PromotionRequested,
    StageTransitioned,
    VersionDeprecated,
    VersionDescriptionUpdated,
    VersionRegistered,
    VersionTagsRemoved,
    VersionTagsSet,
)
from events.registry_policy import RegistryPolicySet
from events.stages import TransitionKind, placement
from events.streams import ACCESS_TYPE, TOKEN_TYPE, model_id_or_none
from events.subjects import SubjectErased
from projections.base import Fold, Names, Projection, Table, changed

Conn = asyncpg.Connection | asyncpg.Pool

TABLES = [
    Table(
        "audit_timeline",
        """
        log_position   bigint      PRIMARY KEY,
        seq            bigint      NOT NULL,
        event_id       uuid        NOT NULL,
        model_id       text,
        version        int,
        stream_id      text        NOT NULL,
        event_type     text        NOT NULL,
        actor          text        NOT NULL,
        occurred_at    timestamptz NOT NULL,
        sealed_at      timestamptz NOT NULL,
        correlation_id uuid,
        summary        text        NOT NULL,
        reason         text        NOT NULL
        """,
        key=("log_position",),
        indexes=[
            "CREATE INDEX {name}_model ON {table} (model_id, log_position)",
            "CREATE INDEX {name}_actor ON {table} (actor, log_position)",
            "CREATE INDEX {name}_type ON {table} (event_type, log_position)",
            # Business time follows insert order closely: a BRIN index costs almost nothing.
            "CREATE INDEX {name}_occurred ON {table} USING brin (occurred_at)",
        ],
    ),
]

_COLUMNS = (
    "log_position",
    "seq",
    "event_id",
    "model_id",
    "version",
    "stream_id",
    "event_type",
    "actor",
    "occurred_at",
    "sealed_at",
    "correlation_id",
    "summary",
    "reason",
)
_TYPES = (
    "bigint",
    "bigint",
    "uuid",
    "text",
    "int",
    "text",
    "text",
    "text",
    "timestamptz",
    "timestamptz",
    "uuid",
    "text",
    "text",
)
_COPY_FROM = 500  # rows: below this an INSERT is cheaper than COPY's extra round trips


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    log_position: int
    seq: int
    event_id: UUID
    model_id: str | None
    version: int | None
    stream_id: str
    event_type: str
    actor: str
    occurred_at: datetime
    sealed_at: datetime
    correlation_id: UUID | None
    summary: str
    reason: str
    data: msgspec.Raw  # the event's data as recorded (canonical JSON, covered by the hash chains)


class AuditPage(msgspec.Struct, frozen=True, kw_only=True):
    """``next_cursor``: pass it as ``cursor`` for the next page (None: this was the last)."""

    items: list[AuditEntry]
    next_cursor: int | None


# --- the fold ----------------------------------------------------------------------------


def _stage_kind(kind: TransitionKind, request_id: str | None) -> str:
    parts = [] if kind == TransitionKind.DIRECT else [str(kind)]
    if request_id:
        parts.append(f"request {request_id}")
    return f" ({', '.join(parts)})" if parts else ""


def _target(stage: object, alias: str | None, environment: object = msgspec.UNSET) -> str:
    parts = [str(stage)] if stage is not None else []
    if parts and isinstance(environment, str):
        parts = [placement(parts[0], environment)]
    if alias is not None:
        parts.append(f"alias {alias}")
    return " + ".join(parts)


# (summary, reason, version) of one event.
Description = tuple[str, str, int | None]
E = TypeVar("E", bound=Event)
_DESCRIBERS: dict[type[Event], Callable[[str, Any], Description]] = {}


def describe(actor: str, event: Event) -> Description:
    """(summary, reason, version) of one event, for people."""
    describer = _DESCRIBERS.get(type(event))
    if describer is None:
        return f"{actor}: {type(event).__name__}", "", None
    return describer(actor, event)


def _describes(
    event_type: type[E],
) -> Callable[[Callable[[str, E], Description]], Callable[[str, E], Description]]:
    def register(describer: Callable[[str, E], Description]) -> Callable[[str, E], Description]:
        _DESCRIBERS[event_type] = describer
        return describer

    return register


@_describes(ModelRegistered)
def _model_registered(actor: str, event: ModelRegistered) -> Description:
    return f"{actor} registered model {event.name} (owner {event.owner})", "", None


@_describes(ModelDescriptionUpdated)
def _model_description(actor: str, event: ModelDescriptionUpdated) -> Description:
    return f"{actor} updated the model's description", "", None


@_describes(ModelTagsSet)
def _model_tags_set(actor: str, event: ModelTagsSet) -> Description:
    return f"{actor} set tags {', '.join(sorted(event.tags))}", "", None


@_describes(ModelTagsRemoved)
def _model_tags_removed(actor: str, event: ModelTagsRemoved) -> Description:
    return f"{actor} removed tags {', '.join(event.keys)}", "", None


@_describes(ModelRenamed)
def _model_renamed(actor: str, event: ModelRenamed) -> Description:
    return f"{actor} renamed {event.old_name} → {event.new_name}", "", None


@_describes(ModelArchived)
def _model_archived(actor: str, event: ModelArchived) -> Description:
    return f"{actor} archived the model", event.reason, None


@_describes(ModelDeleted)
def _model_deleted(actor: str, event: ModelDeleted) -> Description:
    return f"{actor} deleted model {event.name} (its name is free again)", event.reason, None


@_describes(ModelRestored)
def _model_restored(actor: str, event: ModelRestored) -> Description:
    return f"{actor} restored the model", event.reason, None


@_describes(ModelPolicySet)
def _model_policy_set(actor: str, event: ModelPolicySet) -> Description:
    return f"{actor} set the model's governance policy", event.comment, None


@_describes(ModelPolicyCleared)
def _model_policy_cleared(actor: str, event: ModelPolicyCleared) -> Description:
    return (
        f"{actor} cleared the model's policy (the registry default applies)",
        event.comment,
        None,
    )


@_describes(RegistryPolicySet)
def _registry_policy_set(actor: str, event: RegistryPolicySet) -> Description:
    return f"{actor} set the registry-wide governance policy", event.comment, None


@_describes(VersionRegistered)
def _version_registered(actor: str, event: VersionRegistered) -> Description:
    return f"{actor} registered v{event.version}", "", event.version


@_describes(VersionDescriptionUpdated)
def _version_description(actor: str, event: VersionDescriptionUpdated) -> Description:
    return f"{actor} updated v{event.version}'s description", "", event.version


@_describes(VersionTagsSet)
def _version_tags_set(actor: str, event: VersionTagsSet) -> Description:
    return (
        f"{actor} set tags {', '.join(sorted(event.tags))} on v{event.version}",
        "",
        event.version,
    )


@_describes(VersionTagsRemoved)
def _version_tags_removed(actor: str, event: VersionTagsRemoved) -> Description:
    return (
        f"{actor} removed tags {', '.join(event.keys)} from v{event.version}",
        "",
        event.version,
    )


@_describes(VersionDeprecated)
def _version_deprecated(actor: str, event: VersionDeprecated) -> Description:
    return f"{actor} deprecated v{event.version}", event.reason, event.version


@_describes(StageTransitioned)
def _stage_transitioned(actor: str, event: StageTransitioned) -> Description:
    how = _stage_kind(event.kind, event.request_id)
    entered, left = event.entered_environment(), event.left_environment()
    source, target = placement(event.from_stage, left), placement(event.to_stage, entered)
    if event.from_stage == event.to_stage and entered is None:
        moved = f"out of {source} (still in {event.to_stage} elsewhere)"
    elif event.from_stage == event.to_stage:
        moved = f"into {target} too"
    else:
        moved = f"{source} → {target}"
    return f"{actor} moved v{event.version} {moved}{how}", event.comment, event.version


@_describes(AliasSet)
def _alias_set(actor: str, event: AliasSet) -> Description:
    was = "" if event.previous_version is None else f" (was v{event.previous_version})"
    return (
        f"{actor} pointed alias {event.alias} at v{event.version}{was}",
        event.comment,
        event.version,
    )


@_describes(AliasRemoved)
def _alias_removed(actor: str, event: AliasRemoved) -> Description:
    why = " (its version was archived)" if event.cause == AliasRemovalCause.VERSION_ARCHIVED else ""
    return (
        f"{actor} removed alias {event.alias} from v{event.version}{why}",
        event.comment,
        event.version,
    )


@_describes(PromotionRequested)
def _promotion_requested(actor: str, event: PromotionRequested) -> Description:
    what = "rollback to" if event.rollback else "promotion of"
    needs = f"{event.approvals_required} approval(s) needed"
    return (
        f"{actor} requested {what} v{event.version} to"
        f" {_target(event.target_stage, event.alias, event.environment)}"
        f" ({needs}; request {event.request_id})",
        event.justification,
        event.version,
    )


@_describes(PromotionApproved)
def _promotion_approved(actor: str, event: PromotionApproved) -> Description:
    return f"{event.approved_by} approved request {event.request_id}", event.comment, None


@_describes(PromotionRejected)
def _promotion_rejected(actor: str, event: PromotionRejected) -> Description:
    return f"{event.rejected_by} rejected request {event.request_id}", event.comment, None


@_describes(PromotionCancelled)
def _promotion_cancelled(actor: str, event: PromotionCancelled) -> Description:
    return f"{event.cancelled_by} cancelled request {event.request_id}", event.comment, None


@_describes(PromotionExpired)
def _promotion_expired(actor: str, event: PromotionExpired) -> Description:
    return f"request {event.request_id} expired", "", None


@_describes(PromotionExecuted)
def _promotion_executed(actor: str, event: PromotionExecuted) -> Description:
    by = ", ".join(event.approved_by) or "no approval needed"
    return (
        f"request {event.request_id} executed: v{event.version} {event.from_stage} →"
        f" {_target(event.target_stage, event.alias, event.environment)} (approved by {by})",
        "",
        event.version,
    )


@_describes(DeploymentStarted)
def _deployment_started(actor: str, event: DeploymentStarted) -> Description:
    follows = (
        f", following stage {event.desired_stage}"
        if event.desired_stage is not None
        else f", following alias {event.desired_alias}"
        if event.desired_alias is not None
        else ""
    )
    return (
        f"{actor} started deployment {event.deployment_id} of v{event.version} to"
        f" {event.environment}/{event.target}{follows}",
        event.comment,
        event.version,
    )


@_describes(DeploymentSucceeded)
def _deployment_succeeded(actor: str, event: DeploymentSucceeded) -> Description:
    return f"{actor} reported deployment {event.deployment_id} succeeded", event.comment, None


@_describes(DeploymentFailed)
def _deployment_failed(actor: str, event: DeploymentFailed) -> Description:
    return f"{actor} reported deployment {event.deployment_id} failed", event.reason, None


@_describes(DeploymentRolledBack)
def _deployment_rolled_back(actor: str, event: DeploymentRolledBack) -> Description:
    back = (
        f"; {event.restored_deployment_id} serves again"
        if event.restored_deployment_id
        else "; nothing serves there now"
    )
    return f"{actor} rolled back deployment {event.deployment_id}{back}", event.reason, None


@_describes(MetricsLogged)
def _metrics_logged(actor: str, event: MetricsLogged) -> Description:
    return (
        f"{actor} logged {len(event.metrics)} metric point(s) for v{event.version}",
        "",
        event.version,
    )


@_describes(SubjectErased)
def _subject_erased(actor: str, event: SubjectErased) -> Description:
    # The subject id reads as "erased subject" wherever answers name people.
    return f"{actor} erased the personal data of {event.subject_id}", "", None


class _MetricsHead(msgspec.Struct):
    """What a summary needs of a metric batch, without decoding every point."""

    version: int
    metrics: list[msgspec.Raw]


_metrics_head = msgspec.json.Decoder(_MetricsHead)


def _summary(envelope: Envelope) -> tuple[str, str, int | None]:
    if (
        envelope.event_type == MetricsLogged.event_type
        and envelope.schema_version == MetricsLogged.schema_version
    ):
        # Most of the log is metric batches: the fast path says exactly what describe() says.
        head = _metrics_head.decode(envelope.data)
        return (
            f"{envelope.actor} logged {len(head.metrics)} metric point(s) for v{head.version}",
            "",
            head.version,
        )
    return describe(envelope.actor, CODEC.decode(envelope))


# An audit_timeline row, in ``_COLUMNS`` order.
AuditRecord = tuple[
    int, int, UUID, str | None, int | None, str, str, str, datetime, datetime, UUID | None, str, str
]


def evolve(rows: dict[int, AuditRecord], events: Sequence[LoggedEvent]) -> dict[int, AuditRecord]:
    """Add a row per event, keyed by log position. Pure."""
    new = dict(rows)
    for logged in events:
        new[logged.log_position] = _record(logged)
    return new


def _record(logged: LoggedEvent) -> AuditRecord:
    envelope = logged.envelope
    summary, reason, version = _summary(envelope)
    return (
        logged.log_position,
        logged.seq,
        envelope.event_id,
        model_id_or_none(envelope.stream_id),
        version,
        envelope.stream_id,
        envelope.event_type,
        envelope.actor,
        envelope.occurred_at,
        logged.sealed_at,
        envelope.correlation_id,
        summary,
        reason,
    )


async def load(
    conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]
) -> dict[int, AuditRecord]:
    """Nothing: a batch only adds rows."""
    return {}


async def write(
    conn: asyncpg.Connection,
    names: Names,
    loaded: dict[int, AuditRecord],
    evolved: dict[int, AuditRecord],
) -> None:
    records = list(changed(loaded, evolved).values())
    if len(records) >= _COPY_FROM:
        await conn.copy_records_to_table(names.audit_timeline, records=records, columns=_COLUMNS)
    elif records:
        # A live batch is small: one INSERT is one round trip, COPY takes three.
        params = ", ".join(f"${i + 1}::{kind}[]" for i, kind in enumerate(_TYPES))
        await conn.execute(
            f"INSERT INTO {names.audit_timeline} ({', '.join(_COLUMNS)}) SELECT * FROM unnest({params})",
            *([r[i] for r in records] for i in range(len(_COLUMNS))),
        )


PROJECTION = Projection(
    name="audit_timeline",
    version=1,
    tables=TABLES,
    handles=frozenset(t.event_type for t in ALL_EVENT_TYPES),
    fold=Fold(load=load, evolve=evolve, write=write),
    description="every event per model and per actor: who, what, when, why",
)


# --- queries ------------------------------------------------------------------------------


async def entries(
    conn: Conn,
    names: Names,
    *,
    model_id: str | None = None,
    only_models: Sequence[str] | None = None,
    hide_tokens: bool = False,
    actor: str | tuple[str, ...] | None = None,
    event_types: Sequence[str] | None = None,
    version: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    up_to_position: int | None = None,
    cursor: int | None = None,
    newest_first: bool = True,
    limit: int = 100,
) -> AuditPage:
    """One page of entries matching every filter given. ``since``/``until`` bound business
    time (``since <= occurred_at < until``); ``up_to_position`` shows the log as it stood
    then; ``cursor`` continues after the previous page's ``next_cursor``.

    ``only_models`` keeps the events of those models (a scoped reader's; registry-wide
    events are left out too) and ``hide_tokens`` leaves out the token streams (who holds
    which token is for admins): the filter runs before the limit, so pages stay full."""
    where: list[str] = []
    args: list[object] = []

    def bind(sql: str, value: object) -> None:
        args.append(value)
        where.append(sql.replace("?", f"${len(args)}"))

    if model_id is not None:
        bind("model_id = ?", model_id)
    if only_models is not None:
        bind("model_id = ANY (?::text[])", list(only_models))
    if hide_tokens:
        bind("stream_id NOT LIKE ?", f"{TOKEN_TYPE}:%")
        # Grants and service accounts map who may do what: as secret as the tokens.
        bind("stream_id NOT LIKE ?", f"{ACCESS_TYPE}:%")
    if actor is not None:  # one person may be recorded under a name and a subject id
        bind("actor = ANY (?::text[])", [actor] if isinstance(actor, str) else list(actor))
    if event_types is not None:
        bind("event_type = ANY (?::text[])", list(event_types))
    if version is not None:
        bind("version = ?", version)
    if since is not None:
        bind("occurred_at >= ?", since)
    if until is not None:
        bind("occurred_at < ?", until)
    if up_to_position is not None:
        bind("log_position <= ?", up_to_position)
    if cursor is not None:
        bind("log_position < ?" if newest_first else "log_position > ?", cursor)
    args.append(limit)
    # The page first, then the recorded events of just that page (by primary key).
    rows = await conn.fetch(
        f"SELECT a.*, e.envelope FROM (SELECT {', '.join(_COLUMNS)} FROM {names.audit_timeline}"
        f"{' WHERE ' + ' AND '.join(where) if where else ''}"
        f" ORDER BY log_position {'DESC' if newest_first else 'ASC'} LIMIT ${len(args)}) a"
        f" JOIN events e ON e.seq = a.seq ORDER BY a.log_position {'DESC' if newest_first else 'ASC'}",
        *args,
    )
    items = [
        AuditEntry(**{c: r[c] for c in _COLUMNS}, data=decode_envelope(r["envelope"]).data)
        for r in rows
    ]
    next_cursor = items[-1].log_position if len(items) == limit else None
    return AuditPage(items=items, next_cursor=next_cursor)
