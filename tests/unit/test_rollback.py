"""One-step rollback: re-promote the version that was in production before the current one."""

from __future__ import annotations

import pytest

from events.errors import InvalidTransitionError, PolicyViolationError, ValidationError
from events.model.commands import ApprovePromotion, RequestPromotion, Rollback
from events.model.events import AliasSet, ModelEvent, PromotionExecuted, VersionDeprecated
from events.policy import GovernancePolicy, MetricGate, TransitionRule
from events.stages import Stage, TransitionKind
from tests.unit.domain_helpers import (
    cmd,
    given,
    in_production,
    policy_set,
    requested,
    transitioned,
    when,
    with_versions,
)

D, S, P, A = Stage.DEVELOPMENT, Stage.STAGING, Stage.PRODUCTION, Stage.ARCHIVED


def _two_releases() -> list[ModelEvent]:
    """v1 was in production, then v2 replaced it (v1 archived by the default demotion)."""
    return [
        *with_versions(2),
        *in_production(1),
        transitioned(2, D, S),
        transitioned(1, P, A, TransitionKind.DEMOTION),
        transitioned(2, S, P),
    ]


def test_rollback_re_promotes_the_previous_production_version_even_from_archived() -> None:
    assert when(cmd(Rollback, reason="p99 latency doubled"), given(_two_releases())) == [
        transitioned(2, P, A, TransitionKind.DEMOTION, comment="p99 latency doubled"),
        transitioned(1, A, P, TransitionKind.ROLLBACK, comment="p99 latency doubled"),
    ]


def test_aliases_of_the_demoted_version_follow_the_rollback() -> None:
    history = [
        *_two_releases(),
        AliasSet(alias="champion", version=2, previous_version=None, comment=""),
    ]
    events = when(cmd(Rollback, reason="incident"), given(history))
    assert events[0] == AliasSet(
        alias="champion", version=1, previous_version=2, comment="incident"
    )
    state = given(history, events)
    assert (state.production, state.aliases) == (1, {"champion": 1})
    assert state.version(2).stage == A


def test_a_second_rollback_undoes_the_first() -> None:
    history = _two_releases()
    history += when(cmd(Rollback, reason="bad"), given(history))
    history += when(cmd(Rollback, reason="false alarm"), given(history))
    assert given(history).production == 2


def test_with_no_version_in_production_rollback_re_promotes_the_last_one() -> None:
    history = [*with_versions(1), *in_production(1), transitioned(1, P, A)]
    assert when(cmd(Rollback, reason="archived by mistake"), given(history)) == [
        transitioned(1, A, P, TransitionKind.ROLLBACK, comment="archived by mistake")
    ]


def test_rollback_without_an_earlier_production_version_is_invalid() -> None:
    with pytest.raises(InvalidTransitionError):
        when(cmd(Rollback, reason="x"), given(with_versions(1), in_production(1)))
    with pytest.raises(InvalidTransitionError):
        when(cmd(Rollback, reason="x"), given(with_versions(1)))


def test_rollback_needs_a_reason() -> None:
    with pytest.raises(ValidationError) as error:
        when(cmd(Rollback, reason=""), given(_two_releases()))
    assert error.value.field == "reason"


def test_rollback_to_a_deprecated_version_is_invalid() -> None:
    with pytest.raises(InvalidTransitionError):
        when(
            cmd(Rollback, reason="x"),
            given(_two_releases(), VersionDeprecated(version=1, reason="bug")),
        )


def test_rollback_skips_metric_gates_the_version_passed_when_it_was_promoted() -> None:
    gated = GovernancePolicy(
        transitions=(
            TransitionRule(
                from_stage=S, to_stage=P, gates=(MetricGate(metric="auc", threshold=0.99),)
            ),
        )
    )
    assert when(cmd(Rollback, reason="x"), given(_two_releases(), policy_set(gated)))


def test_when_the_policy_requires_approval_a_direct_rollback_is_refused_naming_the_rule() -> None:
    policy = GovernancePolicy(rollback_approvals=1)
    with pytest.raises(PolicyViolationError) as error:
        when(cmd(Rollback, reason="x"), given(_two_releases(), policy_set(policy)))
    assert error.value.rule == "rollback_requires_approval"


def test_a_rollback_request_executes_after_its_approvals() -> None:
    policy = GovernancePolicy(rollback_approvals=1)
    history = [*_two_releases(), policy_set(policy)]
    events = when(
        cmd(
            RequestPromotion,
            actor="bob",
            request_id="r1",
            version=1,
            rollback=True,
            justification="incident 42",
        ),
        given(history),
    )
    assert events == [
        requested("r1", 1, P, by="bob", approvals=1, rollback=True, justification="incident 42")
    ]
    history += events
    executed = when(cmd(ApprovePromotion, actor="carol", request_id="r1"), given(history))
    assert isinstance(executed[1], PromotionExecuted)
    assert executed[1].rules == ("rollback",)
    assert executed[-1] == transitioned(
        1, A, P, TransitionKind.ROLLBACK, comment="incident 42", request_id="r1"
    )


def test_a_rollback_request_must_name_the_rollback_target() -> None:
    with pytest.raises(InvalidTransitionError):
        when(
            cmd(RequestPromotion, request_id="r1", version=2, rollback=True, justification="x"),
            given(_two_releases()),
        )
    with pytest.raises(ValidationError):
        when(
            cmd(
                RequestPromotion,
                request_id="r1",
                version=1,
                rollback=True,
                alias="champion",
                justification="x",
            ),
            given(_two_releases()),
        )
