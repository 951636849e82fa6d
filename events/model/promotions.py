"""Promotion requests: request -> approve / reject / cancel / expire -> executed. Pure.

A request names a version and a target stage and/or alias (or ``rollback=True``). The
policy in force decides how many approvals it needs and which metric gates apply.

* Requesting checks the move and the gates at once (fail fast); with zero approvals
  needed the promotion executes in the same decision.
* Approving records one approval. When the eligible approvals reach what the policy in
  force *now* requires, the same decision re-checks the move from the version's current
  stage and the gates against the metrics on the approving command, and executes:
  ``model.promotion_approved``, ``model.promotion_executed`` (with the evidence), then
  the alias and stage events. If the re-check fails, the command is refused and nothing
  is recorded; the request stays pending.
* Separation of duties (on by default): neither the requester nor the version's
  registrant may approve, and a person approves at most once.
* Approve, reject and cancel fail with rule ``request_expired`` once ``now`` has reached
  ``expires_at``; ``ExpirePromotion`` then records the expiry.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
from msgspec.structs import replace

from events.base import acted_as, utc
from events.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    PolicyViolationError,
    ValidationError,
)
from events.model.commands import (
    ApprovePromotion,
    CancelPromotion,
    ExpirePromotion,
    Metrics,
    RejectPromotion,
    RequestPromotion,
)
from events.model.events import (
    ModelEvent,
    PromotionApproved,
    PromotionCancelled,
    PromotionExecuted,
    PromotionExpired,
    PromotionRejected,
    PromotionRequested,
)
from events.model.guards import (
    MAX_ALIASES,
    require_active,
    require_live_version,
    require_registered,
)
from events.model.lifecycle import (
    move,
    require_single_production,
    rollback_requirement,
    rollback_version,
)
from events.model.state import ModelState, RequestState, RequestStatus, VersionState
from events.names import validate_alias, validate_comment, validate_id
from events.policy import (
    GovernancePolicy,
    Requirement,
    check_gates,
    require_environment,
    require_stage,
    requirement,
)
from events.stages import Stage, TransitionKind, placement


def _requirement(
    state: ModelState, policy: GovernancePolicy, request: RequestState
) -> tuple[VersionState, Requirement]:
    """The target version and what the promotion needs, judged against the state now."""
    if request.rollback:
        require_stage(policy, Stage.PRODUCTION, "rollback")
        version = rollback_version(state)
        if version.number != request.version:
            raise InvalidTransitionError(
                f"the rollback target is now version {version.number}, not {request.version}",
                version=request.version,
            )
        return version, rollback_requirement(state, policy)
    if request.target_stage is not None:
        require_stage(policy, request.target_stage, "target_stage")
    require_environment(policy, request.target_stage, request.environment_name(), "environment")
    if request.target_stage is not None and policy.is_terminal(request.target_stage):
        # archiving a deprecated version is fine
        version = state.version(request.version)
        if policy.is_terminal(version.stage):
            raise InvalidTransitionError(
                f"version {version.number} is already {version.stage}", version=version.number
            )
    else:
        version = require_live_version(state, request.version, "promoted", policy)
    if (
        request.target_stage is not None
        and request.target_stage == version.stage
        and (
            request.environment_name() is None
            or request.environment_name() in version.environment_names()
        )
    ):
        where = placement(version.stage, request.environment_name())
        raise InvalidTransitionError(
            f"version {version.number} is already in {where}", version=version.number
        )
    return version, requirement(
        policy, version.stage, request.target_stage, request.alias, "target_stage"
    )


def _eligible(
    policy: GovernancePolicy, request: RequestState, version: VersionState
) -> tuple[str, ...]:
    excluded = (
        {request.requested_by, version.registered_by} if policy.separation_of_duties else set()
    )
    return tuple(dict.fromkeys(a for a in request.approvals if a not in excluded))


def _execute(
    state: ModelState,
    policy: GovernancePolicy,
    request: RequestState,
    version: VersionState,
    needed: Requirement,
    approvers: tuple[str, ...],
    metrics: Metrics,
    comment: str,
) -> list[ModelEvent]:
    results = (
        ()
        if request.rollback
        else check_gates(
            needed.gates,
            version.number,
            state.champion(request.environment_name()),
            metrics,
        )
    )
    executed = PromotionExecuted(
        request_id=request.request_id,
        version=version.number,
        from_stage=version.stage,
        target_stage=request.target_stage,
        alias=request.alias,
        approved_by=approvers,
        approvals_required=needed.approvals,
        rules=needed.rules,
        gate_results=results,
        environment=request.environment,
    )
    return [executed, *_moves(state, policy, request, version, comment)]


def _moves(
    state: ModelState,
    policy: GovernancePolicy,
    request: RequestState,
    version: VersionState,
    comment: str,
) -> list[ModelEvent]:
    return move(
        state,
        policy,
        version,
        stage=request.target_stage,
        alias=request.alias,
        kind=TransitionKind.ROLLBACK if request.rollback else TransitionKind.PROMOTION,
        comment=comment or request.justification,
        request_id=request.request_id,
        environment=request.environment_name(),
    )


def request_promotion(command: RequestPromotion, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    validate_id(command.request_id, "request_id")
    if command.request_id in state.requests:
        raise AlreadyExistsError(
            f"request {command.request_id} exists", request_id=command.request_id
        )
    validate_comment(command.justification, "justification", required=True)
    target_stage = command.target_stage
    if command.rollback:
        if command.alias is not None or target_stage not in (None, Stage.PRODUCTION):
            raise ValidationError(
                "target_stage", "rollback_target", "a rollback request targets production only"
            )
        target_stage = Stage.PRODUCTION
    elif target_stage is None and command.alias is None:
        raise ValidationError(
            "target_stage", "required", "a request names a target stage, an alias or both"
        )
    policy = state.effective_policy(command.registry_policy)
    if command.alias is not None:
        validate_alias(command.alias)
        if target_stage is not None and policy.is_terminal(target_stage):
            raise ValidationError(
                "alias", "archived_target", "an alias cannot point at an archived version"
            )
        if command.alias not in state.aliases and len(state.aliases) >= MAX_ALIASES:
            raise ValidationError("alias", "too_many", f"a model has at most {MAX_ALIASES} aliases")
    now = utc(command.now)
    request = RequestState(
        request_id=command.request_id,
        version=command.version,
        target_stage=target_stage,
        alias=command.alias,
        justification=command.justification,
        requested_by=command.actor,
        expires_at=now + timedelta(seconds=policy.request_ttl_seconds),
        rollback=command.rollback,
        environment=msgspec.UNSET if command.environment is None else command.environment,
    )
    require_environment(policy, target_stage, command.environment, "environment")
    if command.rollback:
        require_single_production(policy)
    version, needed = _requirement(state, policy, request)
    if target_stage is None and state.aliases.get(command.alias or "") == version.number:
        raise InvalidTransitionError(
            f"alias {command.alias!r} already points at version {version.number}"
        )
    if not command.rollback:
        check_gates(
            needed.gates,
            version.number,
            state.champion(command.environment),
            command.metrics,
        )
    requested = PromotionRequested(
        request_id=request.request_id,
        version=request.version,
        target_stage=target_stage,
        alias=request.alias,
        justification=request.justification,
        requested_by=request.requested_by,
        expires_at=request.expires_at,
        approvals_required=needed.approvals,
        rollback=request.rollback,
        environment=request.environment,
    )
    if needed.approvals > 0:
        # Fail fast on what the move itself refuses (e.g. dropping a protected alias), so
        # approvers are never asked for a promotion that cannot execute as requested.
        _moves(state, policy, request, version, "")
        return [requested]
    return [requested, *_execute(state, policy, request, version, needed, (), command.metrics, "")]


def _open_request(state: ModelState, request_id: str) -> RequestState:
    request = state.requests.get(request_id)
    if request is None:
        raise NotFoundError(f"no promotion request {request_id}", request_id=request_id)
    if request.status != RequestStatus.PENDING:
        raise ConflictError(
            f"request {request_id} is already {request.status}", status=str(request.status)
        )
    return request


def _unexpired(
    request: RequestState, command: ApprovePromotion | RejectPromotion | CancelPromotion
) -> None:
    if utc(command.now) >= request.expires_at:
        raise PolicyViolationError(
            "request_expired",
            f"request {request.request_id} expired at {request.expires_at.isoformat()}",
            expires_at=request.expires_at.isoformat(),
        )


def approve_promotion(command: ApprovePromotion, state: ModelState) -> list[ModelEvent]:
    require_active(state)
    validate_comment(command.comment)
    request = _open_request(state, command.request_id)
    _unexpired(request, command)
    policy = state.effective_policy(command.registry_policy)
    version = state.version(request.version)
    if policy.separation_of_duties and (
        acted_as(command, request.requested_by) or acted_as(command, version.registered_by)
    ):
        role = (
            "requested the promotion"
            if acted_as(command, request.requested_by)
            else "registered the version"
        )
        raise PolicyViolationError(
            "separation_of_duties",
            f"{command.actor} {role} and cannot approve it",
            actor=command.actor,
        )
    if any(acted_as(command, a) for a in request.approvals):
        raise PolicyViolationError(
            "duplicate_approval", f"{command.actor} already approved this request"
        )
    approved = PromotionApproved(
        request_id=request.request_id, approved_by=command.actor, comment=command.comment
    )
    request = replace(request, approvals=(*request.approvals, command.actor))
    version, needed = _requirement(state, policy, request)
    approvers = _eligible(policy, request, version)
    if len(approvers) < needed.approvals:
        return [approved]
    return [
        approved,
        *_execute(
            state, policy, request, version, needed, approvers, command.metrics, command.comment
        ),
    ]


def reject_promotion(command: RejectPromotion, state: ModelState) -> list[ModelEvent]:
    require_registered(state)
    validate_comment(command.comment, required=True)
    request = _open_request(state, command.request_id)
    _unexpired(request, command)
    return [
        PromotionRejected(
            request_id=request.request_id, rejected_by=command.actor, comment=command.comment
        )
    ]


def cancel_promotion(command: CancelPromotion, state: ModelState) -> list[ModelEvent]:
    require_registered(state)
    validate_comment(command.comment)
    request = _open_request(state, command.request_id)
    _unexpired(request, command)
    if not acted_as(command, request.requested_by) and not command.actor_is_admin:
        raise PolicyViolationError(
            "only_requester_can_cancel", "only the requester or an admin can cancel a request"
        )
    return [
        PromotionCancelled(
            request_id=request.request_id, cancelled_by=command.actor, comment=command.comment
        )
    ]


def expire_promotion(command: ExpirePromotion, state: ModelState) -> list[ModelEvent]:
    require_registered(state)
    request = _open_request(state, command.request_id)
    if utc(command.now) < request.expires_at:
        raise ConflictError(
            f"request {request.request_id} expires at {request.expires_at.isoformat()}, not yet",
            expires_at=request.expires_at.isoformat(),
        )
    return [PromotionExpired(request_id=request.request_id)]
