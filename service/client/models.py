"""What the API answers, as msgspec structs the client decodes into.

These mirror the server's view rows (``projections.*``, ``service.api.*``) field for field
but import none of the server stack, so a training script needs only httpx and msgspec.
``tests/unit/test_client_models.py`` keeps the two in step. Unknown fields are ignored,
so a newer server does not break an older client. Version content, stages, roles and
policies are the domain's own types from ``events`` (pure, msgspec only).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

import msgspec

from events.access import Permission, Role
from events.policy import GovernancePolicy
from events.stages import Stage, StageDefinition
from events.version_content import (
    ArtifactEntry,
    CodeReference,
    DatasetReference,
    Dependencies,
    FileReference,
    ModelSignature,
    RunReference,
    VersionContent,
)

__all__ = [
    "AliasInterval",
    "ApprovalRequest",
    "ArtifactEntry",
    "AuditEntry",
    "AuditPage",
    "Break",
    "CodeReference",
    "Comparison",
    "DatasetReference",
    "Denial",
    "DenialsPage",
    "Dependencies",
    "DeploymentRun",
    "EventsPage",
    "FileReference",
    "GovernancePolicy",
    "IssuedToken",
    "LoggedEvent",
    "Metric",
    "MetricComparison",
    "MetricSample",
    "MetricSeries",
    "MetricValue",
    "ModelRow",
    "ModelSignature",
    "Page",
    "ParamComparison",
    "Permission",
    "Place",
    "PolicyView",
    "Principal",
    "Receipt",
    "RegisteredVersion",
    "Role",
    "RunReference",
    "Stage",
    "StageDefinition",
    "StageInterval",
    "TokenInfo",
    "VerifyReport",
    "VersionContent",
    "VersionRow",
    "Vote",
]

T = TypeVar("T")
ParamValue = str | int | float | bool


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """What a write did: its events, the model's stream version (its ETag) and the log
    position of its last event (pass it to ``wait_for`` or as ``min_position``)."""

    events: list[str]
    stream_version: int
    position: int | None = None
    model_id: str | None = None
    model: str | None = None
    version: int | None = None
    request_id: str | None = None
    replayed: bool = False
    # Demotions and alias moves the write caused besides what it asked for.
    also_moved: list[str] = msgspec.field(default_factory=list)

    @property
    def executed(self) -> bool:
        """A version changed stage in this write (directly, or by the approval that completed a request)."""
        return (
            "model.promotion_executed" in self.events or "model.stage_transitioned" in self.events
        )

    @property
    def pending(self) -> bool:
        """This write opened or advanced a promotion request that still waits for approvals."""
        return any(e.startswith("model.promotion_") for e in self.events) and not any(
            e in _CLOSING for e in self.events
        )


_CLOSING = frozenset(
    {
        "model.promotion_executed",
        "model.promotion_rejected",
        "model.promotion_cancelled",
        "model.promotion_expired",
    }
)


class RegisteredVersion(msgspec.Struct, frozen=True, kw_only=True):
    """``Client.register_version``: the new version's number and every write it took.

    ``position`` is the log position of the last of them (registration or metrics).
    """

    model: str
    model_id: str | None
    version: int
    position: int | None
    receipt: Receipt
    metrics: list[Receipt] = msgspec.field(default_factory=list)
    model_created: bool = False
    # One per file of ``artifacts_dir`` when it was uploaded (empty for external files).
    files: list[FileTransfer] = msgspec.field(default_factory=list)

    @property
    def uploaded(self) -> list[FileTransfer]:
        return [f for f in self.files if f.action == "uploaded"]


class FileTransfer(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one file: ``uploaded``; ``stored`` (the model had the bytes
    already, nothing sent); ``downloaded``; ``present`` (the destination held the right
    bytes already, nothing fetched)."""

    path: str
    sha256: str
    size: int
    action: Literal["uploaded", "stored", "downloaded", "present"]


class Downloaded(msgspec.Struct, frozen=True, kw_only=True):
    """``Client.download``: the version fetched, where to, and what happened to each file.

    ``external`` lists the entries the registry holds no copy of (not downloaded: their
    bytes are at their ``uri``)."""

    model: str
    version: int
    dest: str
    files: list[FileTransfer]
    external: list[ArtifactEntry] = msgspec.field(default_factory=list)

    @property
    def downloaded(self) -> list[FileTransfer]:
        return [f for f in self.files if f.action == "downloaded"]


