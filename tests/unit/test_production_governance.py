"""Production and protected aliases change only through the policy's decision, on every route.

Issue 13 items 7 and 9: a rollback, an archive or a promotion's side effects reach
production or a protected alias only with the approvals a promotion to production needs.
"""

from __future__ import annotations

import pytest

from events.errors import PolicyViolationError
from events.model.commands import (
    ApprovePromotion,
    ArchiveVersion,
    RequestPromotion,
    Rollback,
    TransitionStage,
)
from events.model.events import AliasSet, ModelEvent, PromotionExecuted, StageTransitioned
from events.policy import DEFAULT_POLICY, AliasRule, GovernancePolicy, TransitionRule
from events.stages import Stage, TransitionKind
from tests.support.policies import permissive
from tests.unit.domain_helpers import (
    cmd,
    given,
    in_production,
    policy_set,
    transitioned,
    when,
    with_versions,
)

D, S, P, A = Stage.DEVELOPMENT, Stage.STAGING, Stage.PRODUCTION, Stage.ARCHIVED
CHAMPION = (AliasRule(alias="champion", approvals=2),)


def _two_releases() -> list[ModelEvent]:
    """v1 was in production, then v2 replaced it (v1 archived by the default demotion)."""
    return [
        *with_versions(2),
        *in_production(1),
        transitioned(2, D, S),
        transitioned(1, P, A, TransitionKind.DEMOTION),
        transitioned(2, S, P),
    ]


def _champion_on(version: int) -> AliasSet:
    return AliasSet(alias="champion", version=version, previous_version=None, comment="")


def _refused(command: object, *history: ModelEvent | list[ModelEvent]) -> PolicyViolationError:
    with pytest.raises(PolicyViolationError) as error:
        when(command, given(*history))
    return error.value


# --- item 7: rollback ---------------------------------------------------------------------


def test_under_the_default_policy_a_contributor_cannot_roll_back_production_directly() -> None:
    # given two releases under the registry's default policy
    # when a contributor rolls back
    refused = _refused(
        cmd(Rollback, reason="p99 doubled", registry_policy=DEFAULT_POLICY), _two_releases()
    )
    # then the rollback needs what a promotion to production needs
    assert refused.rule == "rollback_requires_approval"
    assert refused.details["approvals"] == 1


def test_a_rollback_request_under_the_default_policy_executes_only_with_an_approver() -> None:
    # given a rollback request by a contributor under the default policy
    history = _two_releases()
    history += when(
        cmd(
            RequestPromotion,
            actor="alice",
            request_id="r1",
            version=1,
            rollback=True,
            justification="incident 42",
            registry_policy=DEFAULT_POLICY,
        ),
        given(history),
    )
    assert given(history).production == 2
    # when an approver approves it
    events = when(
        cmd(ApprovePromotion, actor="bob", request_id="r1", registry_policy=DEFAULT_POLICY),
        given(history),
    )
    # then it executes with that approval as its evidence
    executed = next(e for e in events if isinstance(e, PromotionExecuted))
    assert (executed.approved_by, executed.approvals_required) == (("bob",), 1)
    assert given(history, events).production == 1


def test_a_policy_that_explicitly_allows_it_lets_a_rollback_through_without_approval() -> None:
    policy = GovernancePolicy(rollback_approvals=0)
    events = when(cmd(Rollback, reason="x", registry_policy=policy), given(_two_releases()))
    assert given(_two_releases(), events).production == 1


def test_a_rollback_that_would_move_a_protected_alias_needs_that_alias_s_approvals() -> None:
    # given a permissive policy that protects champion, held by the production version
    policy = permissive(protected_aliases=CHAMPION)
    history = [*_two_releases(), policy_set(policy), _champion_on(2)]
    # when rolling back directly (champion would follow the rollback to version 1)
    refused = _refused(cmd(Rollback, reason="x"), history)
    # then the protected alias's rule applies
    assert refused.rule == "rollback_requires_approval"
    assert refused.details["approvals"] == 2
    assert "protected_alias:champion" in refused.message


# --- item 9: archiving production, side effects on protected aliases -----------------------


@pytest.mark.parametrize(
    "command",
    [
        cmd(TransitionStage, version=1, to_stage=A, registry_policy=DEFAULT_POLICY),
        cmd(ArchiveVersion, version=1, reason="retire", registry_policy=DEFAULT_POLICY),
    ],
    ids=["stage", "archive"],
)
def test_archiving_the_production_version_follows_the_production_rule(command: object) -> None:
    refused = _refused(command, with_versions(1), in_production(1))
    assert refused.rule == "approval_required"


def test_a_production_exit_rule_of_zero_does_not_lower_the_production_bar() -> None:
    # given a policy whose way out of production asks for nothing, but the way in for one
    policy = GovernancePolicy(
        transitions=(
            TransitionRule(from_stage=S, to_stage=P, approvals=1),
            TransitionRule(from_stage=P, to_stage=A, approvals=0),
        )
    )
    # when a contributor archives the production version directly
    command = cmd(TransitionStage, version=1, to_stage=A, registry_policy=policy)
    # then it is refused: leaving production is a production change
    assert _refused(command, with_versions(1), in_production(1)).rule == "approval_required"


def test_a_promotion_may_not_silently_remove_a_protected_alias_from_the_demoted_version() -> None:
    # given champion (protected) on production version 1 and version 2 in staging
    policy = permissive(protected_aliases=CHAMPION)
    history = [
        *with_versions(2),
        policy_set(policy),
        *in_production(1),
        _champion_on(1),
        transitioned(2, D, S),
    ]
    # when version 2 is promoted, which would archive version 1 and drop champion
    refused = _refused(cmd(TransitionStage, version=2, to_stage=P), history)
    # then the promotion is refused, naming the alias
    assert (refused.rule, refused.details["alias"]) == ("protected_alias", "champion")
    # and a request that does not move champion along is refused up front
    refused = _refused(
        cmd(RequestPromotion, request_id="r1", version=2, target_stage=P, justification="v2"),
        history,
    )
    assert refused.rule == "protected_alias"


def test_a_promotion_that_moves_the_protected_alias_along_executes_with_its_approvals() -> None:
    policy = permissive(protected_aliases=CHAMPION)
    history = [
        *with_versions(2),
        policy_set(policy),
        *in_production(1),
        _champion_on(1),
        transitioned(2, D, S),
    ]
    request = cmd(
        RequestPromotion,
        request_id="r1",
        version=2,
        target_stage=P,
        alias="champion",
        justification="v2",
    )
    history += when(request, given(history))
    for approver in ("bob", "carol"):
        history += when(cmd(ApprovePromotion, actor=approver, request_id="r1"), given(history))
    state = given(history)
    assert (state.production, state.aliases) == (2, {"champion": 2})
    demoted = [
        e for e in history if isinstance(e, StageTransitioned) and e.kind == TransitionKind.DEMOTION
    ]
    assert [(e.version, e.to_stage) for e in demoted] == [(1, A)]
