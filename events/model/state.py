"""The state of one ``model:{model_id}`` stream and the fold that builds it. Pure.

State is a tree of frozen msgspec Structs, so the shell can snapshot it with msgspec and
fold only the events after the snapshot. It keeps the indexes the rules need (current and
previous production version, alias -> version, version -> aliases, live deployment per
environment and target) so no decision scans the history.
"""

from __future__ import annotations

import enum
from typing import assert_never

import msgspec
from msgspec.structs import replace

from events.base import UtcDateTime
from events.errors import NotFoundError
from events.model.events import (
    AliasRemoved,
    AliasSet,
    DeploymentFailed,
    DeploymentRolledBack,
    DeploymentStarted,
    DeploymentSucceeded,
    ModelArchived,
    ModelDescriptionUpdated,
    ModelEvent,
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
from events.policy import GovernancePolicy
from events.stages import INITIAL_STAGE, Stage
from events.version_content import VersionContent


class VersionState(msgspec.Struct, frozen=True, kw_only=True):
    number: int
    content: VersionContent
    content_digest: str
    registered_by: str
    stage: Stage = INITIAL_STAGE
    description: str = ""
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    deprecated: bool = False
    deprecation_reason: str = ""
    aliases: tuple[str, ...] = ()


class RequestStatus(enum.StrEnum):
    PENDING = "pending"
    EXECUTED = "executed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class RequestState(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    version: int
    target_stage: Stage | None
    alias: str | None
    justification: str
    requested_by: str
    expires_at: UtcDateTime
    rollback: bool = False
    status: RequestStatus = RequestStatus.PENDING
    approvals: tuple[str, ...] = ()


class DeploymentStatus(enum.StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class DeploymentState(msgspec.Struct, frozen=True, kw_only=True):
    deployment_id: str
    version: int
    environment: str
    target: str
    desired_stage: Stage | None = None
    desired_alias: str | None = None
    status: DeploymentStatus = DeploymentStatus.STARTED
    replaced_deployment_id: str | None = None


class ModelState(msgspec.Struct, frozen=True, kw_only=True):
    """``registered`` is False for an empty stream; ``policy`` None means the registry default.

    ``last_production`` is the version that most recently entered production and
    ``previous_production`` the one that was there before it: together they answer
    "rollback to what?" in O(1).
    """

    model_id: str = ""
    name: str = ""
    registered: bool = False
    archived: bool = False
    description: str = ""
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    owner: str = ""
    policy: GovernancePolicy | None = None
    versions: dict[int, VersionState] = msgspec.field(default_factory=dict)
    last_version: int = 0
    production: int | None = None
    last_production: int | None = None
    previous_production: int | None = None
    aliases: dict[str, int] = msgspec.field(default_factory=dict)
    requests: dict[str, RequestState] = msgspec.field(default_factory=dict)
    deployments: dict[str, DeploymentState] = msgspec.field(default_factory=dict)
    live: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)

    def effective_policy(self, registry_policy: GovernancePolicy) -> GovernancePolicy:
        return self.policy if self.policy is not None else registry_policy

    def version(self, number: int) -> VersionState:
        found = self.versions.get(number)
        if found is None:
            raise NotFoundError(f"model {self.name!r} has no version {number}", version=number)
        return found

    def rollback_target(self) -> int | None:
        """The version that was in production before the current one (or the last one, if none is)."""
        return self.last_production if self.production is None else self.previous_production


def initial_state() -> ModelState:
    return ModelState()


def _with_version(state: ModelState, version: VersionState) -> ModelState:
    return replace(state, versions={**state.versions, version.number: version})


def _without(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    return tuple(x for x in items if x != item)


def _transition(state: ModelState, event: StageTransitioned) -> ModelState:
    state = _with_version(state, replace(state.version(event.version), stage=event.to_stage))
    if event.to_stage == Stage.PRODUCTION:
        previous = state.previous_production
        if state.last_production != event.version:
            previous = state.last_production
        return replace(
            state,
            production=event.version,
            last_production=event.version,
            previous_production=previous,
        )
    if state.production == event.version:
        return replace(state, production=None)
    return state


def _alias_set(state: ModelState, event: AliasSet) -> ModelState:
    if event.previous_version is not None and event.previous_version in state.versions:
        old = state.versions[event.previous_version]
        state = _with_version(state, replace(old, aliases=_without(old.aliases, event.alias)))
    new = state.version(event.version)
    state = _with_version(
        state, replace(new, aliases=(*_without(new.aliases, event.alias), event.alias))
    )
    return replace(state, aliases={**state.aliases, event.alias: event.version})


def _alias_removed(state: ModelState, event: AliasRemoved) -> ModelState:
    old = state.version(event.version)
    state = _with_version(state, replace(old, aliases=_without(old.aliases, event.alias)))
    aliases = dict(state.aliases)
    aliases.pop(event.alias, None)
    return replace(state, aliases=aliases)


def _request(state: ModelState, request_id: str, **changes: object) -> ModelState:
    updated = replace(state.requests[request_id], **changes)
    return replace(state, requests={**state.requests, request_id: updated})


def _deployment(state: ModelState, deployment_id: str, **changes: object) -> ModelState:
    updated = replace(state.deployments[deployment_id], **changes)
    return replace(state, deployments={**state.deployments, deployment_id: updated})


def _set_live(
    state: ModelState, environment: str, target: str, deployment_id: str | None
) -> ModelState:
    targets = dict(state.live.get(environment, {}))
    if deployment_id is None:
        targets.pop(target, None)
    else:
        targets[target] = deployment_id
    live = {**state.live, environment: targets}
    if not targets:
        del live[environment]
    return replace(state, live=live)


def evolve(state: ModelState, event: ModelEvent) -> ModelState:
    """Fold one event. Total over histories ``decide`` produced; never mutates ``state``."""
    match event:
        case ModelRegistered():
            return replace(
                state,
                model_id=event.model_id,
                name=event.name,
                registered=True,
                description=event.description,
                tags=dict(event.tags),
                owner=event.owner,
            )
        case ModelDescriptionUpdated():
            return replace(state, description=event.description)
        case ModelTagsSet():
            return replace(state, tags={**state.tags, **event.tags})
        case ModelTagsRemoved():
            return replace(state, tags={k: v for k, v in state.tags.items() if k not in event.keys})
        case ModelRenamed():
            return replace(state, name=event.new_name)
        case ModelArchived():
            return replace(state, archived=True)
        case ModelRestored():
            return replace(state, archived=False)
        case ModelPolicySet():
            return replace(state, policy=event.policy)
        case ModelPolicyCleared():
            return replace(state, policy=None)
        case VersionRegistered():
            version = VersionState(
                number=event.version,
                content=event.content,
                content_digest=event.content_digest,
                registered_by=event.registered_by,
                description=event.description,
                tags=dict(event.tags),
            )
            return replace(
                _with_version(state, version), last_version=max(state.last_version, event.version)
            )
        case VersionDescriptionUpdated():
            return _with_version(
                state, replace(state.version(event.version), description=event.description)
            )
        case VersionTagsSet():
            old = state.version(event.version)
            return _with_version(state, replace(old, tags={**old.tags, **event.tags}))
        case VersionTagsRemoved():
            old = state.version(event.version)
            tags = {k: v for k, v in old.tags.items() if k not in event.keys}
            return _with_version(state, replace(old, tags=tags))
        case VersionDeprecated():
            old = state.version(event.version)
            return _with_version(
                state, replace(old, deprecated=True, deprecation_reason=event.reason)
            )
        case StageTransitioned():
            return _transition(state, event)
        case AliasSet():
            return _alias_set(state, event)
        case AliasRemoved():
            return _alias_removed(state, event)
        case PromotionRequested():
            request = RequestState(
                request_id=event.request_id,
                version=event.version,
                target_stage=event.target_stage,
                alias=event.alias,
                justification=event.justification,
                requested_by=event.requested_by,
                expires_at=event.expires_at,
                rollback=event.rollback,
            )
            return replace(state, requests={**state.requests, event.request_id: request})
        case PromotionApproved():
            approvals = (*state.requests[event.request_id].approvals, event.approved_by)
            return _request(state, event.request_id, approvals=approvals)
        case PromotionRejected():
            return _request(state, event.request_id, status=RequestStatus.REJECTED)
        case PromotionCancelled():
            return _request(state, event.request_id, status=RequestStatus.CANCELLED)
        case PromotionExpired():
            return _request(state, event.request_id, status=RequestStatus.EXPIRED)
        case PromotionExecuted():
            return _request(state, event.request_id, status=RequestStatus.EXECUTED)
        case DeploymentStarted():
            deployment = DeploymentState(
                deployment_id=event.deployment_id,
                version=event.version,
                environment=event.environment,
                target=event.target,
                desired_stage=event.desired_stage,
                desired_alias=event.desired_alias,
            )
            return replace(
                state, deployments={**state.deployments, event.deployment_id: deployment}
            )
        case DeploymentSucceeded():
            started = state.deployments[event.deployment_id]
            state = _deployment(
                state,
                event.deployment_id,
                status=DeploymentStatus.SUCCEEDED,
                replaced_deployment_id=event.replaced_deployment_id,
            )
            return _set_live(state, started.environment, started.target, event.deployment_id)
        case DeploymentFailed():
            return _deployment(state, event.deployment_id, status=DeploymentStatus.FAILED)
        case DeploymentRolledBack():
            deployment = state.deployments[event.deployment_id]
            state = _deployment(state, event.deployment_id, status=DeploymentStatus.ROLLED_BACK)
            if (
                state.live.get(deployment.environment, {}).get(deployment.target)
                == event.deployment_id
            ):
                state = _set_live(
                    state, deployment.environment, deployment.target, event.restored_deployment_id
                )
            return state
        case _:
            assert_never(event)
