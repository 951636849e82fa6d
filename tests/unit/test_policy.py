"""Governance policies: validation, combined requirements, metric gate evaluation."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from events.errors import InvalidTransitionError, PolicyViolationError, ValidationError
from events.policy import (
    DEFAULT_POLICY,
    AliasRule,
    GateOp,
    GovernancePolicy,
    MetricGate,
    TransitionRule,
    check_gates,
    evaluate_gates,
    requirement,
    validate_policy,
)
from events.stages import Stage

D, S, P, A = Stage.DEVELOPMENT, Stage.STAGING, Stage.PRODUCTION, Stage.ARCHIVED
AUC = MetricGate(metric="auc", dataset="holdout", threshold=0.9)


def test_the_default_policy_needs_an_approver_for_every_production_change_and_nothing_else() -> (
    None
):
    validate_policy(DEFAULT_POLICY)
    approvals = {(r.from_stage, r.to_stage): r.approvals for r in DEFAULT_POLICY.transitions}
    assert approvals == {(D, S): 0, (S, D): 0, (S, P): 1, (D, A): 0, (S, A): 0, (P, A): 1}
    assert not any(r.gates for r in DEFAULT_POLICY.transitions)
    assert DEFAULT_POLICY.demote_production_to == A
    assert DEFAULT_POLICY.separation_of_duties
    assert DEFAULT_POLICY.rollback_approvals is None
    assert DEFAULT_POLICY.rollback_requirement() == 1


def test_leaving_production_needs_what_entering_it_needs_whatever_the_exit_rule_says() -> None:
    # given a policy whose production -> archived rule asks for no approval
    policy = GovernancePolicy(
        transitions=(
            TransitionRule(from_stage=S, to_stage=P, approvals=2),
            TransitionRule(from_stage=P, to_stage=A, approvals=0),
        )
    )
    # when archiving the production version is judged
    needed = requirement(policy, P, A, None)
    # then it needs the production bar, and says why
    assert needed.approvals == 2
    assert needed.rules == ("transition:production->archived", "production_change")


def test_a_rollback_needs_what_a_promotion_to_production_needs_unless_the_policy_says_otherwise() -> (
    None
):
    gated = GovernancePolicy(transitions=(TransitionRule(from_stage=S, to_stage=P, approvals=2),))
    assert gated.rollback_requirement() == 2
    assert replace(gated, rollback_approvals=0).rollback_requirement() == 0
    assert replace(gated, rollback_approvals=3).rollback_requirement() == 3


@pytest.mark.parametrize(
    ("policy", "field", "rule"),
    [
        (
            GovernancePolicy(transitions=(TransitionRule(from_stage=A, to_stage=D),)),
            "policy.transitions[0]",
            "archived_is_final",
        ),
        (
            GovernancePolicy(transitions=(TransitionRule(from_stage=S, to_stage=S),)),
            "policy.transitions[0]",
            "no_op_transition",
        ),
        (
            GovernancePolicy(transitions=(TransitionRule(from_stage=S, to_stage=P),) * 2),
            "policy.transitions[1]",
            "unique",
        ),
        (
            GovernancePolicy(transitions=(TransitionRule(from_stage=S, to_stage=P, approvals=11),)),
            "policy.transitions[0].approvals",
            "range",
        ),
        (
            GovernancePolicy(protected_aliases=(AliasRule(alias="champion", approvals=0),)),
            "policy.protected_aliases[0].approvals",
            "range",
        ),
        (
            GovernancePolicy(protected_aliases=(AliasRule(alias="latest"),)),
            "policy.protected_aliases[0].alias",
            "reserved",
        ),
        (
            GovernancePolicy(
                transitions=(
                    TransitionRule(from_stage=S, to_stage=P, gates=(MetricGate(metric="auc"),)),
                )
            ),
            "policy.transitions[0].gates[0]",
            "gate_needs_bound",
        ),
        (
            GovernancePolicy(
                transitions=(
                    TransitionRule(
                        from_stage=S,
                        to_stage=P,
                        gates=(MetricGate(metric="auc", threshold=float("nan")),),
                    ),
                )
            ),
            "policy.transitions[0].gates[0].threshold",
            "finite",
        ),
        (GovernancePolicy(demote_production_to=P), "policy.demote_production_to", "not_production"),
        (GovernancePolicy(request_ttl_seconds=1), "policy.request_ttl_seconds", "range"),
        (GovernancePolicy(rollback_approvals=-1), "policy.rollback_approvals", "range"),
    ],
)
def test_an_inconsistent_policy_is_rejected_naming_the_field_and_rule(
    policy: GovernancePolicy, field: str, rule: str
) -> None:
    with pytest.raises(ValidationError) as error:
        validate_policy(policy)
    assert (error.value.field, error.value.rule) == (field, rule)


def test_a_requirement_combines_the_transition_and_the_protected_alias_and_the_stricter_count_wins() -> (
    None
):
    policy = GovernancePolicy(
        transitions=(TransitionRule(from_stage=S, to_stage=P, approvals=1, gates=(AUC,)),),
        protected_aliases=(AliasRule(alias="champion", approvals=2),),
    )
    needed = requirement(policy, S, P, "champion")
    assert needed.approvals == 2
    assert needed.gates == (AUC,)
    assert needed.rules == ("transition:staging->production", "protected_alias:champion")
    assert requirement(policy, S, None, "other").approvals == 0


def test_a_requirement_for_a_transition_the_policy_lacks_is_an_invalid_transition() -> None:
    with pytest.raises(InvalidTransitionError):
        requirement(DEFAULT_POLICY, D, P, None)


def test_a_gate_fails_when_the_candidate_has_no_value_and_names_itself() -> None:
    with pytest.raises(PolicyViolationError) as error:
        check_gates((AUC,), 2, None, {2: {"auc": {"validation": 0.99}}})
    assert error.value.rule == "metric_gate"
    assert "auc >= 0.9 on holdout" in error.value.message


@pytest.mark.parametrize(
    ("op", "value", "passed"),
    [
        (GateOp.GE, 0.9, True),
        (GateOp.GT, 0.9, False),
        (GateOp.LE, 0.9, True),
        (GateOp.LT, 0.8, True),
        (GateOp.LT, 0.95, False),
    ],
)
def test_gate_operators_compare_the_value_with_the_threshold(
    op: GateOp, value: float, passed: bool
) -> None:
    gate = MetricGate(metric="auc", op=op, threshold=0.9)
    [result] = evaluate_gates((gate,), 1, None, {1: {"auc": {"": value}}})
    assert result.passed is passed


def test_a_gate_against_production_passes_when_there_is_no_production_value_to_beat() -> None:
    gate = MetricGate(metric="loss", op=GateOp.LE, compare_to_production=True)
    assert evaluate_gates((gate,), 2, None, {2: {"loss": {"": 0.3}}})[0].passed
    assert evaluate_gates((gate,), 2, 1, {2: {"loss": {"": 0.3}}})[0].passed
    [worse] = evaluate_gates((gate,), 2, 1, {1: {"loss": {"": 0.2}}, 2: {"loss": {"": 0.3}}})
    assert not worse.passed
    assert worse.production_value == 0.2


def test_gate_descriptions_read_like_the_rule() -> None:
    both = MetricGate(metric="auc", dataset="holdout", threshold=0.9, compare_to_production=True)
    assert both.describe() == "auc >= 0.9 and production on holdout"


def test_a_policy_has_metric_gates_when_a_move_or_a_protected_alias_is_gated() -> None:
    gate = MetricGate(metric="auc", op=GateOp.GE, threshold=0.9)
    # the default policy gates nothing on metrics
    assert not DEFAULT_POLICY.has_metric_gates()
    # a gated transition, or a gated protected alias, makes it read metrics
    gated_move = replace(
        DEFAULT_POLICY,
        transitions=(
            TransitionRule(from_stage=Stage.STAGING, to_stage=Stage.PRODUCTION, gates=(gate,)),
        ),
    )
    gated_alias = replace(
        DEFAULT_POLICY, protected_aliases=(AliasRule(alias="champion", gates=(gate,)),)
    )
    assert gated_move.has_metric_gates() and gated_alias.has_metric_gates()
    # a protected alias with approvals only does not
    approved_alias = replace(DEFAULT_POLICY, protected_aliases=(AliasRule(alias="champion"),))
    assert not approved_alias.has_metric_gates()
