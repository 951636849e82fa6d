"""Decisions that move versions between stages and point aliases at them. Pure.

Rules that hold after every decision:

* at most one version is in ``production``: promoting one demotes the current one, in the
  same append, to the policy's ``demote_production_to`` (default ``archived``);
* an alias points at an existing version that is not archived: archiving a version
  (directly or by demotion) removes its aliases in the same append
  (``model.alias_removed`` with cause ``version_archived``), except on rollback, where the
  aliases of the demoted version follow the version that returns to production;
* a protected alias moves only through an approved promotion request, and no decision
  removes one as a side effect: archiving (or demoting to archived) a version that holds a
  protected alias is refused unless the same decision moves that alias on;
* ``archived`` is final except for an admin ``RestoreVersion`` (back to ``development``)
  and the one-step ``Rollback``, which may re-promote an archived previous production
  version. Rollback skips metric gates (the version passed them when it was promoted) but
  needs what a promotion to production needs (``GovernancePolicy.rollback_requirement``),
  and what each protected alias that follows the returning version needs.

Event order inside one decision: alias moves, then the demotion (alias removals before
the stage change), then the target's own stage change, so no prefix of the append breaks
a rule either.
"""

from __future__ import annotations

import msgspec

from events.errors import (
    InvalidTransitionError,
    NotFoundError,
    PolicyViolationError,
    ValidationError,
)
from events.model.commands import (
    ArchiveVersion,
    RemoveAlias,
    RestoreVersion,
    Rollback,
    SetAlias,
    TransitionStage,
)
from events.model.events import (
    AliasRemovalCause,
    AliasRemoved,
    AliasSet,
    ModelEvent,
    StageTransitioned,
)
from events.model.guards import MAX_ALIASES, require_active, require_live_version
from events.model.state import ModelState, VersionState
from events.names import validate_alias, validate_comment
from events.policy import (
    GovernancePolicy,
    Requirement,
    check_gates,
    require_environment,
    require_stage,
    requirement,
)
from events.stages import Stage, StageName, TransitionKind, placement


def _archive_aliases(
    policy: GovernancePolicy,
    version: VersionState,
    keep: set[str],
    comment: str,
    request_id: str | None,
) -> list[ModelEvent]:
    for alias in version.aliases:
        if alias not in keep and policy.alias_rule(alias) is not None:
            raise PolicyViolationError(
                "protected_alias",
                f"archiving version {version.number} would remove the protected alias {alias!r}:"
                " move the alias in the same promotion request (alias=...) or unprotect it first",
                alias=alias,
                version=version.number,
            )
    return [
        AliasRemoved(
            alias=alias,
            version=version.number,
            cause=AliasRemovalCause.VERSION_ARCHIVED,
            comment=comment,
            request_id=request_id,
        )
        for alias in version.aliases
        if alias not in keep
    ]


def _stage_change(
    policy: GovernancePolicy,
    version: VersionState,
    to_stage: StageName,
    kind: TransitionKind,
    comment: str,
    request_id: str | None,
    moved_aliases: set[str],
    *,
    environment: str | None = None,
    from_environment: str | None = None,
) -> list[ModelEvent]:
    removed = (
        _archive_aliases(policy, version, moved_aliases, comment, request_id)
        if policy.is_terminal(to_stage)
        else []
    )
    return [
        *removed,
        StageTransitioned(
            version=version.number,
            from_stage=version.stage,
            to_stage=to_stage,
            kind=kind,
            comment=comment,
            request_id=request_id,
            environment=msgspec.UNSET if environment is None else environment,
            from_environment=msgspec.UNSET if from_environment is None else from_environment,
        ),
    ]


def move(
    state: ModelState,
    policy: GovernancePolicy,
    version: VersionState,
    *,
    stage: StageName | None,
    alias: str | None,
    kind: TransitionKind,
    comment: str,
    request_id: str | None = None,
    environment: str | None = None,
) -> list[ModelEvent]:
    """The events that put ``version`` in ``stage`` (in ``environment``, for a stage with
    environments) and/or under ``alias``; rules already checked."""
    events: list[ModelEvent] = []
    moved: set[str] = set()
    if alias is not None and state.aliases.get(alias) != version.number:
        events.append(
            AliasSet(
                alias=alias,
                version=version.number,
                previous_version=state.aliases.get(alias),
                comment=comment,
                request_id=request_id,
            )
        )
        moved.add(alias)
    if kind == TransitionKind.ROLLBACK and state.production is not None:
        for followed in state.version(state.production).aliases:
            events.append(
                AliasSet(
                    alias=followed,
                    version=version.number,
                    previous_version=state.production,
                    comment=comment,
                    request_id=request_id,
                )
            )
            moved.add(followed)
    if stage is None or (
        stage == version.stage
        and (environment is None or environment in version.environment_names())
    ):
        return events
    if policy.is_exclusive(stage):
        for number in state.in_stage(stage, environment):
            if number == version.number:
                continue
            other = state.version(number)
            if environment is not None and len(other.environment_names()) > 1:
                # Exclusivity is per environment: it leaves this one and keeps the others.
                events.append(
                    StageTransitioned(
                        version=number,
                        from_stage=stage,
                        to_stage=stage,
                        kind=TransitionKind.DEMOTION,
                        comment=comment,
                        request_id=request_id,
                        from_environment=environment,
                    )
                )
                continue
            events += _stage_change(
                policy,
                other,
                policy.demotion_target(stage),
                TransitionKind.DEMOTION,
                comment,
                request_id,
                moved,
                from_environment=environment,
            )
    events += _stage_change(
        policy, version, stage, kind, comment, request_id, moved, environment=environment
    )
    return events


