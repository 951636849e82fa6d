"""Approvals: open promotion requests, who must act on them, and decided requests.

Answers "what is waiting for approval, and who can approve it?" (``open_requests``),
"where does request R stand?" (``request``) and "what was decided, by whom, how?"
(``decided``).

Who must act follows the domain's rule (``events.model.promotions``): any approver who has
not approved yet, except, under separation of duties (on unless the policy in force turns
it off), the requester and the registrant of the version. The policy in force is the
model's own (``model.policy_set``/``policy_cleared``) or else the registry's
(``registry.policy_set``), tracked here because a projection may read only its own tables;
it is looked up when asked, exactly as the domain re-reads it at each approval.
``approvals_required`` is what the policy asked when the request was made; execution
re-checks the policy in force at the final approval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from msgspec.structs import replace

from eventlog.log import LoggedEvent
from events.base import Event
from events.catalogue import CODEC
from events.model.events import (
    ModelPolicyCleared,
    ModelPolicySet,
    PromotionApproved,
    PromotionCancelled,
    PromotionExecuted,
    PromotionExpired,
    PromotionRejected,
    PromotionRequested,
    VersionRegistered,
)
from events.registry_policy import RegistryPolicySet
from events.streams import model_id_of
from projections.base import Fold, Names, Projection, Table, changed, upsert

Conn = asyncpg.Connection | asyncpg.Pool

# The registry-wide policy's row in approval_policies; model ids never are empty.
REGISTRY_SCOPE = ""

TABLES = [
    Table(
        "approval_requests",
        """
        model_id           text        NOT NULL,
        request_id         text        NOT NULL,
        version            int         NOT NULL,
        target_stage       text,
        alias              text,
        rollback           boolean     NOT NULL,
        justification      text        NOT NULL,
        requested_by       text        NOT NULL,
        requested_at       timestamptz NOT NULL,
        requested_position bigint      NOT NULL,
        expires_at         timestamptz NOT NULL,
        approvals_required int         NOT NULL,
        approvals          text[]      NOT NULL,
        status             text        NOT NULL,
        decided_by         text,
        decided_at         timestamptz,
        decided_position   bigint,
        decision_comment   text,
        executed_approvers text[],
        rules              text[],
        environment        text,
        PRIMARY KEY (model_id, request_id)
        """,
        key=("model_id", "request_id"),
        indexes=[
            "CREATE INDEX {name}_open ON {table} (requested_position) WHERE status = 'pending'",
            "CREATE INDEX {name}_request ON {table} (request_id)",
            "CREATE INDEX {name}_decided ON {table} (decided_position) WHERE decided_position IS NOT NULL",
        ],
    ),
    Table(
        "approval_votes",
        """
        model_id     text        NOT NULL,
        request_id   text        NOT NULL,
        log_position bigint      NOT NULL,
        actor        text        NOT NULL,
        vote         text        NOT NULL,
        comment      text        NOT NULL,
        at           timestamptz NOT NULL,
        PRIMARY KEY (model_id, request_id, log_position)
        """,
        key=("model_id", "request_id", "log_position"),
    ),
    # Who registered each version: separation of duties excludes them.
    Table(
        "approval_registrants",
        "model_id text NOT NULL, version int NOT NULL, registered_by text NOT NULL,"
        " PRIMARY KEY (model_id, version)",
        key=("model_id", "version"),
    ),
    # The policy facts the view needs, per model and for the registry (scope '').
    Table(
        "approval_policies",
        "scope text PRIMARY KEY, separation_of_duties boolean NOT NULL,"
        " set_position bigint NOT NULL",
        key=("scope",),
    ),
]


class Vote(msgspec.Struct, frozen=True, kw_only=True):
    actor: str
    vote: str  # approved | rejected
    comment: str
    at: datetime
    log_position: int


class ApprovalRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A promotion request. ``approvers_excluded`` may not approve (separation of duties and
    people who approved already); ``approvals_missing`` counts eligible approvals still needed."""

    model_id: str
    request_id: str
    version: int
    target_stage: str | None
    alias: str | None
    rollback: bool
    justification: str
    requested_by: str
    requested_at: datetime
    requested_position: int
    expires_at: datetime
    approvals_required: int
    approvals: list[str]
    status: str  # pending | executed | rejected | cancelled | expired
    separation_of_duties: bool
    approvers_excluded: list[str]
    approvals_missing: int
    who_must_act: str
    overdue: bool  # still pending past expires_at: an ExpirePromotion will close it
    decided_by: str | None
    decided_at: datetime | None
    decided_position: int | None
    decision_comment: str | None
    executed_approvers: list[str] | None
    rules: list[str] | None
    votes: list[Vote] = msgspec.field(default_factory=list)
    # The environment of ``target_stage``, for a stage with environments.
    environment: str | None = None


