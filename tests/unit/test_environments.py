"""Environments: a stage may be per environment (production in ``eu`` and ``us`` at once),
with exclusivity per environment."""

from __future__ import annotations

import msgspec
import pytest

from events.catalogue import CODEC
from events.errors import InvalidTransitionError, PolicyViolationError, ValidationError
from events.model.commands import (
    ApprovePromotion,
    ArchiveVersion,
    RequestPromotion,
    Rollback,
    SetModelPolicy,
    TransitionStage,
)
from events.model.decider import MODEL
from events.model.events import ModelEvent, PromotionExecuted, StageTransitioned
from events.model.side_effects import side_effects
from events.policy import GovernancePolicy, TransitionRule, validate_policy
from events.stages import Stage, StageDefinition, TransitionKind
from tests.unit.domain_helpers import (
    cmd,
    given,
    policy_set,
    registered,
    transitioned,
    version_registered,
    when,
)


def _rule(source: str, target: str, approvals: int = 0) -> TransitionRule:
    return TransitionRule(from_stage=source, to_stage=target, approvals=approvals)


def regional(approvals: int = 0) -> GovernancePolicy:
    return GovernancePolicy(
        stages=(
            StageDefinition(name=Stage.DEVELOPMENT),
            StageDefinition(name=Stage.STAGING),
            StageDefinition(name=Stage.PRODUCTION, exclusive=True, environments=("eu", "us")),
            StageDefinition(name=Stage.ARCHIVED, terminal=True),
        ),
        transitions=(
            _rule(Stage.DEVELOPMENT, Stage.STAGING),
            _rule(Stage.STAGING, Stage.PRODUCTION, approvals),
            _rule(Stage.PRODUCTION, Stage.ARCHIVED, approvals),
            _rule(Stage.STAGING, Stage.ARCHIVED),
        ),
        rollback_approvals=0,
    )


def entered(
    version: int, from_stage: str, to_stage: str, environment: str, **fields: object
) -> StageTransitioned:
    return StageTransitioned(
        version=version,
        from_stage=from_stage,
        to_stage=to_stage,
        kind=TransitionKind.DIRECT,
        comment="",
        environment=environment,
        **fields,  # type: ignore[arg-type]
    )


def _v7_in_eu_and_us_v8_in_staging(policy: GovernancePolicy) -> list[ModelEvent]:
    return [
        registered(),
        policy_set(policy),
        version_registered(7),
        transitioned(7, Stage.DEVELOPMENT, Stage.STAGING),
        entered(7, Stage.STAGING, Stage.PRODUCTION, "eu"),
        entered(7, Stage.PRODUCTION, Stage.PRODUCTION, "us"),
        version_registered(8),
        transitioned(8, Stage.DEVELOPMENT, Stage.STAGING),
    ]


def test_a_version_is_in_production_in_two_environments_at_once() -> None:
    # given v7 in production@eu and then added to production@us
    state = given(_v7_in_eu_and_us_v8_in_staging(regional()))
    # then it is in production in both
    v7 = state.version(7)
    assert (v7.stage, v7.environment_names()) == (Stage.PRODUCTION, ("eu", "us"))
    assert state.in_stage(Stage.PRODUCTION, "eu") == state.in_stage(Stage.PRODUCTION, "us") == (7,)


def test_adding_an_environment_to_a_version_already_in_the_stage_is_one_event() -> None:
    # given v7 in production@eu
    history = _v7_in_eu_and_us_v8_in_staging(regional())[:5]
    # when it is moved to production@us too
    events = when(
        cmd(
            TransitionStage,
            version=7,
            to_stage=Stage.PRODUCTION,
            environment="us",
            registry_policy=regional(),
        ),
        given(history),
    )
    # then one event adds the environment, nothing is demoted
    assert events == [entered(7, Stage.PRODUCTION, Stage.PRODUCTION, "us")]


def test_promoting_to_one_environment_moves_the_holder_out_of_that_environment_only() -> None:
    # given v7 in production@eu and @us, v8 in staging
    state = given(_v7_in_eu_and_us_v8_in_staging(regional()))
    # when v8 enters production@eu
    events = when(
        cmd(TransitionStage, version=8, to_stage=Stage.PRODUCTION, environment="eu"), state
    )
    # then v7 leaves eu only and stays in production@us
    assert events == [
        StageTransitioned(
            version=7,
            from_stage=Stage.PRODUCTION,
            to_stage=Stage.PRODUCTION,
            kind=TransitionKind.DEMOTION,
            comment="",
            from_environment="eu",
        ),
        entered(8, Stage.STAGING, Stage.PRODUCTION, "eu"),
    ]
    after = given(_v7_in_eu_and_us_v8_in_staging(regional()), events)
    assert after.in_stage(Stage.PRODUCTION, "eu") == (8,)
    assert after.in_stage(Stage.PRODUCTION, "us") == (7,)
    assert after.version(7).stage == Stage.PRODUCTION


