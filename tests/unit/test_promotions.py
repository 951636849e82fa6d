"""Promotion requests: approvals, separation of duties, gates re-checked at execution, expiry."""

from __future__ import annotations

import pytest

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
    RejectPromotion,
    RequestPromotion,
)
from events.model.events import (
    AliasRemovalCause,
    AliasRemoved,
    AliasSet,
    ModelEvent,
    PromotionApproved,
    PromotionCancelled,
    PromotionExecuted,
    PromotionExpired,
    PromotionRejected,
    StageTransitioned,
    VersionDeprecated,
)
from events.model.state import RequestStatus
from events.policy import AliasRule, GateResult, GovernancePolicy, MetricGate, TransitionRule
from events.stages import Stage, TransitionKind
from tests.unit.domain_helpers import (
    cmd,
    given,
    in_production,
    later,
    policy_set,
    requested,
    transitioned,
    when,
    with_versions,
)

D, S, P, A = Stage.DEVELOPMENT, Stage.STAGING, Stage.PRODUCTION, Stage.ARCHIVED
AUC = MetricGate(metric="auc", dataset="holdout", threshold=0.9)
TWO_EYES = GovernancePolicy(
    transitions=(
        TransitionRule(from_stage=D, to_stage=S),
        TransitionRule(from_stage=S, to_stage=P, approvals=2, gates=(AUC,)),
        TransitionRule(from_stage=P, to_stage=A),
    ),
    protected_aliases=(AliasRule(alias="champion", approvals=1),),
    request_ttl_seconds=3600,
)
GOOD = {2: {"auc": {"holdout": 0.95}}}


def _staged(policy: GovernancePolicy = TWO_EYES) -> list[ModelEvent]:
    """v1 in production, v2 (registered by alice) in staging."""
    return [
        *with_versions(2, by="alice"),
        policy_set(policy),
        *in_production(1),
        transitioned(2, D, S),
    ]


def _pending(
    approvals: tuple[str, ...] = (), alias: str | None = None, policy: GovernancePolicy = TWO_EYES
) -> list[ModelEvent]:
    history = [
        *_staged(policy),
        requested("r1", 2, P, alias=alias, by="bob", approvals=2, ttl=3600),
    ]
    history += [PromotionApproved(request_id="r1", approved_by=a, comment="") for a in approvals]
    return history


def test_a_request_that_needs_no_approval_executes_in_the_same_decision() -> None:
    state = given(with_versions(1))
    events = when(
        cmd(
            RequestPromotion,
            actor="bob",
            request_id="r1",
            version=1,
            target_stage=S,
            justification="smoke tests pass",
        ),
        state,
    )
    assert [type(e) for e in events] == [
        type(requested("r1", 1)),
        PromotionExecuted,
        StageTransitioned,
    ]
    executed = events[1]
    assert isinstance(executed, PromotionExecuted)
    assert (executed.approved_by, executed.approvals_required, executed.rules) == (
        (),
        0,
        ("transition:development->staging",),
    )
    assert events[2] == transitioned(
        1, D, S, TransitionKind.PROMOTION, comment="smoke tests pass", request_id="r1"
    )


def test_a_request_that_needs_approval_is_recorded_pending_with_its_expiry() -> None:
    events = when(
        cmd(
            RequestPromotion,
            actor="bob",
            request_id="r1",
            version=2,
            target_stage=P,
            justification="ready",
            metrics=GOOD,
        ),
        given(_staged()),
    )
    assert events == [requested("r1", 2, P, by="bob", approvals=2, ttl=3600)]
    assert given(_staged(), events).requests["r1"].status == RequestStatus.PENDING


def test_a_request_whose_gates_already_fail_is_rejected_at_once() -> None:
    with pytest.raises(PolicyViolationError) as error:
        when(
            cmd(
                RequestPromotion,
                actor="bob",
                request_id="r1",
                version=2,
                target_stage=P,
                justification="x",
                metrics={2: {"auc": {"holdout": 0.5}}},
            ),
            given(_staged()),
        )
    assert error.value.rule == "metric_gate"


def test_a_request_needs_a_justification_and_a_target() -> None:
    with pytest.raises(ValidationError) as error:
        when(
            cmd(RequestPromotion, request_id="r1", version=2, target_stage=P, justification=""),
            given(_staged()),
        )
    assert error.value.field == "justification"
    with pytest.raises(ValidationError) as error:
        when(cmd(RequestPromotion, request_id="r1", version=2, justification="x"), given(_staged()))
    assert (error.value.field, error.value.rule) == ("target_stage", "required")


def test_a_request_for_a_transition_the_policy_lacks_or_an_archived_version_is_invalid() -> None:
    with pytest.raises(InvalidTransitionError):
        when(
            cmd(RequestPromotion, request_id="r1", version=2, target_stage=D, justification="x"),
            given(_staged()),
        )
    state = given(with_versions(1), transitioned(1, D, A))
    with pytest.raises(InvalidTransitionError):
        when(
            cmd(RequestPromotion, request_id="r1", version=1, target_stage=S, justification="x"),
            state,
        )