# --- the fold ----------------------------------------------------------------------------

_REQUEST_COLUMNS = (
    "model_id",
    "request_id",
    "version",
    "target_stage",
    "alias",
    "rollback",
    "justification",
    "requested_by",
    "requested_at",
    "requested_position",
    "expires_at",
    "approvals_required",
    "approvals",
    "status",
    "decided_by",
    "decided_at",
    "decided_position",
    "decision_comment",
    "executed_approvers",
    "rules",
    "environment",
)


class RequestRow(msgspec.Struct, frozen=True, kw_only=True):
    """An ``approval_requests`` row (fields in ``_REQUEST_COLUMNS`` order)."""

    model_id: str
    request_id: str
    version: int
    target_stage: str | None
    alias: str | None
    rollback: bool
    justification: str
    requested_by: str
    requested_at: datetime
    requested_position: int
    expires_at: datetime
    approvals_required: int
    approvals: tuple[str, ...]
    status: str
    decided_by: str | None = None
    decided_at: datetime | None = None
    decided_position: int | None = None
    decision_comment: str | None = None
    executed_approvers: tuple[str, ...] | None = None
    rules: tuple[str, ...] | None = None
    environment: str | None = None


# An approval_votes row: (model_id, request_id, log_position) -> (actor, vote, comment, at).
VoteKey = tuple[str, str, int]
VoteRow = tuple[str, str, str, datetime]
# An approval_policies row: scope -> (separation_of_duties, set_position); None: cleared.
PolicyRow = tuple[bool, int] | None


@dataclass(frozen=True, slots=True)
class ApprovalRows:
    """The rows a batch touches: requests (loaded when it decides or votes on them), and the
    votes, registrants and policies it writes (they never depend on what was stored)."""

    requests: dict[tuple[str, str], RequestRow] = field(default_factory=dict)
    votes: dict[VoteKey, VoteRow] = field(default_factory=dict)
    registrants: dict[tuple[str, int], str] = field(default_factory=dict)
    policies: dict[str, PolicyRow] = field(default_factory=dict)


def evolve(rows: ApprovalRows, events: Sequence[LoggedEvent]) -> ApprovalRows:
    """Fold a batch into requests, votes, registrants and policies. Pure."""
    new = ApprovalRows(
        requests=dict(rows.requests),
        votes=dict(rows.votes),
        registrants=dict(rows.registrants),
        policies=dict(rows.policies),
    )
    for logged in events:
        event = CODEC.decode(logged.envelope)
        if isinstance(event, RegistryPolicySet):
            new.policies[REGISTRY_SCOPE] = (event.policy.separation_of_duties, logged.log_position)
        else:
            _evolve_model_stream(new, model_id_of(logged.stream_id), event, logged)
    return new