def test_the_holder_of_its_last_environment_is_demoted_out_of_the_stage() -> None:
    # given v7 in production@eu only
    history = _v7_in_eu_and_us_v8_in_staging(regional())
    del history[5]
    # when v8 enters production@eu
    events = when(
        cmd(TransitionStage, version=8, to_stage=Stage.PRODUCTION, environment="eu"),
        given(history),
    )
    # then v7 goes to the demotion target, leaving eu
    assert events[0] == StageTransitioned(
        version=7,
        from_stage=Stage.PRODUCTION,
        to_stage=Stage.ARCHIVED,
        kind=TransitionKind.DEMOTION,
        comment="",
        from_environment="eu",
    )
    after = given(history, events)
    assert after.version(7).environment_names() == ()
    assert after.production == 8


def test_archiving_a_version_clears_all_its_environments() -> None:
    # given v7 in production@eu and @us
    state = given(_v7_in_eu_and_us_v8_in_staging(regional()))
    # when it is archived
    events = when(cmd(ArchiveVersion, version=7, reason="retired"), state)
    after = given(_v7_in_eu_and_us_v8_in_staging(regional()), events)
    # then it is in no environment any more
    assert after.version(7).stage == Stage.ARCHIVED
    assert after.version(7).environment_names() == ()
    assert after.in_stage(Stage.PRODUCTION) == ()
    assert after.production is None


@pytest.mark.parametrize(
    ("stage", "environment", "rule"),
    [
        (Stage.PRODUCTION, None, "required"),
        (Stage.PRODUCTION, "apac", "undefined_environment"),
        (Stage.STAGING, "eu", "no_environments"),
    ],
)
def test_a_move_naming_no_unknown_or_needless_environment_is_refused(
    stage: str, environment: str | None, rule: str
) -> None:
    # given v8 in development under the regional policy
    state = given(registered(), policy_set(regional()), version_registered(8))
    if stage == Stage.PRODUCTION:
        state = given(
            registered(),
            policy_set(regional()),
            version_registered(8),
            transitioned(8, Stage.DEVELOPMENT, Stage.STAGING),
        )
    # when it is moved naming that environment
    with pytest.raises(ValidationError) as error:
        when(cmd(TransitionStage, version=8, to_stage=stage, environment=environment), state)
    # then the refusal names the field and the rule
    assert (error.value.field, error.value.rule) == ("environment", rule)


def test_moving_into_an_environment_the_version_is_in_already_is_refused() -> None:
    state = given(_v7_in_eu_and_us_v8_in_staging(regional()))
    with pytest.raises(InvalidTransitionError, match="already in production@eu"):
        when(cmd(TransitionStage, version=7, to_stage=Stage.PRODUCTION, environment="eu"), state)


def test_a_promotion_request_names_its_environment_and_executes_there_on_approval() -> None:
    # given v7 in production@eu and @us, and a policy asking one approval for production
    policy = regional(approvals=1)
    history = _v7_in_eu_and_us_v8_in_staging(policy)
    # when bob requests v8 for production@us and carol approves
    requested = when(
        cmd(
            RequestPromotion,
            actor="bob",
            request_id="r1",
            version=8,
            target_stage=Stage.PRODUCTION,
            environment="us",
            justification="ready",
        ),
        given(history),
    )
    assert len(requested) == 1
    executed = when(
        cmd(ApprovePromotion, actor="carol", request_id="r1"), given(history, requested)
    )
    # then the execution records the environment and only us changes hands
    execution = [e for e in executed if isinstance(e, PromotionExecuted)]
    assert [e.environment for e in execution] == ["us"]
    after = given(history, requested, executed)
    assert after.in_stage(Stage.PRODUCTION, "us") == (8,)
    assert after.in_stage(Stage.PRODUCTION, "eu") == (7,)