def transition_stage(command: TransitionStage, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    if not command.archive_existing:
        return _direct_transition(
            state,
            command.registry_policy,
            command.version,
            command.to_stage,
            command.comment,
            command.metrics,
            command.environment,
        )
    policy = state.effective_policy(command.registry_policy)
    require_stage(policy, command.to_stage, "to_stage")
    if policy.environments(command.to_stage):
        raise ValidationError(
            "archive_existing",
            "per_environment",
            f"stage {command.to_stage} is per environment: moving a version into an environment"
            " already moves the one there out",
        )
    if policy.is_terminal(command.to_stage) or command.to_stage == policy.initial():
        raise ValidationError(
            "archive_existing",
            "stage",
            "archiving the existing versions applies to stages after the initial one and"
            f" before the terminal ones, not {command.to_stage}",
        )
    validate_comment(command.comment)
    moved = (
        []
        if state.version(command.version).stage == command.to_stage
        else _direct_transition(
            state,
            command.registry_policy,
            command.version,
            command.to_stage,
            command.comment,
            command.metrics,
            None,
        )
    )
    return moved + _archive_others(state, command)


def _archive_others(state: ModelState, command: TransitionStage) -> list[ModelEvent]:
    """The other versions in the target stage, archived as the policy allows each one
    directly (else the whole decision is refused: nothing half done). A production target
    has no other: the move demoted it already."""
    policy = state.effective_policy(command.registry_policy)
    events: list[ModelEvent] = []
    for number, other in sorted(state.versions.items()):
        if number == command.version or other.stage != command.to_stage:
            continue
        if policy.is_exclusive(command.to_stage):
            continue
        archive = _archive_stage(policy)
        needed = requirement(policy, other.stage, archive, None)
        if needed.approvals > 0:
            raise PolicyViolationError(
                "approval_required",
                f"archiving version {number} ({other.stage} -> archived) needs"
                f" {needed.approvals} approval(s): request it, or move without archiving",
                approvals=needed.approvals,
                version=number,
            )
        events += _stage_change(
            policy, other, archive, TransitionKind.DIRECT, command.comment, None, set()
        )
    return events


def _archive_stage(policy: GovernancePolicy) -> StageName:
    archive = policy.archive_stage()
    if archive is None:
        raise InvalidTransitionError(
            "the governance policy defines no terminal stage to archive into"
        )
    return archive


def archive_version(command: ArchiveVersion, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    validate_comment(command.reason, "reason", required=True)
    policy = state.effective_policy(command.registry_policy)
    return _direct_transition(
        state,
        command.registry_policy,
        command.version,
        _archive_stage(policy),
        command.reason,
        {},
        None,
    )


def _direct_transition(
    state: ModelState,
    registry_policy: GovernancePolicy,
    number: int,
    to_stage: StageName,
    comment: str,
    metrics: dict[int, dict[str, dict[str, float]]],
    environment: str | None,
) -> list[ModelEvent]:
    validate_comment(comment)
    policy = state.effective_policy(registry_policy)
    require_stage(policy, to_stage, "to_stage")
    require_environment(policy, to_stage, environment, "environment")
    version = state.version(number)
    if version.stage == to_stage and (
        environment is None or environment in version.environment_names()
    ):
        where = placement(to_stage, environment)
        raise InvalidTransitionError(f"version {number} is already in {where}", version=number)
    if policy.is_terminal(version.stage):
        raise InvalidTransitionError(
            f"version {number} is {version.stage}; only an admin restore brings it back",
            version=number,
        )
    if not policy.defines(version.stage):
        raise InvalidTransitionError(
            f"version {number} is in stage {version.stage!r}, which the governance policy does"
            " not define; an admin restore moves it to the initial stage",
            version=number,
        )
    if version.deprecated and not policy.is_terminal(to_stage) and to_stage != policy.initial():
        raise InvalidTransitionError(
            f"version {number} is deprecated and cannot be promoted", version=number
        )
    needed = requirement(policy, version.stage, to_stage, None)
    if needed.approvals > 0:
        raise PolicyViolationError(
            "approval_required",
            f"{version.stage} -> {to_stage} needs {needed.approvals} approval(s): request a promotion",
            approvals=needed.approvals,
        )
    check_gates(needed.gates, number, state.champion(environment), metrics)
    return move(
        state,
        policy,
        version,
        stage=to_stage,
        alias=None,
        kind=TransitionKind.DIRECT,
        comment=comment,
        environment=environment,
    )


def restore_version(command: RestoreVersion, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    version = state.version(command.version)
    policy = state.effective_policy(command.registry_policy)
    if policy.defines(version.stage) and not policy.is_terminal(version.stage):
        raise InvalidTransitionError(
            f"version {command.version} is not archived", version=command.version
        )
    if not command.actor_is_admin:
        raise PolicyViolationError(
            "admin_required", "only an admin can restore an archived version"
        )
    validate_comment(command.reason, "reason", required=True)
    return [
        StageTransitioned(
            version=command.version,
            from_stage=version.stage,
            to_stage=policy.initial(),
            kind=TransitionKind.RESTORE,
            comment=command.reason,
        )
    ]


def rollback_version(state: ModelState) -> VersionState:
    """The version a rollback re-promotes, or ``InvalidTransitionError`` if there is none."""
    target = state.rollback_target()
    if target is None:
        raise InvalidTransitionError("no version was in production before the current one")
    version = state.version(target)
    if version.deprecated:
        raise InvalidTransitionError(
            f"the rollback target, version {target}, is deprecated", version=target
        )
    return version


def require_single_production(policy: GovernancePolicy) -> None:
    """A rollback swaps the one production version for the one before it; with production
    per environment there is no single one to swap."""
    if policy.environments(Stage.PRODUCTION):
        raise ValidationError(
            "rollback",
            "per_environment",
            "production is per environment: move the previous version back with"
            " a transition (or a promotion request) that names the environment",
        )


def rollback_requirement(state: ModelState, policy: GovernancePolicy) -> Requirement:
    """What a rollback needs: the policy's rollback rule (by default, what a promotion to
    production needs) and the rule of every protected alias that would follow it."""
    approvals = policy.rollback_requirement()
    rules: tuple[str, ...] = ("rollback",)
    followed = state.version(state.production).aliases if state.production is not None else ()
    for alias in followed:
        if (protected := policy.alias_rule(alias)) is not None:
            approvals = max(approvals, protected.approvals)
            rules = (*rules, f"protected_alias:{alias}")
    return Requirement(approvals=approvals, rules=rules)


def roll_back_production(command: Rollback, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    validate_comment(command.reason, "reason", required=True)
    policy = state.effective_policy(command.registry_policy)
    require_single_production(policy)
    version = rollback_version(state)
    require_stage(policy, Stage.PRODUCTION, "rollback")
    needed = rollback_requirement(state, policy)
    if needed.approvals > 0:
        raise PolicyViolationError(
            "rollback_requires_approval",
            f"a rollback needs {needed.approvals} approval(s) ({', '.join(needed.rules)}):"
            " request it with rollback=true",
            approvals=needed.approvals,
        )
    return move(
        state,
        policy,
        version,
        stage=Stage.PRODUCTION,
        alias=None,
        kind=TransitionKind.ROLLBACK,
        comment=command.reason,
    )


def set_alias(command: SetAlias, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    validate_alias(command.alias)
    validate_comment(command.comment)
    policy = state.effective_policy(command.registry_policy)
    version = require_live_version(state, command.version, f"aliased as {command.alias!r}", policy)
    if policy.alias_rule(command.alias) is not None:
        raise PolicyViolationError(
            "protected_alias",
            f"alias {command.alias!r} is protected: it moves only by an approved promotion",
            alias=command.alias,
        )
    if state.aliases.get(command.alias) == command.version:
        return []
    if command.alias not in state.aliases and len(state.aliases) >= MAX_ALIASES:
        raise ValidationError(
            "alias", "too_many", f"a model has at most {MAX_ALIASES} aliases", max=MAX_ALIASES
        )
    return move(
        state,
        policy,
        version,
        stage=None,
        alias=command.alias,
        kind=TransitionKind.DIRECT,
        comment=command.comment,
    )


def remove_alias(command: RemoveAlias, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    validate_alias(command.alias)
    validate_comment(command.comment)
    target = state.aliases.get(command.alias)
    if target is None:
        raise NotFoundError(
            f"model {state.name!r} has no alias {command.alias!r}", alias=command.alias
        )
    if state.effective_policy(command.registry_policy).alias_rule(command.alias) is not None:
        raise PolicyViolationError(
            "protected_alias",
            f"alias {command.alias!r} is protected; unprotect it in the policy first",
            alias=command.alias,
        )
    return [
        AliasRemoved(
            alias=command.alias,
            version=target,
            cause=AliasRemovalCause.REMOVED,
            comment=command.comment,
        )
    ]
