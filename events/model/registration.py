"""Decisions about the registered model and its versions' metadata. Pure.

Set-like commands that would change nothing (same description, same tags, removing an
absent tag, renaming to the current name) decide no events, so a retried request is
harmless. Lifecycle moves that would change nothing (archiving an archived model) are
refused with ``InvalidTransitionError``, like stage transitions.
"""

from __future__ import annotations

import msgspec

from events.errors import AlreadyExistsError, InvalidTransitionError, PolicyViolationError
from events.model.commands import (
    ArchiveModel,
    ClearModelPolicy,
    DeleteModel,
    DeprecateVersion,
    RegisterModel,
    RegisterVersion,
    RemoveModelTags,
    RemoveVersionTags,
    RenameModel,
    RestoreModel,
    SetModelPolicy,
    SetModelTags,
    SetVersionTags,
    UpdateModelDescription,
    UpdateVersionDescription,
)
from events.model.events import (
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
    PromotionCancelled,
    VersionDeprecated,
    VersionDescriptionUpdated,
    VersionRegistered,
    VersionTagsRemoved,
    VersionTagsSet,
)
from events.model.guards import changed_tags, present_keys, require_active, require_registered
from events.model.state import ModelState, RequestStatus
from events.names import (
    validate_actor,
    validate_comment,
    validate_description,
    validate_id,
    validate_model_name,
    validate_tags,
)
from events.policy import GovernancePolicy, validate_policy
from events.stages import INITIAL_STAGE, placement
from events.version_content import content_digest, validate_content


def register_model(command: RegisterModel, state: ModelState) -> list[ModelEvent]:
    if state.registered:
        raise AlreadyExistsError(
            f"model {state.model_id} is already registered", model_id=state.model_id
        )
    validate_id(command.model_id, "model_id")
    validate_model_name(command.name)
    validate_actor(command.owner, "owner")
    validate_description(command.description)
    validate_tags(command.tags)
    return [
        ModelRegistered(
            model_id=command.model_id,
            name=command.name,
            description=command.description,
            tags=dict(command.tags),
            owner=command.owner,
        )
    ]


def update_model_description(
    command: UpdateModelDescription, state: ModelState
) -> list[ModelEvent]:
    require_active(state)
    validate_description(command.description)
    if command.description == state.description:
        return []
    return [ModelDescriptionUpdated(description=command.description)]


