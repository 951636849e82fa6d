"""The events of the ``model:{model_id}`` stream. Pure.

One stream holds a registered model, its versions, stages, aliases, promotion requests,
deployments and its own governance policy, so every cross-version rule ("one version in
production", "an alias points at a live version") is decided under one expected version.

Who acted and when is in the envelope (``actor``, ``occurred_at``); the data repeats the
actor only where a later rule needs it (``registered_by``, ``requested_by``,
``approved_by``: separation of duties) because ``evolve`` sees only the data. Event types
are permanent: change a shape only with a new ``schema_version`` and an upcaster.
"""

from __future__ import annotations

import enum
from typing import ClassVar

import msgspec

from events.base import Event, UtcDateTime
from events.policy import GateResult, GovernancePolicy
from events.stages import INITIAL_STAGE, StageName, TransitionKind
from events.version_content import VersionContent

# --- the registered model -------------------------------------------------------------


class ModelRegistered(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.registered"
    model_id: str
    name: str
    description: str
    tags: dict[str, str]
    owner: str


class ModelDescriptionUpdated(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.description_updated"
    description: str


class ModelTagsSet(Event, frozen=True, kw_only=True):
    """Adds or overwrites the given tags; others stay."""

    event_type: ClassVar[str] = "model.tags_set"
    tags: dict[str, str]


class ModelTagsRemoved(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.tags_removed"
    keys: tuple[str, ...]


class ModelRenamed(Event, frozen=True, kw_only=True):
    """The shell moves the unique name -> id mapping in the same transaction."""

    event_type: ClassVar[str] = "model.renamed"
    old_name: str
    new_name: str


class ModelArchived(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.archived"
    reason: str


class ModelDeleted(Event, frozen=True, kw_only=True):
    """The tombstone: the model leaves every view, search and listing, and its name is free
    for a new model. Its history stays in the log (audit, replay, ``as_of``), and the
    stream accepts nothing more."""

    event_type: ClassVar[str] = "model.deleted"
    name: str
    reason: str


class ModelRestored(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.restored"
    reason: str


class ModelPolicySet(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.policy_set"
    policy: GovernancePolicy
    comment: str


class ModelPolicyCleared(Event, frozen=True, kw_only=True):
    """The model falls back to the registry-wide default policy."""

    event_type: ClassVar[str] = "model.policy_cleared"
    comment: str


# --- versions ---------------------------------------------------------------------------


class VersionRegistered(Event, frozen=True, kw_only=True):
    """A new version, in the policy's initial stage; ``content`` never changes after this event.

    ``stage`` is left out (unset) when that is ``development``, so events recorded before
    custom stages and events under the default policy have the same bytes.
    """

    event_type: ClassVar[str] = "model.version_registered"
    version: int
    content: VersionContent
    content_digest: str
    registered_by: str
    description: str
    tags: dict[str, str]
    stage: StageName | msgspec.UnsetType = msgspec.UNSET

    def initial_stage(self) -> StageName:
        return INITIAL_STAGE if isinstance(self.stage, msgspec.UnsetType) else self.stage


class VersionDescriptionUpdated(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.version_description_updated"
    version: int
    description: str


class VersionTagsSet(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.version_tags_set"
    version: int
    tags: dict[str, str]


class VersionTagsRemoved(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.version_tags_removed"
    version: int
    keys: tuple[str, ...]


class VersionDeprecated(Event, frozen=True, kw_only=True):
    """Flags a version as not to be used; it can no longer be promoted or aliased."""

    event_type: ClassVar[str] = "model.version_deprecated"
    version: int
    reason: str


# --- stages and aliases -----------------------------------------------------------------


class StageTransitioned(Event, frozen=True, kw_only=True):
    """The version moves from ``from_stage`` to ``to_stage``.

    For a stage with environments (both fields are left out, unset, otherwise, so events
    recorded before environments keep their bytes):

    * ``environment`` is the environment of ``to_stage`` the version enters; entering a
      new stage leaves every environment of the old one;
    * ``from_environment`` is the environment of ``from_stage`` it leaves. With
      ``from_stage == to_stage`` the version stays in the stage in its other environments
      (another version took its place there, or it is added to one more environment).
    """

    event_type: ClassVar[str] = "model.stage_transitioned"
    version: int
    from_stage: StageName
    to_stage: StageName
    kind: TransitionKind
    comment: str
    request_id: str | None = None
    environment: str | msgspec.UnsetType = msgspec.UNSET
    from_environment: str | msgspec.UnsetType = msgspec.UNSET

    def entered_environment(self) -> str | None:
        return None if isinstance(self.environment, msgspec.UnsetType) else self.environment

    def left_environment(self) -> str | None:
        return (
            None if isinstance(self.from_environment, msgspec.UnsetType) else self.from_environment
        )


class AliasRemovalCause(enum.StrEnum):
    REMOVED = "removed"  # a RemoveAlias command
    VERSION_ARCHIVED = "version_archived"  # its version was archived in the same decision


class AliasSet(Event, frozen=True, kw_only=True):
    """Points ``alias`` at ``version``; ``previous_version`` is the target it moved from."""

    event_type: ClassVar[str] = "model.alias_set"
    alias: str
    version: int
    previous_version: int | None
    comment: str
    request_id: str | None = None


class AliasRemoved(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.alias_removed"
    alias: str
    version: int
    cause: AliasRemovalCause
    comment: str
    request_id: str | None = None


# --- promotion requests -----------------------------------------------------------------


class PromotionRequested(Event, frozen=True, kw_only=True):
    """``approvals_required`` is what the policy asked at request time (for display);
    execution re-evaluates the policy in force at the final approval."""

    event_type: ClassVar[str] = "model.promotion_requested"
    request_id: str
    version: int
    target_stage: StageName | None
    alias: str | None
    justification: str
    requested_by: str
    expires_at: UtcDateTime
    approvals_required: int
    rollback: bool = False
    # The environment of ``target_stage`` (stages with environments only; unset otherwise).
    environment: str | msgspec.UnsetType = msgspec.UNSET


class PromotionApproved(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.promotion_approved"
    request_id: str
    approved_by: str
    comment: str


class PromotionRejected(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.promotion_rejected"
    request_id: str
    rejected_by: str
    comment: str


class PromotionCancelled(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.promotion_cancelled"
    request_id: str
    cancelled_by: str
    comment: str


class PromotionExpired(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.promotion_expired"
    request_id: str


class PromotionExecuted(Event, frozen=True, kw_only=True):
    """The policy was satisfied; the stage/alias events follow in the same append.

    Records the evidence: the eligible approvers, the policy rules that applied and
    every metric gate with the values it saw.
    """

    event_type: ClassVar[str] = "model.promotion_executed"
    request_id: str
    version: int
    from_stage: StageName
    target_stage: StageName | None
    alias: str | None
    approved_by: tuple[str, ...]
    approvals_required: int
    rules: tuple[str, ...]
    gate_results: tuple[GateResult, ...]
    environment: str | msgspec.UnsetType = msgspec.UNSET


# --- deployments (reported by deployment systems) ---------------------------------------


class DeploymentStarted(Event, frozen=True, kw_only=True):
    """``desired_stage``/``desired_alias`` name what the deployment system follows."""

    event_type: ClassVar[str] = "model.deployment_started"
    deployment_id: str
    version: int
    environment: str
    target: str
    desired_stage: StageName | None = None
    desired_alias: str | None = None
    comment: str = ""


class DeploymentSucceeded(Event, frozen=True, kw_only=True):
    """The version now serves at (environment, target), replacing ``replaced_deployment_id``."""

    event_type: ClassVar[str] = "model.deployment_succeeded"
    deployment_id: str
    replaced_deployment_id: str | None
    comment: str = ""


class DeploymentFailed(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "model.deployment_failed"
    deployment_id: str
    reason: str


class DeploymentRolledBack(Event, frozen=True, kw_only=True):
    """The deployment was undone; ``restored_deployment_id`` serves again (None: nothing)."""

    event_type: ClassVar[str] = "model.deployment_rolled_back"
    deployment_id: str
    restored_deployment_id: str | None
    reason: str


ModelEvent = (
    ModelRegistered
    | ModelDescriptionUpdated
    | ModelTagsSet
    | ModelTagsRemoved
    | ModelRenamed
    | ModelArchived
    | ModelRestored
    | ModelDeleted
    | ModelPolicySet
    | ModelPolicyCleared
    | VersionRegistered
    | VersionDescriptionUpdated
    | VersionTagsSet
    | VersionTagsRemoved
    | VersionDeprecated
    | StageTransitioned
    | AliasSet
    | AliasRemoved
    | PromotionRequested
    | PromotionApproved
    | PromotionRejected
    | PromotionCancelled
    | PromotionExpired
    | PromotionExecuted
    | DeploymentStarted
    | DeploymentSucceeded
    | DeploymentFailed
    | DeploymentRolledBack
)

MODEL_EVENT_TYPES: tuple[type[Event], ...] = (
    ModelRegistered, ModelDescriptionUpdated, ModelTagsSet, ModelTagsRemoved, ModelRenamed,
    ModelArchived, ModelRestored, ModelPolicySet, ModelPolicyCleared, ModelDeleted,
    VersionRegistered, VersionDescriptionUpdated, VersionTagsSet, VersionTagsRemoved,
    VersionDeprecated, StageTransitioned, AliasSet, AliasRemoved,
    PromotionRequested, PromotionApproved, PromotionRejected, PromotionCancelled,
    PromotionExpired, PromotionExecuted,
    DeploymentStarted, DeploymentSucceeded, DeploymentFailed, DeploymentRolledBack,
)  # fmt: skip