def test_request_ids_are_unique_within_the_model() -> None:
    with pytest.raises(AlreadyExistsError):
        when(
            cmd(
                RequestPromotion,
                request_id="r1",
                version=2,
                target_stage=P,
                justification="x",
                metrics=GOOD,
            ),
            given(_pending()),
        )


def test_the_requester_cannot_approve_their_own_request() -> None:
    with pytest.raises(PolicyViolationError) as error:
        when(cmd(ApprovePromotion, actor="bob", request_id="r1"), given(_pending()))
    assert error.value.rule == "separation_of_duties"


def test_the_registrant_of_the_version_cannot_approve_its_promotion() -> None:
    with pytest.raises(PolicyViolationError) as error:
        when(cmd(ApprovePromotion, actor="alice", request_id="r1"), given(_pending()))
    assert error.value.rule == "separation_of_duties"


def test_without_separation_of_duties_the_requester_may_approve() -> None:
    relaxed = GovernancePolicy(transitions=TWO_EYES.transitions, separation_of_duties=False)
    events = when(
        cmd(ApprovePromotion, actor="bob", request_id="r1"), given(_pending(policy=relaxed))
    )
    assert events == [PromotionApproved(request_id="r1", approved_by="bob", comment="")]


def test_a_person_approves_a_request_once() -> None:
    with pytest.raises(PolicyViolationError) as error:
        when(cmd(ApprovePromotion, actor="carol", request_id="r1"), given(_pending(("carol",))))
    assert error.value.rule == "duplicate_approval"


def test_an_approval_short_of_the_required_count_only_records_the_approval() -> None:
    assert when(
        cmd(ApprovePromotion, actor="carol", request_id="r1", comment="lgtm"), given(_pending())
    ) == [PromotionApproved(request_id="r1", approved_by="carol", comment="lgtm")]


def test_the_last_approval_executes_the_promotion_and_demotes_the_previous_production_version() -> (
    None
):
    events = when(
        cmd(ApprovePromotion, actor="dave", request_id="r1", comment="ship it", metrics=GOOD),
        given(_pending(("carol",))),
    )
    assert events == [
        PromotionApproved(request_id="r1", approved_by="dave", comment="ship it"),
        PromotionExecuted(
            request_id="r1",
            version=2,
            from_stage=S,
            target_stage=P,
            alias=None,
            approved_by=("carol", "dave"),
            approvals_required=2,
            rules=("transition:staging->production",),
            gate_results=(GateResult(gate=AUC, value=0.95, production_value=None, passed=True),),
        ),
        transitioned(1, P, A, TransitionKind.DEMOTION, comment="ship it", request_id="r1"),
        transitioned(2, S, P, TransitionKind.PROMOTION, comment="ship it", request_id="r1"),
    ]
    state = given(_pending(("carol",)), events)
    assert (state.production, state.requests["r1"].status) == (2, RequestStatus.EXECUTED)


def test_the_last_approval_re_checks_the_gates_with_the_metrics_supplied_then() -> None:
    with pytest.raises(PolicyViolationError) as error:
        when(
            cmd(
                ApprovePromotion,
                actor="dave",
                request_id="r1",
                metrics={2: {"auc": {"holdout": 0.7}}},
            ),
            given(_pending(("carol",))),
        )
    assert error.value.rule == "metric_gate"


def test_the_policy_in_force_at_the_last_approval_decides_how_many_approvals_are_enough() -> None:
    one = GovernancePolicy(transitions=(TransitionRule(from_stage=S, to_stage=P, approvals=1),))
    history = [*_pending(), policy_set(one)]
    events = when(cmd(ApprovePromotion, actor="carol", request_id="r1"), given(history))
    assert isinstance(events[1], PromotionExecuted)
    assert events[1].approvals_required == 1


def test_a_promotion_with_a_protected_alias_moves_it_and_records_the_previous_target() -> None:
    history = [
        *_staged(),
        AliasSet(alias="champion", version=1, previous_version=None, comment=""),
        requested("r1", 2, P, alias="champion", by="bob", approvals=2, ttl=3600),
        PromotionApproved(request_id="r1", approved_by="carol", comment=""),
    ]
    events = when(
        cmd(ApprovePromotion, actor="dave", request_id="r1", metrics=GOOD), given(history)
    )
    assert events[2] == AliasSet(
        alias="champion", version=2, previous_version=1, comment="ready", request_id="r1"
    )
    assert not any(isinstance(e, AliasRemoved) for e in events)
    assert given(history, events).aliases == {"champion": 2}


def test_a_protected_alias_needs_an_approval_even_when_the_stage_does_not() -> None:
    state = given(with_versions(1))
    events = when(
        cmd(
            RequestPromotion,
            actor="bob",
            request_id="r1",
            version=1,
            alias="champion",
            justification="x",
            registry_policy=TWO_EYES,
        ),
        state,
    )
    assert len(events) == 1
    assert events[0].approvals_required == 1  # type: ignore[union-attr]


