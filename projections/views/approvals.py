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
from datetime import UTC, datetime

import asyncpg
import msgspec

from eventlog.log import LoggedEvent
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
from projections.base import Names, Projection, Table

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
        PRIMARY KEY (model_id, request_id)
        """,
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
    ),
    # Who registered each version: separation of duties excludes them.
    Table(
        "approval_registrants",
        "model_id text NOT NULL, version int NOT NULL, registered_by text NOT NULL,"
        " PRIMARY KEY (model_id, version)",
    ),
    # The policy facts the view needs, per model and for the registry (scope '').
    Table(
        "approval_policies",
        "scope text PRIMARY KEY, separation_of_duties boolean NOT NULL,"
        " set_position bigint NOT NULL",
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


# --- apply -------------------------------------------------------------------------------

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
)
_DECISIONS = {
    PromotionRejected.event_type: "rejected",
    PromotionCancelled.event_type: "cancelled",
    PromotionExpired.event_type: "expired",
    PromotionExecuted.event_type: "executed",
}


def _upsert(table: str, columns: Sequence[str], key: int) -> str:
    params = ", ".join(f"${i + 1}" for i in range(len(columns)))
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[key:])
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({params})"
        f" ON CONFLICT ({', '.join(columns[:key])}) DO UPDATE SET {updates}"
    )


async def apply(conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]) -> None:
    decoded = [(logged, CODEC.decode(logged.envelope)) for logged in events]
    # Load the requests this batch touches but did not create: fold in memory, write once.
    created = {
        (model_id_of(lg.stream_id), e.request_id)
        for lg, e in decoded
        if isinstance(e, PromotionRequested)
    }
    wanted = {
        (model_id_of(lg.stream_id), e.request_id)
        for lg, e in decoded
        if isinstance(
            e,
            PromotionApproved
            | PromotionRejected
            | PromotionCancelled
            | PromotionExpired
            | PromotionExecuted,
        )
    } - created
    requests: dict[tuple[str, str], dict[str, object]] = {}
    if wanted:
        rows = await conn.fetch(
            f"SELECT {', '.join(_REQUEST_COLUMNS)} FROM {names.approval_requests} t"
            " JOIN unnest($1::text[], $2::text[]) AS k(m, r) ON t.model_id = k.m AND t.request_id = k.r",
            [k[0] for k in wanted],
            [k[1] for k in wanted],
        )
        requests = {(r["model_id"], r["request_id"]): dict(r) for r in rows}
    touched: dict[tuple[str, str], dict[str, object]] = {}
    votes: list[tuple[object, ...]] = []
    registrants: list[tuple[str, int, str]] = []
    policies: dict[str, tuple[bool | None, int]] = {}

    for logged, event in decoded:
        envelope = logged.envelope
        match event:
            case VersionRegistered():
                registrants.append(
                    (model_id_of(logged.stream_id), event.version, event.registered_by)
                )
            case ModelPolicySet():
                policies[model_id_of(logged.stream_id)] = (
                    event.policy.separation_of_duties,
                    logged.log_position,
                )
            case ModelPolicyCleared():
                policies[model_id_of(logged.stream_id)] = (None, logged.log_position)
            case RegistryPolicySet():
                policies[REGISTRY_SCOPE] = (event.policy.separation_of_duties, logged.log_position)
            case PromotionRequested():
                key = (model_id_of(logged.stream_id), event.request_id)
                requests[key] = touched[key] = {
                    "model_id": key[0],
                    "request_id": event.request_id,
                    "version": event.version,
                    "target_stage": None if event.target_stage is None else str(event.target_stage),
                    "alias": event.alias,
                    "rollback": event.rollback,
                    "justification": event.justification,
                    "requested_by": event.requested_by,
                    "requested_at": envelope.occurred_at,
                    "requested_position": logged.log_position,
                    "expires_at": event.expires_at,
                    "approvals_required": event.approvals_required,
                    "approvals": [],
                    "status": "pending",
                    "decided_by": None,
                    "decided_at": None,
                    "decided_position": None,
                    "decision_comment": None,
                    "executed_approvers": None,
                    "rules": None,
                }
            case PromotionApproved():
                key = (model_id_of(logged.stream_id), event.request_id)
                request = touched[key] = requests[key]
                request["approvals"] = [*request["approvals"], event.approved_by]  # type: ignore[misc]
                votes.append(
                    (
                        *key,
                        logged.log_position,
                        event.approved_by,
                        "approved",
                        event.comment,
                        envelope.occurred_at,
                    )
                )
            case (
                PromotionRejected()
                | PromotionCancelled()
                | PromotionExpired()
                | PromotionExecuted()
            ):
                key = (model_id_of(logged.stream_id), event.request_id)
                request = touched[key] = requests[key]
                request.update(
                    status=_DECISIONS[event.event_type],
                    decided_at=envelope.occurred_at,
                    decided_position=logged.log_position,
                    decided_by=envelope.actor,
                )
                if isinstance(event, PromotionRejected):
                    request.update(decided_by=event.rejected_by, decision_comment=event.comment)
                    votes.append(
                        (
                            *key,
                            logged.log_position,
                            event.rejected_by,
                            "rejected",
                            event.comment,
                            envelope.occurred_at,
                        )
                    )
                elif isinstance(event, PromotionCancelled):
                    request.update(decided_by=event.cancelled_by, decision_comment=event.comment)
                elif isinstance(event, PromotionExecuted):
                    request.update(
                        executed_approvers=list(event.approved_by), rules=list(event.rules)
                    )
            case _:
                pass

    if registrants:
        await conn.executemany(
            _upsert(names.approval_registrants, ("model_id", "version", "registered_by"), 2),
            registrants,
        )
    if policies:
        cleared = [scope for scope, (sod, _) in policies.items() if sod is None]
        kept = [
            (scope, sod, position) for scope, (sod, position) in policies.items() if sod is not None
        ]
        if cleared:
            await conn.execute(
                f"DELETE FROM {names.approval_policies} WHERE scope = ANY($1::text[])", cleared
            )
        if kept:
            await conn.executemany(
                _upsert(
                    names.approval_policies, ("scope", "separation_of_duties", "set_position"), 1
                ),
                kept,
            )
    if touched:
        await conn.executemany(
            _upsert(names.approval_requests, _REQUEST_COLUMNS, 2),
            [tuple(request[c] for c in _REQUEST_COLUMNS) for request in touched.values()],
        )
    if votes:
        await conn.executemany(
            f"INSERT INTO {names.approval_votes} (model_id, request_id, log_position, actor, vote, comment, at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            votes,
        )


PROJECTION = Projection(
    name="approvals",
    version=1,
    tables=TABLES,
    handles=frozenset(
        {
            VersionRegistered.event_type,
            ModelPolicySet.event_type,
            ModelPolicyCleared.event_type,
            RegistryPolicySet.event_type,
            PromotionRequested.event_type,
            PromotionApproved.event_type,
            PromotionRejected.event_type,
            PromotionCancelled.event_type,
            PromotionExpired.event_type,
            PromotionExecuted.event_type,
        }
    ),
    apply=apply,
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
    conn: Conn, names: Names, actor: str, *, now: datetime | None = None
) -> list[ApprovalRequest]:
    """Pending requests ``actor`` may approve: their to-do list."""
    return [
        r
        for r in await open_requests(conn, names, now=now, limit=10_000)
        if r.approvals_missing > 0 and actor not in r.approvers_excluded
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


async def checksum(conn: Conn, names: Names) -> str:
    """A digest of every row, in key order: equal digests mean equal views."""
    parts = []
    for table, order in (
        (names.approval_requests, "model_id, request_id"),
        (names.approval_votes, "model_id, request_id, log_position"),
        (names.approval_registrants, "model_id, version"),
        (names.approval_policies, "scope"),
    ):
        parts.append(
            await conn.fetchval(
                f"SELECT md5(coalesce(string_agg(md5(t::text), '' ORDER BY {order}), '')) FROM {table} t"
            )
        )
    return ":".join(parts)