def test_a_promotion_request_without_the_environment_is_refused() -> None:
    history = _v7_in_eu_and_us_v8_in_staging(regional(approvals=1))
    with pytest.raises(ValidationError) as error:
        when(
            cmd(
                RequestPromotion,
                request_id="r1",
                version=8,
                target_stage=Stage.PRODUCTION,
                justification="ready",
            ),
            given(history),
        )
    assert (error.value.field, error.value.rule) == ("environment", "required")


def test_a_rollback_is_refused_when_production_is_per_environment() -> None:
    state = given(_v7_in_eu_and_us_v8_in_staging(regional()))
    with pytest.raises(ValidationError) as error:
        when(cmd(Rollback, reason="bad"), state)
    assert (error.value.field, error.value.rule) == ("rollback", "per_environment")


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        (StageDefinition(name="s", environments=()), "policy.stages[1].environments"),
        (StageDefinition(name="s", environments=("eu", "eu")), "policy.stages[1].environments"),
        (StageDefinition(name="s", environments=("e u",)), "policy.stages[1].environments[0]"),
        (
            StageDefinition(name="s", terminal=True, environments=("eu",)),
            "policy.stages[1].environments",
        ),
    ],
)
def test_invalid_environment_lists_are_refused_naming_the_field(
    definition: StageDefinition, field: str
) -> None:
    policy = GovernancePolicy(stages=(StageDefinition(name="dev"), definition), transitions=())
    with pytest.raises(ValidationError) as error:
        validate_policy(policy)
    assert error.value.field == field


def test_a_policy_without_environments_keeps_its_recorded_bytes() -> None:
    # given a policy defining stages without environments
    policy = GovernancePolicy(stages=(StageDefinition(name="dev"),), transitions=())
    # then its encoding does not mention environments
    assert b"environments" not in msgspec.json.encode(policy)
    assert b"environments" in msgspec.json.encode(regional())


def test_a_transition_recorded_before_environments_folds_to_the_same_state() -> None:
    # given the bytes of a stage change recorded before environments existed
    recorded = (
        b'{"comment":"","from_stage":"development","kind":"direct","request_id":null,'
        b'"to_stage":"staging","version":1}'
    )
    event = CODEC.decode_data("model.stage_transitioned", 1, recorded)
    # then it decodes with no environment, re-encodes to the same bytes, folds as before
    assert isinstance(event, StageTransitioned)
    assert event.entered_environment() is None and event.left_environment() is None
    assert CODEC.encode(event) == recorded
    state = MODEL.fold([registered(), version_registered(1), event])
    assert b"environments" not in msgspec.json.encode(state)


def test_an_event_with_an_environment_round_trips_through_the_codec() -> None:
    # given a stage change into production@eu
    event = entered(8, Stage.STAGING, Stage.PRODUCTION, "eu")
    # when it is encoded and decoded
    data = CODEC.encode(event)
    again = CODEC.decode_data("model.stage_transitioned", 1, data)
    # then the environment survives, and only it was added to the old shape
    assert again == event
    assert data == (
        b'{"comment":"","environment":"eu","from_stage":"staging","kind":"direct",'
        b'"request_id":null,"to_stage":"production","version":8}'
    )


def test_the_receipt_says_the_holder_left_one_environment_only() -> None:
    # given v7 in production@eu and @us, v8 in staging
    state = given(_v7_in_eu_and_us_v8_in_staging(regional()))
    # when v8 enters production@eu
    events = when(
        cmd(TransitionStage, version=8, to_stage=Stage.PRODUCTION, environment="eu"), state
    )
    # then the receipt's "also moved" names the environment v7 left
    assert side_effects(events) == [
        "version 7: out of production@eu, still in production elsewhere (demoted)"
    ]


def test_a_policy_that_drops_an_environment_a_version_is_in_is_refused() -> None:
    # given v7 in production@eu and @us
    state = given(_v7_in_eu_and_us_v8_in_staging(regional()))
    eu_only = msgspec.structs.replace(
        regional(),
        stages=tuple(
            msgspec.structs.replace(d, environments=("eu",)) if d.name == Stage.PRODUCTION else d
            for d in regional().stage_definitions()
        ),
    )
    # when the model's policy would keep production in eu only
    with pytest.raises(PolicyViolationError) as error:
        when(cmd(SetModelPolicy, policy=eu_only), state)
    # then it is refused, naming the environment in use
    assert error.value.rule == "environment_in_use"
    assert error.value.details["environment"] == "us"