def _evolve_model_stream(
    rows: ApprovalRows, model_id: str, event: Event, logged: LoggedEvent
) -> None:
    match event:
        case VersionRegistered():
            rows.registrants[(model_id, event.version)] = event.registered_by
        case ModelPolicySet():
            rows.policies[model_id] = (event.policy.separation_of_duties, logged.log_position)
        case ModelPolicyCleared():
            rows.policies[model_id] = None
        case PromotionRequested():
            rows.requests[(model_id, event.request_id)] = _requested(model_id, event, logged)
        case (
            PromotionApproved()
            | PromotionRejected()
            | PromotionCancelled()
            | PromotionExpired()
            | PromotionExecuted()
        ):
            _decide(rows, model_id, event, logged)
        case _:
            pass


_Decision = (
    PromotionApproved
    | PromotionRejected
    | PromotionCancelled
    | PromotionExpired
    | PromotionExecuted
)
_DECISIONS = (
    PromotionApproved,
    PromotionRejected,
    PromotionCancelled,
    PromotionExpired,
    PromotionExecuted,
)
_STATUS = {
    PromotionRejected.event_type: "rejected",
    PromotionCancelled.event_type: "cancelled",
    PromotionExpired.event_type: "expired",
    PromotionExecuted.event_type: "executed",
}


def _requested(model_id: str, event: PromotionRequested, logged: LoggedEvent) -> RequestRow:
    return RequestRow(
        model_id=model_id,
        request_id=event.request_id,
        version=event.version,
        target_stage=None if event.target_stage is None else str(event.target_stage),
        alias=event.alias,
        rollback=event.rollback,
        justification=event.justification,
        requested_by=event.requested_by,
        requested_at=logged.envelope.occurred_at,
        requested_position=logged.log_position,
        expires_at=event.expires_at,
        approvals_required=event.approvals_required,
        approvals=(),
        status="pending",
        environment=None if isinstance(event.environment, msgspec.UnsetType) else event.environment,
    )


def _decide(rows: ApprovalRows, model_id: str, event: _Decision, logged: LoggedEvent) -> None:
    """An approval (a vote) or the decision that closes a request."""
    key = (model_id, event.request_id)
    request = rows.requests.get(key)
    if request is None:
        return  # a decider never decides a request it has not seen; nothing to show
    envelope = logged.envelope
    if isinstance(event, PromotionApproved):
        rows.requests[key] = replace(request, approvals=(*request.approvals, event.approved_by))
        rows.votes[(*key, logged.log_position)] = (
            event.approved_by,
            "approved",
            event.comment,
            envelope.occurred_at,
        )
        return
    decided = replace(
        request,
        status=_STATUS[event.event_type],
        decided_at=envelope.occurred_at,
        decided_position=logged.log_position,
        decided_by=envelope.actor,
    )
    match event:
        case PromotionRejected():
            decided = replace(decided, decided_by=event.rejected_by, decision_comment=event.comment)
            rows.votes[(*key, logged.log_position)] = (
                event.rejected_by,
                "rejected",
                event.comment,
                envelope.occurred_at,
            )
        case PromotionCancelled():
            decided = replace(
                decided, decided_by=event.cancelled_by, decision_comment=event.comment
            )
        case PromotionExecuted():
            decided = replace(
                decided, executed_approvers=tuple(event.approved_by), rules=tuple(event.rules)
            )
        case _:
            pass
    rows.requests[key] = decided


# --- load and write ------------------------------------------------------------------------


async def load(
    conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]
) -> ApprovalRows:
    """The requests the batch votes on or decides."""
    keys = sorted(
        {
            (model_id_of(logged.stream_id), decision.request_id)
            for logged in events
            if logged.event_type in _DECISION_TYPES
            and isinstance(decision := CODEC.decode(logged.envelope), _DECISIONS)
        }
    )
    rows = ApprovalRows()
    if keys:
        for r in await conn.fetch(
            f"SELECT {', '.join('t.' + c for c in _REQUEST_COLUMNS)} FROM {names.approval_requests} t"
            " JOIN unnest($1::text[], $2::text[]) AS k(m, r) ON t.model_id = k.m AND t.request_id = k.r",
            [k[0] for k in keys],
            [k[1] for k in keys],
        ):
            request = _request_row(r)
            rows.requests[(request.model_id, request.request_id)] = request
    return rows