def set_model_tags(command: SetModelTags, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    changes = changed_tags(state.tags, command.tags)
    return [ModelTagsSet(tags=changes)] if changes else []


def remove_model_tags(command: RemoveModelTags, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    keys = present_keys(state.tags, command.keys)
    return [ModelTagsRemoved(keys=keys)] if keys else []


def rename_model(command: RenameModel, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    validate_model_name(command.new_name, "new_name")
    if command.new_name == state.name:
        return []
    return [ModelRenamed(old_name=state.name, new_name=command.new_name)]


def archive_model(command: ArchiveModel, state: ModelState) -> list[ModelEvent]:
    """No hard delete: the model is hidden, its history and its versions' stages stay."""
    require_registered(state)
    if state.archived:
        raise InvalidTransitionError(f"model {state.name!r} is already archived")
    validate_comment(command.reason, "reason", required=True)
    return [ModelArchived(reason=command.reason)]


def delete_model(command: DeleteModel, state: ModelState) -> list[ModelEvent]:
    """The tombstone (admin only, checked by the shell). Refused while a version is in
    production: taking a served model away is a production change, so it goes through the
    policy first (demote or archive that version). Open promotion requests are cancelled in
    the same append, so no approver is left with a request nobody can execute."""
    require_registered(state)
    validate_comment(command.reason, "reason", required=True)
    if state.production is not None:
        raise InvalidTransitionError(
            f"model {state.name!r} has version {state.production} in production;"
            " move it out of production (or archive it) before deleting the model",
            version=state.production,
        )
    open_requests = sorted(
        r.request_id for r in state.requests.values() if r.status == RequestStatus.PENDING
    )
    cancelled: list[ModelEvent] = [
        PromotionCancelled(
            request_id=request_id,
            cancelled_by=command.actor,
            comment=f"model deleted: {command.reason}",
        )
        for request_id in open_requests
    ]
    return [*cancelled, ModelDeleted(name=state.name, reason=command.reason)]


def restore_model(command: RestoreModel, state: ModelState) -> list[ModelEvent]:
    require_registered(state)
    if not state.archived:
        raise InvalidTransitionError(f"model {state.name!r} is not archived")
    validate_comment(command.reason, "reason", required=True)
    return [ModelRestored(reason=command.reason)]


def require_stages_kept(state: ModelState, policy: GovernancePolicy, field: str) -> None:
    """A policy may not strand a version: every version's stage must stay defined, with
    every environment of it the version is in."""
    for number, version in sorted(state.versions.items()):
        if not policy.defines(version.stage):
            raise PolicyViolationError(
                "stage_in_use",
                f"version {number} is in stage {version.stage!r}, which the new policy does"
                f" not define: move it to a stage the new policy keeps first, or keep {version.stage!r}",
                field=field,
                stage=version.stage,
                version=number,
            )
        for environment in version.environment_names():
            if environment not in policy.environments(version.stage):
                raise PolicyViolationError(
                    "environment_in_use",
                    f"version {number} is in {placement(version.stage, environment)}, an"
                    f" environment the new policy's stage {version.stage!r} does not list: move"
                    f" it out of {environment!r} first, or keep the environment",
                    field=field,
                    stage=version.stage,
                    environment=environment,
                    version=number,
                )


def set_model_policy(command: SetModelPolicy, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    validate_policy(command.policy)
    validate_comment(command.comment)
    if command.policy == state.policy:
        return []
    require_stages_kept(state, command.policy, "policy.stages")
    return [ModelPolicySet(policy=command.policy, comment=command.comment)]


def clear_model_policy(command: ClearModelPolicy, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    validate_comment(command.comment)
    if state.policy is None:
        return []
    require_stages_kept(state, command.registry_policy, "policy")
    return [ModelPolicyCleared(comment=command.comment)]


def register_version(command: RegisterVersion, state: ModelState) -> list[ModelEvent]:
    """Numbers are max + 1 over every version ever registered: never reused, archived or not."""
    require_active(state)
    validate_content(command.content)
    validate_description(command.description)
    validate_tags(command.tags)
    initial = state.effective_policy(command.registry_policy).initial()
    return [
        VersionRegistered(
            version=state.last_version + 1,
            content=command.content,
            content_digest=content_digest(command.content),
            registered_by=validate_actor(command.actor),
            description=command.description,
            tags=dict(command.tags),
            stage=msgspec.UNSET if initial == INITIAL_STAGE else initial,
        )
    ]


def update_version_description(
    command: UpdateVersionDescription, state: ModelState
) -> list[ModelEvent]:
    version = require_active(state).version(command.version)
    validate_description(command.description)
    if command.description == version.description:
        return []
    return [VersionDescriptionUpdated(version=command.version, description=command.description)]


def set_version_tags(command: SetVersionTags, state: ModelState) -> list[ModelEvent]:
    version = require_active(state).version(command.version)
    changes = changed_tags(version.tags, command.tags)
    return [VersionTagsSet(version=command.version, tags=changes)] if changes else []


def remove_version_tags(command: RemoveVersionTags, state: ModelState) -> list[ModelEvent]:
    version = require_active(state).version(command.version)
    keys = present_keys(version.tags, command.keys)
    return [VersionTagsRemoved(version=command.version, keys=keys)] if keys else []


def deprecate_version(command: DeprecateVersion, state: ModelState) -> list[ModelEvent]:
    version = require_active(state).version(command.version)
    validate_comment(command.reason, "reason", required=True)
    if version.deprecated:
        return []
    return [VersionDeprecated(version=command.version, reason=command.reason)]
