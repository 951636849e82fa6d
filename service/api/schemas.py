"""HTTP request bodies. Kept apart from the stored events: the API and storage evolve on
different clocks. Unknown fields are refused; the domain checks every value's rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

from events.access import Role
from events.metrics import MetricInput
from events.names import STAGE_NAME_MAX, STAGE_NAME_PATTERN
from events.policy import GateOp, GovernancePolicy
from events.version_content import DatasetRole

Tags = dict[str, str]
# A time without a zone is ambiguous: refused (400) rather than guessed.
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
ParamValue = str | int | float | bool


# A stage name in a query: the document states the rule, so a malformed one is a 400.
StageNameQuery = Annotated[str, msgspec.Meta(pattern=STAGE_NAME_PATTERN, max_length=STAGE_NAME_MAX)]


class Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


def require_representable(name: str, moment: datetime | None) -> None:
    """Refuse (400, rule ``range``) a time outside years 1-9999 in UTC, such as
    9999-12-31T23:59:59-14:00: Python cannot convert it, nor asyncpg store it, so it would
    fail a write or, once recorded, every view that folds it. Called from __post_init__,
    whose ValueError msgspec reports as a validation error naming the field."""
    if moment is None:
        return
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"`{name}` is out of range: a time within years 1-9999 in UTC") from None


class CreateModel(Strict, frozen=True, kw_only=True):
    name: str
    description: str = ""
    tags: Tags = msgspec.field(default_factory=dict)
    owner: str | None = None  # default: the caller


class UpdateModel(Strict, frozen=True, kw_only=True):
    description: str


class Rename(Strict, frozen=True, kw_only=True):
    new_name: str


class Reason(Strict, frozen=True, kw_only=True):
    reason: str


class TagValue(Strict, frozen=True, kw_only=True):
    value: str


class Artifact(Strict, frozen=True, kw_only=True):
    """A stored blob of the model (no ``uri``), or ``external: true`` with the ``uri`` of
    bytes the registry does not hold (docs/artifacts.md)."""

    path: str
    uri: str = ""
    sha256: str
    size: int
    external: bool = False


class Code(Strict, frozen=True, kw_only=True):
    repository: str
    commit: str
    path: str = ""


class FileRef(Strict, frozen=True, kw_only=True):
    uri: str
    sha256: str


class DependencySpec(Strict, frozen=True, kw_only=True):
    python_version: str
    lock_file: FileRef | None = None


class Dataset(Strict, frozen=True, kw_only=True):
    name: str
    uri: str
    digest: str
    role: DatasetRole


class Run(Strict, frozen=True, kw_only=True):
    run_id: str
    url: str = ""
    tracker: str = ""


class Signature(Strict, frozen=True, kw_only=True):
    inputs: str
    outputs: str
    params: str = ""


class RegisterVersion(Strict, frozen=True, kw_only=True):
    artifacts: list[Artifact]
    code: Code | None = None
    dependencies: DependencySpec | None = None
    params: dict[str, ParamValue] = msgspec.field(default_factory=dict)
    datasets: list[Dataset] = msgspec.field(default_factory=list)
    run: Run | None = None
    signature: Signature | None = None
    tags: Tags = msgspec.field(default_factory=dict)
    description: str = ""


class Metric(Strict, frozen=True, kw_only=True):
    key: str
    value: float
    step: int = 0
    timestamp: AwareDatetime | None = None
    dataset: str | None = None

    def __post_init__(self) -> None:
        require_representable("timestamp", self.timestamp)

    def to_input(self) -> MetricInput:
        return MetricInput(
            key=self.key,
            value=self.value,
            step=self.step,
            timestamp=self.timestamp,
            dataset=self.dataset,
        )


class MetricBatch(Strict, frozen=True, kw_only=True):
    metrics: list[Metric]


class StageChange(Strict, frozen=True, kw_only=True):
    to: str
    comment: str = ""
    # Required when ``to`` is a stage with environments, refused otherwise.
    environment: str | None = None


class RollbackRequest(Strict, frozen=True, kw_only=True):
    reason: str


class AliasTarget(Strict, frozen=True, kw_only=True):
    version: int
    comment: str = ""


# The policy as a client sends it: the fields of ``events.policy``, unknown ones refused (a
# misspelt ``approvals`` must not silently mean none). An omitted field takes the
# domain's default, so these mirrors carry no defaults of their own.
class MetricGateBody(Strict, frozen=True, kw_only=True):
    metric: str
    op: GateOp | msgspec.UnsetType = msgspec.UNSET
    dataset: str | msgspec.UnsetType = msgspec.UNSET
    threshold: float | msgspec.UnsetType | None = msgspec.UNSET
    compare_to_production: bool | msgspec.UnsetType = msgspec.UNSET


class TransitionRuleBody(Strict, frozen=True, kw_only=True):
    from_stage: str
    to_stage: str
    approvals: int | msgspec.UnsetType = msgspec.UNSET
    gates: list[MetricGateBody] | msgspec.UnsetType = msgspec.UNSET


class AliasRuleBody(Strict, frozen=True, kw_only=True):
    alias: str
    approvals: int | msgspec.UnsetType = msgspec.UNSET
    gates: list[MetricGateBody] | msgspec.UnsetType = msgspec.UNSET


class StageDefinitionBody(Strict, frozen=True, kw_only=True):
    name: str
    terminal: bool | msgspec.UnsetType = msgspec.UNSET
    exclusive: bool | msgspec.UnsetType = msgspec.UNSET
    demote_to: str | msgspec.UnsetType | None = msgspec.UNSET
    environments: list[str] | msgspec.UnsetType = msgspec.UNSET


class PolicyBody(Strict, frozen=True, kw_only=True):
    transitions: list[TransitionRuleBody] | msgspec.UnsetType = msgspec.UNSET
    protected_aliases: list[AliasRuleBody] | msgspec.UnsetType = msgspec.UNSET
    separation_of_duties: bool | msgspec.UnsetType = msgspec.UNSET
    demote_production_to: str | msgspec.UnsetType = msgspec.UNSET
    request_ttl_seconds: int | msgspec.UnsetType = msgspec.UNSET
    rollback_approvals: int | msgspec.UnsetType | None = msgspec.UNSET
    # Omitted: the four default stages (development, staging, production, archived).
    stages: list[StageDefinitionBody] | msgspec.UnsetType = msgspec.UNSET
    # Omitted: the first stage listed.
    initial_stage: str | msgspec.UnsetType = msgspec.UNSET

    def to_policy(self) -> GovernancePolicy:
        return msgspec.convert(msgspec.to_builtins(self), GovernancePolicy)


class PolicyUpdate(Strict, frozen=True, kw_only=True):
    policy: PolicyBody
    comment: str = ""


class PromotionRequest(Strict, frozen=True, kw_only=True):
    version: int
    justification: str
    target_stage: str | None = None
    alias: str | None = None
    rollback: bool = False
    # Required when ``target_stage`` has environments, refused otherwise.
    environment: str | None = None


class Decision(Strict, frozen=True, kw_only=True):
    comment: str = ""


class DeploymentStart(Strict, frozen=True, kw_only=True):
    environment: str
    target: str
    desired_stage: str | None = None
    desired_alias: str | None = None
    comment: str = ""
    deployment_id: str | None = None


class DeploymentReport(Strict, frozen=True, kw_only=True):
    deployment_id: str
    status: Literal["succeeded", "failed", "rolled_back"]
    reason: str = ""
    comment: str = ""


class TokenRequest(Strict, frozen=True, kw_only=True):
    """For a service account's token name ``service_account`` (its name is the principal,
    its roles and scopes the token's) and an ``expires_at`` within its maximum lifetime."""

    principal: str = ""
    roles: list[Role] = msgspec.field(default_factory=list)
    scopes: list[str] = msgspec.field(default_factory=list)
    expires_at: AwareDatetime | None = None
    description: str = ""
    service_account: str | None = None

    def __post_init__(self) -> None:
        require_representable("expires_at", self.expires_at)


class IssuedToken(msgspec.Struct, frozen=True, kw_only=True):
    token_id: str
    principal: str
    roles: list[Role]
    scopes: list[str]
    expires_at: datetime | None
    secret: str | None
    note: str = "the secret is shown once; store it now"


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    token_id: str
    principal: str
    roles: list[Role]
    scopes: list[str]
    expires_at: datetime | None
    revoked: bool
    description: str