def test_an_unprotected_alias_request_executes_at_once() -> None:
    events = when(
        cmd(
            RequestPromotion,
            actor="bob",
            request_id="r1",
            version=1,
            alias="challenger",
            justification="x",
        ),
        given(with_versions(1)),
    )
    assert events[-1] == AliasSet(
        alias="challenger", version=1, previous_version=None, comment="x", request_id="r1"
    )


def test_an_alias_cannot_be_requested_together_with_archiving() -> None:
    with pytest.raises(ValidationError):
        when(
            cmd(
                RequestPromotion,
                request_id="r1",
                version=1,
                target_stage=A,
                alias="x",
                justification="x",
            ),
            given(with_versions(1)),
        )


def test_approving_after_the_version_left_its_stage_is_an_invalid_transition() -> None:
    history = [*_pending(("carol",)), transitioned(2, S, A)]
    with pytest.raises(InvalidTransitionError):
        when(cmd(ApprovePromotion, actor="dave", request_id="r1", metrics=GOOD), given(history))


def test_a_rejection_needs_a_comment_and_closes_the_request() -> None:
    with pytest.raises(ValidationError):
        when(cmd(RejectPromotion, actor="carol", request_id="r1", comment=""), given(_pending()))
    events = when(
        cmd(RejectPromotion, actor="carol", request_id="r1", comment="drift on holdout"),
        given(_pending()),
    )
    assert events == [
        PromotionRejected(request_id="r1", rejected_by="carol", comment="drift on holdout")
    ]
    with pytest.raises(ConflictError):
        when(
            cmd(ApprovePromotion, actor="dave", request_id="r1", metrics=GOOD),
            given(_pending(), events),
        )


def test_only_the_requester_or_an_admin_cancels_a_request() -> None:
    with pytest.raises(PolicyViolationError) as error:
        when(cmd(CancelPromotion, actor="carol", request_id="r1"), given(_pending()))
    assert error.value.rule == "only_requester_can_cancel"
    assert when(cmd(CancelPromotion, actor="bob", request_id="r1"), given(_pending())) == [
        PromotionCancelled(request_id="r1", cancelled_by="bob", comment="")
    ]
    assert when(
        cmd(CancelPromotion, actor="root", request_id="r1", actor_is_admin=True), given(_pending())
    )


def test_approving_rejecting_or_cancelling_an_expired_request_fails_naming_the_rule() -> None:
    for command in (
        cmd(ApprovePromotion, actor="carol", request_id="r1", now=later(3600)),
        cmd(RejectPromotion, actor="carol", request_id="r1", comment="x", now=later(3600)),
        cmd(CancelPromotion, actor="bob", request_id="r1", now=later(4000)),
    ):
        with pytest.raises(PolicyViolationError) as error:
            when(command, given(_pending()))
        assert error.value.rule == "request_expired"


def test_expiry_is_recorded_only_once_the_request_has_expired() -> None:
    with pytest.raises(ConflictError):
        when(cmd(ExpirePromotion, request_id="r1", now=later(3599)), given(_pending()))
    events = when(cmd(ExpirePromotion, request_id="r1", now=later(3600)), given(_pending()))
    assert events == [PromotionExpired(request_id="r1")]
    assert given(_pending(), events).requests["r1"].status == RequestStatus.EXPIRED


def test_an_unknown_request_is_not_found() -> None:
    with pytest.raises(NotFoundError):
        when(cmd(ApprovePromotion, actor="carol", request_id="nope"), given(_pending()))


def test_archiving_by_demotion_inside_a_promotion_removes_the_old_versions_other_aliases() -> None:
    history = [
        *_staged(),
        AliasSet(alias="stable", version=1, previous_version=None, comment=""),
        requested("r1", 2, P, by="bob", approvals=2, ttl=3600),
        PromotionApproved(request_id="r1", approved_by="carol", comment=""),
    ]
    events = when(
        cmd(ApprovePromotion, actor="dave", request_id="r1", metrics=GOOD), given(history)
    )
    assert events[2] == AliasRemoved(
        alias="stable",
        version=1,
        cause=AliasRemovalCause.VERSION_ARCHIVED,
        comment="ready",
        request_id="r1",
    )
    assert given(history, events).aliases == {}


def test_requesting_an_alias_that_already_points_at_the_version_is_invalid() -> None:
    state = given(
        with_versions(1), AliasSet(alias="challenger", version=1, previous_version=None, comment="")
    )
    with pytest.raises(InvalidTransitionError):
        when(
            cmd(
                RequestPromotion, request_id="r1", version=1, alias="challenger", justification="x"
            ),
            state,
        )


def test_a_deprecated_version_can_still_be_archived_through_a_request() -> None:
    state = given(with_versions(1), VersionDeprecated(version=1, reason="leak"))
    events = when(
        cmd(RequestPromotion, request_id="r1", version=1, target_stage=A, justification="clean up"),
        state,
    )
    assert events[-1] == transitioned(
        1, D, A, TransitionKind.PROMOTION, comment="clean up", request_id="r1"
    )
    with pytest.raises(InvalidTransitionError):
        when(
            cmd(RequestPromotion, request_id="r1", version=1, target_stage=S, justification="x"),
            state,
        )
