"""MLflow's ``archive_existing_versions``: a move to staging or production that archives the
other versions in that stage, in the same decision, each as the policy allows (pure)."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from events.errors import PolicyViolationError, ValidationError
from events.model.commands import TransitionStage
from events.model.events import AliasRemovalCause, AliasRemoved, AliasSet, StageTransitioned
from events.policy import AliasRule
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


def _staging(*numbers: int) -> list[StageTransitioned]:
    return [transitioned(n, Stage.DEVELOPMENT, Stage.STAGING) for n in numbers]


def _archived(number: int, comment: str = "") -> StageTransitioned:
    return StageTransitioned(
        version=number,
        from_stage=Stage.STAGING,
        to_stage=Stage.ARCHIVED,
        kind=TransitionKind.DIRECT,
        comment=comment,
    )


def test_moving_to_staging_archives_the_other_staging_versions_in_the_same_decision() -> None:
    state = given(with_versions(3), *_staging(1, 2))
    command = cmd(TransitionStage, version=3, to_stage=Stage.STAGING, archive_existing=True)
    assert when(command, state) == [
        transitioned(3, Stage.DEVELOPMENT, Stage.STAGING),
        _archived(1),
        _archived(2),
    ]


def test_a_version_already_in_the_stage_only_archives_the_others() -> None:
    state = given(with_versions(2), *_staging(1, 2))
    command = cmd(TransitionStage, version=2, to_stage=Stage.STAGING, archive_existing=True)
    assert when(command, state) == [_archived(1)]
    alone = given(with_versions(1), *_staging(1))
    assert (
        when(cmd(TransitionStage, version=1, to_stage=Stage.STAGING, archive_existing=True), alone)
        == []
    )


def test_production_demotes_the_current_one_as_any_promotion_does() -> None:
    state = given(with_versions(2), *in_production(1), *_staging(2))
    command = cmd(TransitionStage, version=2, to_stage=Stage.PRODUCTION, archive_existing=True)
    stages = [
        (e.version, e.to_stage) for e in when(command, state) if isinstance(e, StageTransitioned)
    ]
    assert stages == [(1, Stage.ARCHIVED), (2, Stage.PRODUCTION)]


def test_archiving_an_existing_version_that_needs_approval_refuses_the_whole_move() -> None:
    archiving_needs_approval = tuple(
        replace(r, approvals=1)
        if (r.from_stage, r.to_stage) == (Stage.STAGING, Stage.ARCHIVED)
        else r
        for r in permissive().transitions
    )
    guarded = permissive(transitions=archiving_needs_approval)
    state = given(with_versions(2), *_staging(1), policy_set(guarded))
    command = cmd(TransitionStage, version=2, to_stage=Stage.STAGING, archive_existing=True)
    with pytest.raises(PolicyViolationError) as refused:
        when(command, state)
    assert (refused.value.rule, refused.value.details["version"]) == ("approval_required", 1)


def test_a_protected_alias_on_an_existing_version_refuses_the_whole_move() -> None:
    protected = permissive(protected_aliases=(AliasRule(alias="champion", approvals=1),))
    state = given(
        with_versions(2),
        *_staging(1),
        AliasSet(alias="champion", version=1, previous_version=None, comment=""),
        policy_set(protected),
    )
    command = cmd(TransitionStage, version=2, to_stage=Stage.STAGING, archive_existing=True)
    with pytest.raises(PolicyViolationError) as refused:
        when(command, state)
    assert refused.value.rule == "protected_alias"
    # an unprotected alias goes with its archived version, in the same decision
    plain = given(
        with_versions(2),
        *_staging(1),
        AliasSet(alias="candidate", version=1, previous_version=None, comment=""),
    )
    assert when(command, plain)[1:] == [
        AliasRemoved(
            alias="candidate", version=1, cause=AliasRemovalCause.VERSION_ARCHIVED, comment=""
        ),
        _archived(1),
    ]


def test_archive_existing_applies_to_staging_and_production_only() -> None:
    command = cmd(TransitionStage, version=1, to_stage=Stage.ARCHIVED, archive_existing=True)
    with pytest.raises(ValidationError) as refused:
        when(command, given(with_versions(1)))
    assert (refused.value.field, refused.value.rule) == ("archive_existing", "stage")