_DECISION_TYPES = frozenset(t.event_type for t in _DECISIONS)


def _request_row(r: asyncpg.Record) -> RequestRow:
    fields: dict[str, Any] = {c: r[c] for c in _REQUEST_COLUMNS}
    for name in ("approvals", "executed_approvers", "rules"):
        fields[name] = None if r[name] is None else tuple(r[name])
    return RequestRow(**fields)


async def write(
    conn: asyncpg.Connection, names: Names, loaded: ApprovalRows, evolved: ApprovalRows
) -> None:
    await upsert(
        conn,
        names.approval_registrants,
        (("model_id", "text"), ("version", "int"), ("registered_by", "text")),
        2,
        [(*k, by) for k, by in changed(loaded.registrants, evolved.registrants).items()],
    )
    policies = changed(loaded.policies, evolved.policies)
    cleared = [scope for scope, policy in policies.items() if policy is None]
    if cleared:
        await conn.execute(
            f"DELETE FROM {names.approval_policies} WHERE scope = ANY($1::text[])", cleared
        )
    await upsert(
        conn,
        names.approval_policies,
        (("scope", "text"), ("separation_of_duties", "boolean"), ("set_position", "bigint")),
        1,
        [(scope, *policy) for scope, policy in policies.items() if policy is not None],
    )
    requests = changed(loaded.requests, evolved.requests)
    if requests:
        # Row by row: unnest cannot carry the array columns (it would flatten them).
        await conn.executemany(
            f"INSERT INTO {names.approval_requests} ({', '.join(_REQUEST_COLUMNS)})"
            f" VALUES ({', '.join(f'${i + 1}' for i in range(len(_REQUEST_COLUMNS)))})"
            " ON CONFLICT (model_id, request_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in _REQUEST_COLUMNS[2:]),
            [msgspec.structs.astuple(r) for r in requests.values()],
        )
    votes = changed(loaded.votes, evolved.votes)
    if votes:
        await conn.executemany(
            f"INSERT INTO {names.approval_votes} (model_id, request_id, log_position, actor, vote, comment, at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(*k, *v) for k, v in votes.items()],
        )


PROJECTION = Projection(
    name="approvals",
    # 2: the environment a request names (``approval_requests.environment``).
    version=2,
    tables=TABLES,
    handles=frozenset(
        {
            VersionRegistered.event_type,
            ModelPolicySet.event_type,
            ModelPolicyCleared.event_type,
            RegistryPolicySet.event_type,
            PromotionRequested.event_type,
            *_DECISION_TYPES,
        }
    ),
    fold=Fold(load=load, evolve=evolve, write=write),
    description="promotion requests: open ones, who must act, decided ones",
)


# --- queries ------------------------------------------------------------------------------


def _select(names: Names) -> str:
    """Requests with the policy in force and the registrant joined in (all from this view)."""
    columns = ", ".join(f"r.{c}" for c in _REQUEST_COLUMNS)
    return (
        f"SELECT {columns}, coalesce(mp.separation_of_duties, rp.separation_of_duties, true) AS sod,"
        f" g.registered_by FROM {names.approval_requests} r"
        f" LEFT JOIN {names.approval_policies} mp ON mp.scope = r.model_id"
        f" LEFT JOIN {names.approval_policies} rp ON rp.scope = ''"  # REGISTRY_SCOPE
        f" LEFT JOIN {names.approval_registrants} g ON g.model_id = r.model_id AND g.version = r.version"
    )