class Metric(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One metric point to log (``timestamp`` defaults to when it was logged)."""

    key: str
    value: float
    step: int = 0
    timestamp: datetime | None = None
    dataset: str | None = None


class Page(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """One page of results; ``next_cursor`` asks for the next one (None: this is the last)."""

    items: tuple[T, ...]
    next_cursor: str | None = None


class ModelRow(msgspec.Struct, frozen=True, kw_only=True):
    """A registered model as the catalogue shows it: ``stages`` maps each stage to its
    highest version (None: none), ``aliases`` each alias to its version."""

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


class MetricValue(msgspec.Struct, frozen=True, kw_only=True):
    """The latest value of one (key, dataset) of a version."""

    key: str
    dataset: str
    value: float
    step: int
    timestamp: datetime


class VersionRow(msgspec.Struct, frozen=True, kw_only=True):
    model_id: str
    model_name: str
    version: int
    stage: str
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
    # The environments of ``stage`` the version is in, for a stage with environments.
    environments: tuple[str, ...] = ()


class MetricSample(msgspec.Struct, frozen=True, kw_only=True):
    """One logged point; ``position`` is the log position of the batch that carried it."""

    key: str
    dataset: str
    step: int
    timestamp: datetime
    value: float
    position: int


class MetricSeries(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    dataset: str
    points: int
    first_step: int
    last_step: int


class ParamComparison(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    values: tuple[ParamValue | None, ...]
    differs: bool


class MetricComparison(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    dataset: str
    values: tuple[float | None, ...]
    differs: bool


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """Versions side by side (values in ``versions`` order); ``missing``: asked for, not found."""

    model_id: str
    versions: tuple[int, ...]
    missing: tuple[int, ...]
    params: tuple[ParamComparison, ...]
    metrics: tuple[MetricComparison, ...]


class Vote(msgspec.Struct, frozen=True, kw_only=True):
    actor: str
    vote: str
    comment: str
    at: datetime
    log_position: int


class ApprovalRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A promotion request; ``status`` is pending, executed, rejected, cancelled or expired."""

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
    status: str
    separation_of_duties: bool
    approvers_excluded: list[str]
    approvals_missing: int
    who_must_act: str
    overdue: bool
    decided_by: str | None
    decided_at: datetime | None
    decided_position: int | None
    decision_comment: str | None
    executed_approvers: list[str] | None
    rules: list[str] | None
    votes: list[Vote] = msgspec.field(default_factory=list)
    # The environment of ``target_stage``, for a stage with environments.
    environment: str | None = None


class StageInterval(msgspec.Struct, frozen=True, kw_only=True):
    """``version`` held ``stage`` from ``from_*`` until ``to_*`` (None: still holds it)."""

    model_id: str
    stage: str
    version: int
    from_position: int
    from_time: datetime
    to_position: int | None
    to_time: datetime | None
    entered_by: str
    kind: str
    comment: str
    request_id: str | None
    left_by: str | None


class AliasInterval(msgspec.Struct, frozen=True, kw_only=True):
    model_id: str
    alias: str
    version: int
    from_position: int
    from_time: datetime
    to_position: int | None
    to_time: datetime | None
    entered_by: str
    kind: str
    comment: str
    request_id: str | None
    left_by: str | None


class PolicyView(msgspec.Struct, frozen=True, kw_only=True):
    """The governance policy in force and where it comes from."""

    source: Literal["model", "registry"]
    policy: GovernancePolicy
    # The lifecycle in order, and where new versions start (older servers omit both).
    stages: tuple[StageDefinition, ...] = ()
    initial_stage: str = ""


class DeploymentRun(msgspec.Struct, frozen=True, kw_only=True):
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
    """Desired against actual at one (environment, target) of a model, and the drift."""

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


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the audit timeline; ``data`` is the event's data exactly as recorded."""

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
    data: msgspec.Raw

    @property
    def payload(self) -> dict[str, Any]:
        decoded: dict[str, Any] = msgspec.json.decode(self.data)
        return decoded


class AuditPage(msgspec.Struct, frozen=True, kw_only=True):
    """``next_cursor``: pass it as ``cursor`` for the next page (None: this was the last)."""

    items: list[AuditEntry]
    next_cursor: int | None


class LoggedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event of the global log; ``envelope`` holds the stored, hash-chained bytes."""

    log_position: int
    sealed_at: datetime
    envelope: msgspec.Raw

    @property
    def record(self) -> dict[str, Any]:
        """The envelope decoded: event_type, stream_id, actor, occurred_at, data, ..."""
        decoded: dict[str, Any] = msgspec.json.decode(self.envelope)
        return decoded


class EventsPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[LoggedEvent]
    next_after: int | None


class Break(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    detail: str
    log_position: int | None = None
    stream_id: str | None = None
    stream_position: int | None = None


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    events_checked: int
    streams_checked: int
    log_entries_checked: int
    head_position: int
    head_hash: str
    first_break: Break | None
    breaks: list[Break]
    checkpoints_checked: int = 0


class Denial(msgspec.Struct, frozen=True, kw_only=True):
    """Refused requests that were the same in every respect within one minute, counted.
    ``principal`` is None when the caller was not authenticated; ``route`` is the route's
    template; ``code`` says why: unauthenticated, permission_denied, policy_violation (or
    overflow: more distinct refusals at once than a server keeps one by one)."""

    principal: str | None
    token_id: str | None
    status: int
    code: str
    method: str
    route: str
    model: str | None
    permission: str | None
    reason: str
    client: str
    count: int
    first_at: datetime
    last_at: datetime
    cursor: str


class DenialsPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Denial]
    next_before: str | None


class Right(msgspec.Struct, frozen=True, kw_only=True):
    """One permission on one model pattern, and the grant that gave it."""

    permission: Permission
    pattern: str
    source: str


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who a token belongs to, and what it may do (``scopes`` empty: every model), plus
    what grants add, each on its own model pattern."""

    name: str
    token_id: str
    roles: tuple[Role, ...]
    permissions: frozenset[Permission]
    scopes: tuple[str, ...]
    groups: tuple[str, ...] = ()
    grants: tuple[Right, ...] = ()


class RoleInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    permissions: list[Permission]
    builtin: bool
    description: str = ""


class GrantInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A role given to a principal or a group (one of them is None) on ``model``: a model
    name, a prefix ending in ``*``, or ``*``."""

    grant_id: str
    principal: str | None
    group: str | None
    role: str
    model: str
    permissions: list[Permission]
    given_by: str
    reason: str


class AccessView(msgspec.Struct, frozen=True, kw_only=True):
    """The roles and grants as they stood at log position ``position``."""

    position: int
    roles: list[RoleInfo]
    grants: list[GrantInfo]


class AccessCheck(msgspec.Struct, frozen=True, kw_only=True):
    """Whether ``principal`` could do ``permission`` on ``model`` at ``position``, and
    the token or grant that decided (None when denied; ``reason`` says why)."""

    principal: str
    groups: list[str]
    permission: Permission
    model: str | None
    position: int
    allowed: bool
    decided_by: str | None
    reason: str


class ServiceAccountInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    roles: list[Role]
    scopes: list[str]
    max_lifetime_seconds: int
    description: str
    disabled: bool
    disabled_reason: str


class IssuedToken(msgspec.Struct, frozen=True, kw_only=True):
    """A new token. ``secret`` is in the first answer only (None on a replayed retry)."""

    token_id: str
    principal: str
    roles: list[Role]
    scopes: list[str]
    expires_at: datetime | None
    secret: str | None
    note: str = ""


class Subject(msgspec.Struct, frozen=True, kw_only=True):
    """A person as events record them: ``subject_id``; ``name`` None once erased, and
    ``display`` what every answer shows for them ("erased subject" then)."""

    subject_id: str
    name: str | None
    display: str
    erased: bool
    created_at: datetime
    erased_at: datetime | None = None
    erased_by: str | None = None
    reason: str | None = None


class Erasure(msgspec.Struct, frozen=True, kw_only=True):
    """What erasing a subject did; ``legacy_events``: events recorded before subjects
    existed, which still name the person in clear (recorded bytes never change)."""

    subject: Subject
    position: int | None
    revoked_tokens: list[str]
    legacy_events: int
    denials_deleted: int


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    token_id: str
    principal: str
    roles: list[Role]
    scopes: list[str]
    expires_at: datetime | None
    revoked: bool
    description: str
