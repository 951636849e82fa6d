"""How each event of the ``model:{model_id}`` stream changes its state: ``evolve``. Pure.

One small function per event type, found by the event's exact type in
``EVOLVE_BY_EVENT`` (a test checks that every ``ModelEvent`` has one). States are frozen
Structs: every step builds new containers and never mutates the state it was given.
A change of meaning here must bump the decider's ``snapshot_version``, so snapshots folded
by older code are ignored rather than trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgspec
from msgspec.structs import replace

from events.base import Event
from events.model.events import (
    AliasRemoved,
    AliasSet,
    DeploymentFailed,
    DeploymentRolledBack,
    DeploymentStarted,
    DeploymentSucceeded,
    ModelArchived,
    ModelDeleted,
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
from events.model.state import (
    DeploymentState,
    DeploymentStatus,
    ModelState,
    RequestState,
    RequestStatus,
    VersionState,
)
from events.stages import Stage

E = TypeVar("E", bound=Event)
Step = Callable[[ModelState, Any], ModelState]


def evolve(state: ModelState, event: ModelEvent) -> ModelState:
    """Fold one event. Total over histories ``decide`` produced; never mutates ``state``."""
    step = EVOLVE_BY_EVENT.get(type(event))
    if step is None:
        raise TypeError(f"{type(event).__name__} is not an event of the model stream")
    return step(state, event)


# --- the registered model -------------------------------------------------------------


def _model_registered(state: ModelState, event: ModelRegistered) -> ModelState:
    return replace(
        state,
        model_id=event.model_id,
        name=event.name,
        registered=True,
        description=event.description,
        tags=dict(event.tags),
        owner=event.owner,
    )


def _model_description_updated(state: ModelState, event: ModelDescriptionUpdated) -> ModelState:
    return replace(state, description=event.description)


def _model_tags_set(state: ModelState, event: ModelTagsSet) -> ModelState:
    return replace(state, tags={**state.tags, **event.tags})


def _model_tags_removed(state: ModelState, event: ModelTagsRemoved) -> ModelState:
    return replace(state, tags={k: v for k, v in state.tags.items() if k not in event.keys})


def _model_renamed(state: ModelState, event: ModelRenamed) -> ModelState:
    return replace(state, name=event.new_name)


def _model_archived(state: ModelState, event: ModelArchived) -> ModelState:
    return replace(state, archived=True)


def _model_deleted(state: ModelState, event: ModelDeleted) -> ModelState:
    return replace(state, deleted=True)


def _model_restored(state: ModelState, event: ModelRestored) -> ModelState:
    return replace(state, archived=False)


def _model_policy_set(state: ModelState, event: ModelPolicySet) -> ModelState:
    return replace(state, policy=event.policy)


def _model_policy_cleared(state: ModelState, event: ModelPolicyCleared) -> ModelState:
    return replace(state, policy=None)


# --- versions ---------------------------------------------------------------------------


def _with_version(state: ModelState, version: VersionState) -> ModelState:
    return replace(state, versions=state.versions.with_version(version))


def _without(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    return tuple(x for x in items if x != item)


def _version_registered(state: ModelState, event: VersionRegistered) -> ModelState:
    version = VersionState(
        number=event.version,
        content=event.content,
        content_digest=event.content_digest,
        registered_by=event.registered_by,
        description=event.description,
        tags=dict(event.tags),
        stage=event.initial_stage(),
    )
    return replace(
        _with_version(state, version), last_version=max(state.last_version, event.version)
    )


def _version_description_updated(state: ModelState, event: VersionDescriptionUpdated) -> ModelState:
    return _with_version(
        state, replace(state.version(event.version), description=event.description)
    )


def _version_tags_set(state: ModelState, event: VersionTagsSet) -> ModelState:
    old = state.version(event.version)
    return _with_version(state, replace(old, tags={**old.tags, **event.tags}))


def _version_tags_removed(state: ModelState, event: VersionTagsRemoved) -> ModelState:
    old = state.version(event.version)
    tags = {k: v for k, v in old.tags.items() if k not in event.keys}
    return _with_version(state, replace(old, tags=tags))


def _version_deprecated(state: ModelState, event: VersionDeprecated) -> ModelState:
    old = state.version(event.version)
    return _with_version(state, replace(old, deprecated=True, deprecation_reason=event.reason))


# --- stages and aliases -----------------------------------------------------------------


def _placed(version: VersionState, event: StageTransitioned) -> VersionState:
    entered, left = event.entered_environment(), event.left_environment()
    if event.from_stage != event.to_stage or version.stage != event.to_stage:
        placed = msgspec.UNSET if entered is None else (entered,)
        return replace(version, stage=event.to_stage, environments=placed)
    environments = {*version.environment_names(), *(() if entered is None else (entered,))}
    environments.discard(left or "")
    return replace(version, environments=tuple(sorted(environments)) or msgspec.UNSET)


def _stage_transitioned(state: ModelState, event: StageTransitioned) -> ModelState:
    state = _with_version(state, _placed(state.version(event.version), event))
    if event.from_stage == event.to_stage and event.entered_environment() is None:
        # It left one environment and stays in the stage in the others.
        return state
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
        # Still in production elsewhere: with environments, another version may hold it.
        remaining = state.in_stage(Stage.PRODUCTION)
        return replace(state, production=remaining[-1] if remaining else None)
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


# --- promotion requests -----------------------------------------------------------------


def _request(state: ModelState, request_id: str, **changes: object) -> ModelState:
    updated = replace(state.requests[request_id], **changes)
    return replace(state, requests={**state.requests, request_id: updated})


def _promotion_requested(state: ModelState, event: PromotionRequested) -> ModelState:
    request = RequestState(
        request_id=event.request_id,
        version=event.version,
        target_stage=event.target_stage,
        alias=event.alias,
        justification=event.justification,
        requested_by=event.requested_by,
        expires_at=event.expires_at,
        rollback=event.rollback,
        environment=event.environment,
    )
    return replace(state, requests={**state.requests, event.request_id: request})


def _promotion_approved(state: ModelState, event: PromotionApproved) -> ModelState:
    approvals = (*state.requests[event.request_id].approvals, event.approved_by)
    return _request(state, event.request_id, approvals=approvals)


def _promotion_rejected(state: ModelState, event: PromotionRejected) -> ModelState:
    return _request(state, event.request_id, status=RequestStatus.REJECTED)


def _promotion_cancelled(state: ModelState, event: PromotionCancelled) -> ModelState:
    return _request(state, event.request_id, status=RequestStatus.CANCELLED)


def _promotion_expired(state: ModelState, event: PromotionExpired) -> ModelState:
    return _request(state, event.request_id, status=RequestStatus.EXPIRED)


def _promotion_executed(state: ModelState, event: PromotionExecuted) -> ModelState:
    return _request(state, event.request_id, status=RequestStatus.EXECUTED)


# --- deployments ------------------------------------------------------------------------


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


def _deployment_started(state: ModelState, event: DeploymentStarted) -> ModelState:
    deployment = DeploymentState(
        deployment_id=event.deployment_id,
        version=event.version,
        environment=event.environment,
        target=event.target,
        desired_stage=event.desired_stage,
        desired_alias=event.desired_alias,
    )
    return replace(state, deployments={**state.deployments, event.deployment_id: deployment})


def _deployment_succeeded(state: ModelState, event: DeploymentSucceeded) -> ModelState:
    started = state.deployments[event.deployment_id]
    state = _deployment(
        state,
        event.deployment_id,
        status=DeploymentStatus.SUCCEEDED,
        replaced_deployment_id=event.replaced_deployment_id,
    )
    return _set_live(state, started.environment, started.target, event.deployment_id)


def _deployment_failed(state: ModelState, event: DeploymentFailed) -> ModelState:
    return _deployment(state, event.deployment_id, status=DeploymentStatus.FAILED)


def _deployment_rolled_back(state: ModelState, event: DeploymentRolledBack) -> ModelState:
    deployment = state.deployments[event.deployment_id]
    state = _deployment(state, event.deployment_id, status=DeploymentStatus.ROLLED_BACK)
    # Only a live deployment hands its place back; one that never went live, or was
    # replaced since, leaves the place as it is.
    if state.live.get(deployment.environment, {}).get(deployment.target) == event.deployment_id:
        state = _set_live(
            state, deployment.environment, deployment.target, event.restored_deployment_id
        )
    return state


# --- the table ----------------------------------------------------------------------------


def _on(
    event_type: type[E], step: Callable[[ModelState, E], ModelState]
) -> tuple[type[Event], Step]:
    """One row of ``EVOLVE_BY_EVENT``; mypy checks that ``step`` takes ``event_type``."""
    return event_type, step


EVOLVE_BY_EVENT: Mapping[type[Event], Step] = dict(
    (
        _on(ModelRegistered, _model_registered),
        _on(ModelDescriptionUpdated, _model_description_updated),
        _on(ModelTagsSet, _model_tags_set),
        _on(ModelTagsRemoved, _model_tags_removed),
        _on(ModelRenamed, _model_renamed),
        _on(ModelArchived, _model_archived),
        _on(ModelRestored, _model_restored),
        _on(ModelDeleted, _model_deleted),
        _on(ModelPolicySet, _model_policy_set),
        _on(ModelPolicyCleared, _model_policy_cleared),
        _on(VersionRegistered, _version_registered),
        _on(VersionDescriptionUpdated, _version_description_updated),
        _on(VersionTagsSet, _version_tags_set),
        _on(VersionTagsRemoved, _version_tags_removed),
        _on(VersionDeprecated, _version_deprecated),
        _on(StageTransitioned, _stage_transitioned),
        _on(AliasSet, _alias_set),
        _on(AliasRemoved, _alias_removed),
        _on(PromotionRequested, _promotion_requested),
        _on(PromotionApproved, _promotion_approved),
        _on(PromotionRejected, _promotion_rejected),
        _on(PromotionCancelled, _promotion_cancelled),
        _on(PromotionExpired, _promotion_expired),
        _on(PromotionExecuted, _promotion_executed),
        _on(DeploymentStarted, _deployment_started),
        _on(DeploymentSucceeded, _deployment_succeeded),
        _on(DeploymentFailed, _deployment_failed),
        _on(DeploymentRolledBack, _deployment_rolled_back),
    )
)