def _request(
    row: asyncpg.Record, now: datetime, votes: list[Vote] | None = None
) -> ApprovalRequest:
    sod: bool = row["sod"]
    approvals: list[str] = list(row["approvals"])
    duty_excluded = (
        [p for p in dict.fromkeys([row["requested_by"], row["registered_by"]]) if p] if sod else []
    )
    counted = list(dict.fromkeys(a for a in approvals if a not in duty_excluded))
    missing = max(0, row["approvals_required"] - len(counted)) if row["status"] == "pending" else 0
    excluded = list(dict.fromkeys([*duty_excluded, *approvals]))
    if row["status"] != "pending":
        who = "nobody: the request is " + row["status"]
    elif missing == 0:
        who = "any approver: one more approval executes it under the policy in force"
    else:
        who = f"{missing} more approver(s)" + (f", not {', '.join(excluded)}" if excluded else "")
    fields = {c: row[c] for c in _REQUEST_COLUMNS}
    fields["approvals"] = approvals
    for name in ("executed_approvers", "rules"):
        fields[name] = None if row[name] is None else list(row[name])
    return ApprovalRequest(
        **fields,
        separation_of_duties=sod,
        approvers_excluded=excluded,
        approvals_missing=missing,
        who_must_act=who,
        overdue=row["status"] == "pending" and row["expires_at"] <= now,
        votes=votes or [],
    )


async def open_requests(
    conn: Conn,
    names: Names,
    model_id: str | None = None,
    *,
    now: datetime | None = None,
    limit: int = 500,
) -> list[ApprovalRequest]:
    """Pending requests, oldest first. ``now`` decides ``overdue`` (default: the clock)."""
    rows = await conn.fetch(
        _select(names) + " WHERE r.status = 'pending' AND ($1::text IS NULL OR r.model_id = $1)"
        " ORDER BY r.requested_position LIMIT $2",
        model_id,
        limit,
    )
    moment = now or datetime.now(UTC)
    return [_request(r, moment) for r in rows]


async def awaiting(
    conn: Conn, names: Names, actor: str | tuple[str, ...], *, now: datetime | None = None
) -> list[ApprovalRequest]:
    """Pending requests ``actor`` may approve: their to-do list. One person may be
    recorded under several ids (a name before subjects, a subject id since): give all."""
    ids = {actor} if isinstance(actor, str) else set(actor)
    return [
        r
        for r in await open_requests(conn, names, now=now, limit=10_000)
        if r.approvals_missing > 0 and not ids.intersection(r.approvers_excluded)
    ]


async def request(
    conn: Conn,
    names: Names,
    request_id: str,
    *,
    model_id: str | None = None,
    now: datetime | None = None,
) -> ApprovalRequest | None:
    """One request with its votes (approvals and a rejection, in order)."""
    row = await conn.fetchrow(
        _select(names) + " WHERE r.request_id = $1 AND ($2::text IS NULL OR r.model_id = $2)"
        " ORDER BY r.requested_position LIMIT 1",
        request_id,
        model_id,
    )
    if row is None:
        return None
    vote_rows = await conn.fetch(
        f"SELECT actor, vote, comment, at, log_position FROM {names.approval_votes}"
        " WHERE model_id = $1 AND request_id = $2 ORDER BY log_position",
        row["model_id"],
        request_id,
    )
    return _request(row, now or datetime.now(UTC), [Vote(**dict(v)) for v in vote_rows])


async def decided(
    conn: Conn,
    names: Names,
    model_id: str | None = None,
    *,
    status: str | None = None,
    before_position: int | None = None,
    limit: int = 100,
) -> list[ApprovalRequest]:
    """Decided requests, newest decision first; page on with ``before_position`` set to the
    last item's ``decided_position``."""
    rows = await conn.fetch(
        _select(names)
        + " WHERE r.decided_position IS NOT NULL AND ($1::text IS NULL OR r.model_id = $1)"
        " AND ($2::text IS NULL OR r.status = $2) AND ($3::bigint IS NULL OR r.decided_position < $3)"
        " ORDER BY r.decided_position DESC LIMIT $4",
        model_id,
        status,
        before_position,
        limit,
    )
    return [_request(r, datetime.now(UTC)) for r in rows]
