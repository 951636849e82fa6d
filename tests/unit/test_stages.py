"""Stage transitions under the governance policy; production holds one version at a time."""

from __future__ import annotations

import pytest

from events.errors import InvalidTransitionError, PolicyViolationError, ValidationError
from events.model.commands import ArchiveVersion, RestoreVersion, TransitionStage
from events.model.events import AliasRemovalCause, AliasRemoved, AliasSet
from events.policy import DEFAULT_POLICY, GateOp, GovernancePolicy, MetricGate, TransitionRule
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
GATED = GovernancePolicy(
    transitions=(
        TransitionRule(from_stage=D, to_stage=S),
        TransitionRule(
            from_stage=S,
            to_stage=P,
            gates=(MetricGate(metric="auc", dataset="holdout", threshold=0.9),),
        ),
    )
)


def _alias(name: str, version: int, previous: int | None = None) -> AliasSet:
    return AliasSet(alias=name, version=version, previous_version=previous, comment="")


@pytest.mark.parametrize(("source", "target"), [(D, S), (S, D), (S, P), (D, A), (S, A), (P, A)])
def test_the_default_policy_allows_its_documented_transitions(source: Stage, target: Stage) -> None:
    history = with_versions(1)
    if source in (S, P):
        history.append(transitioned(1, D, S))
    if source == P:
        history.append(transitioned(1, S, P))
    assert when(cmd(TransitionStage, version=1, to_stage=target, comment="go"), given(history))[
        -1
    ] == transitioned(1, source, target, comment="go")


@pytest.mark.parametrize(("source", "target"), [(D, P), (P, S), (P, D)])
def test_transitions_the_policy_does_not_list_are_invalid(source: Stage, target: Stage) -> None:
    history = with_versions(1)
    if source == P:
        history += in_production(1)
    with pytest.raises(InvalidTransitionError):
        when(cmd(TransitionStage, version=1, to_stage=target), given(history))


def test_a_transition_to_the_current_stage_is_invalid() -> None:
    with pytest.raises(InvalidTransitionError):
        when(cmd(TransitionStage, version=1, to_stage=D), given(with_versions(1)))


@pytest.mark.parametrize("target", [D, S, P])
def test_archived_is_final_for_stage_transitions(target: Stage) -> None:
    state = given(with_versions(1), transitioned(1, D, A))
    with pytest.raises(InvalidTransitionError):
        when(cmd(TransitionStage, version=1, to_stage=target), state)


def test_promoting_a_version_demotes_the_previous_production_version_in_the_same_decision() -> None:
    state = given(with_versions(2), in_production(1), transitioned(2, D, S))

    assert when(cmd(TransitionStage, version=2, to_stage=P, comment="better"), state) == [
        transitioned(1, P, A, TransitionKind.DEMOTION, comment="better"),
        transitioned(2, S, P, comment="better"),
    ]


def test_the_demotion_target_comes_from_the_policy() -> None:
    policy = permissive(demote_production_to=S)
    state = given(with_versions(2), policy_set(policy), in_production(1), transitioned(2, D, S))

    events = when(cmd(TransitionStage, version=2, to_stage=P), state)

    assert events[0] == transitioned(1, P, S, TransitionKind.DEMOTION)
    after = given(
        with_versions(2), policy_set(policy), in_production(1), transitioned(2, D, S), events
    )
    assert (after.production, after.version(1).stage) == (2, S)


def test_a_transition_that_needs_approval_cannot_be_made_directly() -> None:
    policy = GovernancePolicy(transitions=(TransitionRule(from_stage=D, to_stage=S, approvals=1),))
    with pytest.raises(PolicyViolationError) as error:
        when(
            cmd(TransitionStage, version=1, to_stage=S, registry_policy=policy),
            given(with_versions(1)),
        )
    assert error.value.rule == "approval_required"


