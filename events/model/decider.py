"""The ``model:{model_id}`` stream's decider: ``decide``, ``evolve``, ``initial_state``. Pure.

    state = MODEL.fold(history)                 # or a cached state + the new events
    new_events = decide(command, state)         # or a DomainError; never mutates state

The rules live in one module per concern: ``model_registration`` (model and version
metadata), ``model_lifecycle`` (stages, aliases, rollback), ``model_promotions``
(requests and approvals), ``model_deployments`` (what runs where). Commands are in
``model_commands``, events in ``model_events``, state and ``evolve`` in ``model_state``.
"""

from __future__ import annotations

from typing import assert_never

from events.base import Decider
from events.model.commands import (
    ApprovePromotion,
    ArchiveModel,
    ArchiveVersion,
    CancelPromotion,
    ClearModelPolicy,
    DeprecateVersion,
    ExpirePromotion,
    ModelCommand,
    RegisterModel,
    RegisterVersion,
    RejectPromotion,
    RemoveAlias,
    RemoveModelTags,
    RemoveVersionTags,
    RenameModel,
    ReportDeploymentFailed,
    ReportDeploymentRolledBack,
    ReportDeploymentSucceeded,
    RequestPromotion,
    RestoreModel,
    RestoreVersion,
    Rollback,
    SetAlias,
    SetModelPolicy,
    SetModelTags,
    SetVersionTags,
    StartDeployment,
    TransitionStage,
    UpdateModelDescription,
    UpdateVersionDescription,
)
from events.model.deployments import (
    report_failed,
    report_rolled_back,
    report_succeeded,
    start_deployment,
)
from events.model.events import ModelEvent
from events.model.lifecycle import (
    archive_version,
    remove_alias,
    restore_version,
    roll_back_production,
    set_alias,
    transition_stage,
)
from events.model.promotions import (
    approve_promotion,
    cancel_promotion,
    expire_promotion,
    reject_promotion,
    request_promotion,
)
from events.model.registration import (
    archive_model,
    clear_model_policy,
    deprecate_version,
    register_model,
    register_version,
    remove_model_tags,
    remove_version_tags,
    rename_model,
    restore_model,
    set_model_policy,
    set_model_tags,
    set_version_tags,
    update_model_description,
    update_version_description,
)
from events.model.state import ModelState, evolve, initial_state
from events.names import validate_actor
from events.streams import MODEL_TYPE

STREAM_TYPE = MODEL_TYPE


def decide(command: ModelCommand, state: ModelState) -> list[ModelEvent]:
    """The events ``command`` causes on ``state``, or a ``DomainError``. Pure and deterministic."""
    validate_actor(command.actor)
    match command:
        case RegisterModel():
            return register_model(command, state)
        case UpdateModelDescription():
            return update_model_description(command, state)
        case SetModelTags():
            return set_model_tags(command, state)
        case RemoveModelTags():
            return remove_model_tags(command, state)
        case RenameModel():
            return rename_model(command, state)
        case ArchiveModel():
            return archive_model(command, state)
        case RestoreModel():
            return restore_model(command, state)
        case SetModelPolicy():
            return set_model_policy(command, state)
        case ClearModelPolicy():
            return clear_model_policy(command, state)
        case RegisterVersion():
            return register_version(command, state)
        case UpdateVersionDescription():
            return update_version_description(command, state)
        case SetVersionTags():
            return set_version_tags(command, state)
        case RemoveVersionTags():
            return remove_version_tags(command, state)
        case DeprecateVersion():
            return deprecate_version(command, state)
        case RestoreVersion():
            return restore_version(command, state)
        case TransitionStage():
            return transition_stage(command, state)
        case ArchiveVersion():
            return archive_version(command, state)
        case Rollback():
            return roll_back_production(command, state)
        case SetAlias():
            return set_alias(command, state)
        case RemoveAlias():
            return remove_alias(command, state)
        case RequestPromotion():
            return request_promotion(command, state)
        case ApprovePromotion():
            return approve_promotion(command, state)
        case RejectPromotion():
            return reject_promotion(command, state)
        case CancelPromotion():
            return cancel_promotion(command, state)
        case ExpirePromotion():
            return expire_promotion(command, state)
        case StartDeployment():
            return start_deployment(command, state)
        case ReportDeploymentSucceeded():
            return report_succeeded(command, state)
        case ReportDeploymentFailed():
            return report_failed(command, state)
        case ReportDeploymentRolledBack():
            return report_rolled_back(command, state)
        case _:
            assert_never(command)


MODEL: Decider[ModelState, ModelCommand, ModelEvent] = Decider(
    stream_type=STREAM_TYPE,
    initial_state=initial_state,
    evolve=evolve,
    decide=decide,
    state_type=ModelState,
)
