"""Custom stages: a policy names the lifecycle (order, initial, terminal, exclusive stages)."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from events.errors import InvalidTransitionError, PolicyViolationError, ValidationError
from events.model.commands import (
    ArchiveVersion,
    ClearModelPolicy,
    RegisterVersion,
    RequestPromotion,
    RestoreVersion,
    SetAlias,
    SetModelPolicy,
    TransitionStage,
)
from events.model.events import AliasRemovalCause, AliasRemoved, ModelEvent, VersionRegistered
from events.policy import DEFAULT_POLICY, GovernancePolicy, TransitionRule, validate_policy
from events.stages import Stage, StageDefinition, TransitionKind
from tests.unit.domain_helpers import (
    cmd,
    content,
    given,
    policy_set,
    registered,
    transitioned,
    version_registered,
    when,
    with_versions,
)


def _rule(source: str, target: str, approvals: int = 0) -> TransitionRule:
    return TransitionRule(from_stage=source, to_stage=target, approvals=approvals)


# The glossary's lifecycle, plus a canary slot that holds one version and hands the
# displaced one back to staging, and a terminal "retired".
LIFECYCLE = GovernancePolicy(
    stages=(
        StageDefinition(name="training"),
        StageDefinition(name="staging"),
        StageDefinition(name="canary", exclusive=True, demote_to="staging"),
        StageDefinition(name="production", exclusive=True),
        StageDefinition(name="retired", terminal=True),
    ),
    transitions=(
        _rule("training", "staging"),
        _rule("staging", "canary"),
        _rule("canary", "production"),
        _rule("staging", "retired"),
        _rule("training", "retired"),
        _rule("production", "retired"),
    ),
    demote_production_to="retired",
    rollback_approvals=0,
)


def _history(*stages: str) -> list[ModelEvent]:
    """Versions 1.. registered under LIFECYCLE, version n moved along ``stages[n-1]``."""
    history: list[ModelEvent] = [registered(), policy_set(LIFECYCLE)]
    path = ["training", "staging", "canary", "production"]
    for number, target in enumerate(stages, start=1):
        history.append(version_registered(number, stage="training"))
        if target == "retired":
            history.append(transitioned(number, "training", "retired"))
            continue
        for source, step in itertools.pairwise(path):
            if path.index(step) > path.index(target):
                break
            history.append(transitioned(number, source, step))
    return history


def test_a_new_version_starts_in_the_policy_s_initial_stage() -> None:
    # given a model whose policy starts versions in training
    state = given(registered(), policy_set(LIFECYCLE))
    # when a version is registered
    events = when(cmd(RegisterVersion, content=content(1)), state)
    # then it is recorded in training, and folds there
    assert isinstance(events[0], VersionRegistered)
    assert events[0].stage == "training"
    assert given(registered(), policy_set(LIFECYCLE), *events).version(1).stage == "training"


def test_under_the_default_policy_the_registration_bytes_do_not_name_a_stage() -> None:
    # given a model under the default policy
    state = given(registered())
    # when a version is registered
    events = when(cmd(RegisterVersion, content=content(1)), state)
    # then the event is encoded as it always was (no stage field) and folds in development
    assert b'"stage"' not in msgspec.json.encode(events[0])
    assert given(registered(), *events).version(1).stage == Stage.DEVELOPMENT


def test_an_explicit_initial_stage_wins_over_the_first_listed() -> None:
    policy = msgspec.structs.replace(LIFECYCLE, initial_stage="staging")
    validate_policy(policy)
    events = when(cmd(RegisterVersion, content=content(1)), given(registered(), policy_set(policy)))
    assert isinstance(events[0], VersionRegistered)
    assert events[0].stage == "staging"


def test_entering_an_exclusive_stage_demotes_its_holder_to_the_stage_s_demote_to() -> None:
    # given version 1 in canary and version 2 in staging
    state = given(*_history("canary", "staging"))
    # when version 2 enters canary
    events = when(cmd(TransitionStage, version=2, to_stage="canary", comment="next"), state)
    # then version 1 goes back to staging in the same decision
    assert events == [
        transitioned(1, "canary", "staging", TransitionKind.DEMOTION, comment="next"),
        transitioned(2, "staging", "canary", comment="next"),
    ]
    after = given(*_history("canary", "staging"), *events)
    assert after.in_stage("canary") == (2,)


def test_a_displaced_production_version_goes_to_demote_production_to_and_loses_aliases() -> None:
    # given version 1 in production with an alias, version 2 in canary
    history = [*_history("production", "canary")]
    state = given(*history)
    state = given(*history, *when(cmd(SetAlias, version=1, alias="live"), state))
    # when version 2 is promoted to production
    events = when(cmd(TransitionStage, version=2, to_stage="production"), state)
    # then version 1 is retired (terminal: its alias goes), and version 2 holds production
    assert events == [
        AliasRemoved(alias="live", version=1, cause=AliasRemovalCause.VERSION_ARCHIVED, comment=""),
        transitioned(1, "production", "retired", TransitionKind.DEMOTION),
        transitioned(2, "canary", "production"),
    ]


def test_a_terminal_stage_is_final_except_for_an_admin_restore_to_the_initial_stage() -> None:
    # given a retired version
    state = given(*_history("retired"))
    # when someone moves it on, then it is refused
    with pytest.raises(InvalidTransitionError, match="retired"):
        when(cmd(TransitionStage, version=1, to_stage="staging"), state)
    # and it cannot be aliased
    with pytest.raises(InvalidTransitionError):
        when(cmd(SetAlias, version=1, alias="live"), state)
    # when an admin restores it, then it returns to training
    restored = when(
        cmd(RestoreVersion, actor="root", version=1, reason="needed", actor_is_admin=True), state
    )
    assert restored == [
        transitioned(1, "retired", "training", TransitionKind.RESTORE, comment="needed")
    ]


def test_archiving_goes_to_the_policy_s_first_terminal_stage() -> None:
    state = given(*_history("staging"))
    events = when(cmd(ArchiveVersion, version=1, reason="superseded"), state)
    assert events == [transitioned(1, "staging", "retired", comment="superseded")]


@pytest.mark.parametrize("target", ["development", "canary-2", "Production"])
def test_a_transition_to_a_stage_the_policy_does_not_define_names_field_and_rule(
    target: str,
) -> None:
    # given a model on the custom lifecycle
    state = given(*_history("training"))
    # when a version is sent to a stage it does not define (or an invalid name)
    with pytest.raises(ValidationError) as error:
        when(cmd(TransitionStage, version=1, to_stage=target), state)
    # then the error names the field and the rule
    assert error.value.details["field"] == "to_stage"
    assert error.value.details["rule"] in {"undefined_stage", "pattern"}


def test_a_promotion_request_to_an_undefined_stage_names_target_stage() -> None:
    state = given(*_history("staging"))
    with pytest.raises(ValidationError) as error:
        when(
            cmd(
                RequestPromotion,
                request_id="r1",
                version=1,
                justification="go",
                target_stage="development",
            ),
            state,
        )
    assert (error.value.details["field"], error.value.details["rule"]) == (
        "target_stage",
        "undefined_stage",
    )


def test_a_policy_that_strands_a_version_is_refused_and_one_that_keeps_its_stages_is_not() -> None:
    # given versions in development and staging under the default policy
    history = [*with_versions(2), transitioned(2, Stage.DEVELOPMENT, Stage.STAGING)]
    state = given(*history)
    # when the model switches to a lifecycle without development
    with pytest.raises(PolicyViolationError) as error:
        when(cmd(SetModelPolicy, policy=LIFECYCLE), state)
    # then it is refused, naming the stranded version and stage
    assert error.value.rule == "stage_in_use"
    assert (error.value.details["stage"], error.value.details["version"]) == ("development", 1)
    # and once version 1 is archived, only staging and archived are used: a lifecycle
    # that keeps both is accepted
    keeping = msgspec.structs.replace(
        LIFECYCLE,
        stages=(*LIFECYCLE.stage_definitions(), StageDefinition(name="archived", terminal=True)),
    )
    state = given(*history, transitioned(1, Stage.DEVELOPMENT, Stage.ARCHIVED))
    assert when(cmd(SetModelPolicy, policy=keeping), state) == [policy_set(keeping)]


def test_clearing_a_model_policy_is_refused_when_the_registry_default_would_strand_a_version() -> (
    None
):
    state = given(*_history("canary"))
    with pytest.raises(PolicyViolationError) as error:
        when(cmd(ClearModelPolicy, registry_policy=DEFAULT_POLICY), state)
    assert error.value.rule == "stage_in_use"


def test_a_version_left_in_a_dropped_stage_can_only_be_restored_by_an_admin() -> None:
    # given a version in canary, and a policy (as a racing registry change could leave it)
    # that no longer defines canary
    state = given(*_history("canary"))
    policy = msgspec.structs.replace(
        LIFECYCLE,
        stages=tuple(d for d in LIFECYCLE.stage_definitions() if d.name != "canary"),
        transitions=tuple(
            r for r in LIFECYCLE.transitions if "canary" not in (r.from_stage, r.to_stage)
        ),
    )
    validate_policy(policy)
    state = msgspec.structs.replace(state, policy=policy)
    # when it is moved, then it is refused with the way out
    with pytest.raises(InvalidTransitionError, match="admin restore"):
        when(cmd(TransitionStage, version=1, to_stage="production"), state)
    # when an admin restores it, then it is back in training
    assert when(
        cmd(RestoreVersion, actor="root", version=1, reason="stranded", actor_is_admin=True),
        state,
    ) == [transitioned(1, "canary", "training", TransitionKind.RESTORE, comment="stranded")]


@pytest.mark.parametrize(
    ("stages", "extra", "field", "rule"),
    [
        ((StageDefinition(name="Training"),), {}, "policy.stages[0].name", "pattern"),
        (
            (StageDefinition(name="a"), StageDefinition(name="a")),
            {},
            "policy.stages[1].name",
            "unique",
        ),
        (
            (StageDefinition(name="a"), StageDefinition(name="b", terminal=True, exclusive=True)),
            {},
            "policy.stages[1]",
            "terminal_not_exclusive",
        ),
        (
            (StageDefinition(name="a"), StageDefinition(name="production")),
            {},
            "policy.stages[1].exclusive",
            "production_is_exclusive",
        ),
        (
            (StageDefinition(name="a", terminal=True), StageDefinition(name="b")),
            {},
            "policy.initial_stage",
            "initial_is_plain",
        ),
        (
            (StageDefinition(name="a"),),
            {"initial_stage": "z"},
            "policy.initial_stage",
            "undefined_stage",
        ),
        (
            (StageDefinition(name="a"), StageDefinition(name="live", exclusive=True)),
            {"demote_production_to": "gone"},
            "policy.demote_production_to",
            "undefined_stage",
        ),
    ],
)
def test_invalid_lifecycles_are_refused_naming_field_and_rule(
    stages: tuple[StageDefinition, ...], extra: dict[str, str], field: str, rule: str
) -> None:
    policy = GovernancePolicy(stages=stages, transitions=(), **extra)  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as error:
        validate_policy(policy)
    assert (error.value.details["field"], error.value.details["rule"]) == (field, rule)


def test_a_transition_naming_an_undefined_stage_is_refused() -> None:
    policy = msgspec.structs.replace(LIFECYCLE, transitions=(_rule("training", "qa"),))
    with pytest.raises(ValidationError) as error:
        validate_policy(policy)
    assert (error.value.details["field"], error.value.details["rule"]) == (
        "policy.transitions[0].to_stage",
        "undefined_stage",
    )


def test_leaving_an_exclusive_stage_needs_what_entering_it_needs() -> None:
    policy = msgspec.structs.replace(
        LIFECYCLE,
        transitions=(
            *LIFECYCLE.transitions[:1],
            _rule("staging", "canary", approvals=2),
            _rule("canary", "staging"),
        ),
    )
    validate_policy(policy)
    state = given(*_history("canary"))
    state = msgspec.structs.replace(state, policy=policy)
    with pytest.raises(PolicyViolationError) as error:
        when(cmd(TransitionStage, version=1, to_stage="staging"), state)
    assert error.value.rule == "approval_required"


def test_one_exclusive_stage_per_environment_keeps_exclusivity_per_environment() -> None:
    # given production-eu and production-us as two exclusive stages: v1 in production-eu,
    # v2 in production-us, v3 in staging
    regional = GovernancePolicy(
        stages=(
            StageDefinition(name="staging"),
            StageDefinition(name="production-eu", exclusive=True, demote_to="staging"),
            StageDefinition(name="production-us", exclusive=True, demote_to="staging"),
        ),
        transitions=(_rule("staging", "production-eu"), _rule("staging", "production-us")),
    )
    validate_policy(regional)
    history: list[ModelEvent] = [registered(), policy_set(regional)]
    for number, target in ((1, "production-eu"), (2, "production-us"), (3, None)):
        history.append(version_registered(number, stage="staging"))
        if target is not None:
            history.append(transitioned(number, "staging", target))
    # when v3 enters production-eu
    events = when(cmd(TransitionStage, version=3, to_stage="production-eu"), given(*history))
    # then only eu's holder is demoted; us keeps v2
    assert events == [
        transitioned(1, "production-eu", "staging", TransitionKind.DEMOTION),
        transitioned(3, "staging", "production-eu"),
    ]
    after = given(*history, *events)
    assert (after.in_stage("production-eu"), after.in_stage("production-us")) == ((3,), (2,))
