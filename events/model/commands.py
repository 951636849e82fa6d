"""The commands of the ``model:{model_id}`` stream: what the shell may ask for. Pure.

Every command carries ``actor`` and ``now`` (from ``Command``). The shell also supplies:

* ids it generated (``model_id``, ``request_id``, ``deployment_id``): ``decide`` never invents one;
* ``registry_policy`` on ``GovernedCommand`` subclasses: the current registry-wide default
  policy (the state of the ``policy:registry`` stream); the model's own policy, if set, wins;
* ``metrics`` on commands that may run metric gates: ``{version: {key: {dataset or "": value}}}``
  with the latest values (``events.metrics.latest_values``) of at least the version being
  promoted and the current production version. Missing values fail a gate, so an empty
  snapshot is safe, only unhelpful;
* ``actor_is_admin`` where a rule depends on it (restoring an archived version, cancelling
  someone else's request). Authorisation of everything else is the HTTP layer's job.
"""

from __future__ import annotations

import msgspec

from events.base import Command
from events.policy import DEFAULT_POLICY, GovernancePolicy
from events.stages import StageName
from events.version_content import VersionContent

Metrics = dict[int, dict[str, dict[str, float]]]


def _metrics() -> Metrics:
    return {}


# --- the registered model -------------------------------------------------------------


class RegisterModel(Command, frozen=True, kw_only=True):
    """The shell checks the name is free and writes the name -> id row in the append's transaction."""

    model_id: str
    name: str
    owner: str
    description: str = ""
    tags: dict[str, str] = msgspec.field(default_factory=dict)


class UpdateModelDescription(Command, frozen=True, kw_only=True):
    description: str


class SetModelTags(Command, frozen=True, kw_only=True):
    tags: dict[str, str]


class RemoveModelTags(Command, frozen=True, kw_only=True):
    keys: tuple[str, ...]


class RenameModel(Command, frozen=True, kw_only=True):
    new_name: str


class ArchiveModel(Command, frozen=True, kw_only=True):
    reason: str


class RestoreModel(Command, frozen=True, kw_only=True):
    reason: str


class DeleteModel(Command, frozen=True, kw_only=True):
    reason: str


class SetModelPolicy(Command, frozen=True, kw_only=True):
    policy: GovernancePolicy
    comment: str = ""


class ClearModelPolicy(Command, frozen=True, kw_only=True):
    """``registry_policy``: the default the model falls back to (its stages are checked)."""

    comment: str = ""
    registry_policy: GovernancePolicy = DEFAULT_POLICY


# --- versions ---------------------------------------------------------------------------


class RegisterVersion(Command, frozen=True, kw_only=True):
    """The number is assigned by ``decide``: the highest ever registered plus one; the
    version starts in the initial stage of the policy in force (``registry_policy`` unless
    the model has its own)."""

    content: VersionContent
    description: str = ""
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    registry_policy: GovernancePolicy = DEFAULT_POLICY


class UpdateVersionDescription(Command, frozen=True, kw_only=True):
    version: int
    description: str


class SetVersionTags(Command, frozen=True, kw_only=True):
    version: int
    tags: dict[str, str]


class RemoveVersionTags(Command, frozen=True, kw_only=True):
    version: int
    keys: tuple[str, ...]


class DeprecateVersion(Command, frozen=True, kw_only=True):
    version: int
    reason: str


class RestoreVersion(Command, frozen=True, kw_only=True):
    """Brings an archived version (in a terminal stage, or in one the policy no longer
    defines) back to the policy's initial stage; only an admin may."""

    version: int
    reason: str
    actor_is_admin: bool = False
    registry_policy: GovernancePolicy = DEFAULT_POLICY


# --- commands the governance policy judges ----------------------------------------------


class GovernedCommand(Command, frozen=True, kw_only=True):
    registry_policy: GovernancePolicy


class TransitionStage(GovernedCommand, frozen=True, kw_only=True):
    """A direct move: allowed only when the policy's transition needs no approval.

    ``archive_existing`` (MLflow's ``archive_existing_versions``, staging or production
    only) also archives the other versions in ``to_stage``, in the same decision; with the
    version already there, that is all it does.
    """

    version: int
    to_stage: StageName
    comment: str = ""
    metrics: Metrics = msgspec.field(default_factory=_metrics)
    archive_existing: bool = False
    environment: str | None = None


class ArchiveVersion(GovernedCommand, frozen=True, kw_only=True):
    """``TransitionStage`` to ``archived`` with a mandatory reason."""

    version: int
    reason: str


class Rollback(GovernedCommand, frozen=True, kw_only=True):
    """Re-promote the version that was in production before the current one."""

    reason: str


class SetAlias(GovernedCommand, frozen=True, kw_only=True):
    alias: str
    version: int
    comment: str = ""


class RemoveAlias(GovernedCommand, frozen=True, kw_only=True):
    alias: str
    comment: str = ""


class RequestPromotion(GovernedCommand, frozen=True, kw_only=True):
    """Ask for a stage and/or an alias for a version; ``rollback=True`` asks for the rollback."""

    request_id: str
    version: int
    justification: str
    target_stage: StageName | None = None
    alias: str | None = None
    rollback: bool = False
    metrics: Metrics = msgspec.field(default_factory=_metrics)
    environment: str | None = None


class ApprovePromotion(GovernedCommand, frozen=True, kw_only=True):
    """May execute the promotion: then the policy and gates are re-checked with ``metrics``."""

    request_id: str
    comment: str = ""
    metrics: Metrics = msgspec.field(default_factory=_metrics)
    actor_aliases: tuple[str, ...] = ()  # events.base.acted_as


class RejectPromotion(Command, frozen=True, kw_only=True):
    request_id: str
    comment: str


class CancelPromotion(Command, frozen=True, kw_only=True):
    request_id: str
    comment: str = ""
    actor_is_admin: bool = False
    actor_aliases: tuple[str, ...] = ()  # events.base.acted_as


class ExpirePromotion(Command, frozen=True, kw_only=True):
    """Records the expiry of a pending request once ``now`` has reached ``expires_at``."""

    request_id: str


# --- deployments (sent by deployment systems) -------------------------------------------


class StartDeployment(Command, frozen=True, kw_only=True):
    deployment_id: str
    version: int
    environment: str
    target: str
    desired_stage: StageName | None = None
    desired_alias: str | None = None
    comment: str = ""
    # The desired stage must be one the policy in force defines.
    registry_policy: GovernancePolicy = DEFAULT_POLICY


class ReportDeploymentSucceeded(Command, frozen=True, kw_only=True):
    deployment_id: str
    comment: str = ""


class ReportDeploymentFailed(Command, frozen=True, kw_only=True):
    deployment_id: str
    reason: str


class ReportDeploymentRolledBack(Command, frozen=True, kw_only=True):
    deployment_id: str
    reason: str


ModelCommand = (
    RegisterModel
    | UpdateModelDescription
    | SetModelTags
    | RemoveModelTags
    | RenameModel
    | ArchiveModel
    | RestoreModel
    | DeleteModel
    | SetModelPolicy
    | ClearModelPolicy
    | RegisterVersion
    | UpdateVersionDescription
    | SetVersionTags
    | RemoveVersionTags
    | DeprecateVersion
    | RestoreVersion
    | TransitionStage
    | ArchiveVersion
    | Rollback
    | SetAlias
    | RemoveAlias
    | RequestPromotion
    | ApprovePromotion
    | RejectPromotion
    | CancelPromotion
    | ExpirePromotion
    | StartDeployment
    | ReportDeploymentSucceeded
    | ReportDeploymentFailed
    | ReportDeploymentRolledBack
)