def test_the_model_policy_wins_over_the_registry_policy_and_clearing_it_falls_back() -> None:
    strict = GovernancePolicy(transitions=(TransitionRule(from_stage=D, to_stage=S, approvals=1),))
    with pytest.raises(PolicyViolationError):
        when(
            cmd(TransitionStage, version=1, to_stage=S, registry_policy=DEFAULT_POLICY),
            given(with_versions(1), policy_set(strict)),
        )
    assert when(
        cmd(TransitionStage, version=1, to_stage=S, registry_policy=strict),
        given(with_versions(1), policy_set(DEFAULT_POLICY)),
    )


def test_a_metric_gate_refuses_a_direct_promotion_naming_the_rule() -> None:
    state = given(with_versions(1), policy_set(GATED), transitioned(1, D, S))
    with pytest.raises(PolicyViolationError) as error:
        when(
            cmd(TransitionStage, version=1, to_stage=P, metrics={1: {"auc": {"holdout": 0.85}}}),
            state,
        )
    assert error.value.rule == "metric_gate"
    assert error.value.details["gate"] == "auc >= 0.9 on holdout"


def test_a_metric_gate_lets_a_version_with_good_metrics_through() -> None:
    state = given(with_versions(1), policy_set(GATED), transitioned(1, D, S))
    assert when(
        cmd(TransitionStage, version=1, to_stage=P, metrics={1: {"auc": {"holdout": 0.93}}}), state
    ) == [transitioned(1, S, P)]


def test_a_gate_relative_to_production_compares_with_the_current_production_version() -> None:
    gate = MetricGate(metric="auc", dataset="holdout", op=GateOp.GE, compare_to_production=True)
    policy = GovernancePolicy(
        transitions=(TransitionRule(from_stage=S, to_stage=P, gates=(gate,)),)
    )
    state = given(with_versions(2), in_production(1), transitioned(2, D, S))
    metrics = {1: {"auc": {"holdout": 0.91}}, 2: {"auc": {"holdout": 0.90}}}
    with pytest.raises(PolicyViolationError):
        when(
            cmd(TransitionStage, version=2, to_stage=P, registry_policy=policy, metrics=metrics),
            state,
        )
    metrics[2] = {"auc": {"holdout": 0.95}}
    assert when(
        cmd(TransitionStage, version=2, to_stage=P, registry_policy=policy, metrics=metrics), state
    )


def test_archiving_a_version_needs_a_reason_and_removes_its_aliases_first() -> None:
    state = given(with_versions(1), _alias("champion", 1), _alias("stable", 1))
    with pytest.raises(ValidationError):
        when(cmd(ArchiveVersion, version=1, reason=""), state)

    assert when(cmd(ArchiveVersion, version=1, reason="superseded"), state) == [
        AliasRemoved(
            alias="champion",
            version=1,
            cause=AliasRemovalCause.VERSION_ARCHIVED,
            comment="superseded",
        ),
        AliasRemoved(
            alias="stable",
            version=1,
            cause=AliasRemovalCause.VERSION_ARCHIVED,
            comment="superseded",
        ),
        transitioned(1, D, A, comment="superseded"),
    ]


def test_archiving_the_production_version_leaves_production_empty() -> None:
    history = [*with_versions(1), *in_production(1)]
    events = when(cmd(ArchiveVersion, version=1, reason="incident"), given(history))
    assert given(history, events).production is None


def test_only_an_admin_restores_an_archived_version_and_it_returns_to_development() -> None:
    state = given(with_versions(1), transitioned(1, D, A))
    with pytest.raises(PolicyViolationError) as error:
        when(cmd(RestoreVersion, version=1, reason="needed"), state)
    assert error.value.rule == "admin_required"

    assert when(cmd(RestoreVersion, version=1, reason="needed", actor_is_admin=True), state) == [
        transitioned(1, A, D, TransitionKind.RESTORE, comment="needed")
    ]


def test_restoring_a_version_that_is_not_archived_is_invalid() -> None:
    with pytest.raises(InvalidTransitionError):
        when(
            cmd(RestoreVersion, version=1, reason="x", actor_is_admin=True), given(with_versions(1))
        )
