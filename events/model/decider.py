"""The ``model:{model_id}`` stream's decider, ``MODEL``: ``decide``, ``evolve``. Pure.

    state = MODEL.fold(history)                 # or a cached state + the new events
    new_events = decide(command, state)         # or a DomainError; never mutates state

``decide`` checks the actor and hands the command to its decision function, found by the
command's exact type in ``DECIDE_BY_COMMAND`` (a test checks that every ``ModelCommand``
has one). The decisions live in one module per concern: ``registration`` (the model and
its versions' metadata), ``lifecycle`` (stages, aliases, rollback), ``promotions``
(requests and approvals) and ``deployments`` (what runs where).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from events.base import Command, Decider
from events.model.commands import (
    ApprovePromotion,
    ArchiveModel,
    ArchiveVersion,
    CancelPromotion,
    ClearModelPolicy,
    DeleteModel,
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
from events.model.evolve import evolve
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
    delete_model,
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
from events.model.state import ModelState, initial_state
from events.names import validate_actor
from events.streams import MODEL_TYPE

STREAM_TYPE = MODEL_TYPE


C = TypeVar("C", bound=Command)
Decision = Callable[[Any, ModelState], list[ModelEvent]]


def decide(command: ModelCommand, state: ModelState) -> list[ModelEvent]:
    """The events ``command`` causes on ``state``, or a ``DomainError``. Pure and deterministic."""
    validate_actor(command.actor)
    decision = DECIDE_BY_COMMAND.get(type(command))
    if decision is None:
        raise TypeError(f"{type(command).__name__} is not a command of the model stream")
    return decision(command, state)


def _on(
    command_type: type[C], decision: Callable[[C, ModelState], list[ModelEvent]]
) -> tuple[type[Command], Decision]:
    """One row of ``DECIDE_BY_COMMAND``; mypy checks that ``decision`` takes ``command_type``."""
    return command_type, decision


DECIDE_BY_COMMAND: Mapping[type[Command], Decision] = dict(
    (
        _on(RegisterModel, register_model),
        _on(UpdateModelDescription, update_model_description),
        _on(SetModelTags, set_model_tags),
        _on(RemoveModelTags, remove_model_tags),
        _on(RenameModel, rename_model),
        _on(ArchiveModel, archive_model),
        _on(RestoreModel, restore_model),
        _on(DeleteModel, delete_model),
        _on(SetModelPolicy, set_model_policy),
        _on(ClearModelPolicy, clear_model_policy),
        _on(RegisterVersion, register_version),
        _on(UpdateVersionDescription, update_version_description),
        _on(SetVersionTags, set_version_tags),
        _on(RemoveVersionTags, remove_version_tags),
        _on(DeprecateVersion, deprecate_version),
        _on(RestoreVersion, restore_version),
        _on(TransitionStage, transition_stage),
        _on(ArchiveVersion, archive_version),
        _on(Rollback, roll_back_production),
        _on(SetAlias, set_alias),
        _on(RemoveAlias, remove_alias),
        _on(RequestPromotion, request_promotion),
        _on(ApprovePromotion, approve_promotion),
        _on(RejectPromotion, reject_promotion),
        _on(CancelPromotion, cancel_promotion),
        _on(ExpirePromotion, expire_promotion),
        _on(StartDeployment, start_deployment),
        _on(ReportDeploymentSucceeded, report_succeeded),
        _on(ReportDeploymentFailed, report_failed),
        _on(ReportDeploymentRolledBack, report_rolled_back),
    )
)


MODEL: Decider[ModelState, ModelCommand, ModelEvent] = Decider(
    stream_type=STREAM_TYPE,
    initial_state=initial_state,
    evolve=evolve,
    decide=decide,
    state_type=ModelState,
    # 2: versions in a VersionTable, stored as its blocks.
    snapshot_version=2,
)
