"""Aliases: named pointers at live versions; protected ones move only by approved promotion."""

from __future__ import annotations

import pytest

from events.errors import (
    InvalidTransitionError,
    NotFoundError,
    PolicyViolationError,
    ValidationError,
)
from events.model.commands import RemoveAlias, SetAlias, TransitionStage
from events.model.events import AliasRemovalCause, AliasRemoved, AliasSet
from events.policy import AliasRule, GovernancePolicy
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

PROTECTED = GovernancePolicy(protected_aliases=(AliasRule(alias="champion", approvals=1),))


def _alias(name: str, version: int, previous: int | None = None, comment: str = "") -> AliasSet:
    return AliasSet(alias=name, version=version, previous_version=previous, comment=comment)


def test_setting_a_new_alias_records_no_previous_target() -> None:
    assert when(
        cmd(SetAlias, alias="challenger", version=1, comment="try"), given(with_versions(1))
    ) == [_alias("challenger", 1, None, "try")]


def test_moving_an_alias_records_its_previous_target() -> None:
    state = given(with_versions(2), _alias("challenger", 1))
    assert when(cmd(SetAlias, alias="challenger", version=2), state) == [_alias("challenger", 2, 1)]
    moved = given(with_versions(2), _alias("challenger", 1), _alias("challenger", 2, 1))
    assert moved.aliases == {"challenger": 2}
    assert (moved.version(1).aliases, moved.version(2).aliases) == ((), ("challenger",))


def test_setting_an_alias_to_its_current_target_records_nothing() -> None:
    assert (
        when(
            cmd(SetAlias, alias="challenger", version=1),
            given(with_versions(1), _alias("challenger", 1)),
        )
        == []
    )


@pytest.mark.parametrize(
    ("alias", "rule"), [("latest", "reserved"), ("v3", "reserved"), ("Champion", "pattern")]
)
def test_reserved_or_malformed_alias_names_are_rejected(alias: str, rule: str) -> None:
    with pytest.raises(ValidationError) as error:
        when(cmd(SetAlias, alias=alias, version=1), given(with_versions(1)))
    assert (error.value.field, error.value.rule) == ("alias", rule)


def test_an_alias_cannot_point_at_an_archived_or_unknown_version() -> None:
    with pytest.raises(InvalidTransitionError):
        when(
            cmd(SetAlias, alias="x", version=1),
            given(with_versions(1), transitioned(1, Stage.DEVELOPMENT, Stage.ARCHIVED)),
        )
    with pytest.raises(NotFoundError):
        when(cmd(SetAlias, alias="x", version=9), given(with_versions(1)))


def test_a_protected_alias_cannot_be_set_or_removed_directly() -> None:
    with pytest.raises(PolicyViolationError) as error:
        when(
            cmd(SetAlias, alias="champion", version=1),
            given(with_versions(1), policy_set(PROTECTED)),
        )
    assert error.value.rule == "protected_alias"
    with pytest.raises(PolicyViolationError) as error:
        when(
            cmd(RemoveAlias, alias="champion"),
            given(with_versions(1), _alias("champion", 1), policy_set(PROTECTED)),
        )
    assert error.value.rule == "protected_alias"


def test_the_registry_policy_can_protect_an_alias_too() -> None:
    with pytest.raises(PolicyViolationError):
        when(
            cmd(SetAlias, alias="champion", version=1, registry_policy=PROTECTED),
            given(with_versions(1)),
        )


def test_removing_an_alias_records_its_target_and_an_unknown_alias_is_not_found() -> None:
    state = given(with_versions(1), _alias("challenger", 1))
    assert when(cmd(RemoveAlias, alias="challenger", comment="done"), state) == [
        AliasRemoved(alias="challenger", version=1, cause=AliasRemovalCause.REMOVED, comment="done")
    ]
    with pytest.raises(NotFoundError):
        when(cmd(RemoveAlias, alias="nope"), state)


def test_demoting_production_to_archived_removes_the_aliases_of_the_demoted_version() -> None:
    state = given(
        with_versions(2),
        in_production(1),
        _alias("stable", 1),
        transitioned(2, Stage.DEVELOPMENT, Stage.STAGING),
    )
    assert when(cmd(TransitionStage, version=2, to_stage=Stage.PRODUCTION), state) == [
        AliasRemoved(
            alias="stable", version=1, cause=AliasRemovalCause.VERSION_ARCHIVED, comment=""
        ),
        transitioned(1, Stage.PRODUCTION, Stage.ARCHIVED, TransitionKind.DEMOTION),
        transitioned(2, Stage.STAGING, Stage.PRODUCTION),
    ]


def test_demoting_production_to_staging_keeps_the_aliases() -> None:
    policy = permissive(demote_production_to=Stage.STAGING)
    state = given(
        with_versions(2),
        policy_set(policy),
        in_production(1),
        _alias("stable", 1),
        transitioned(2, Stage.DEVELOPMENT, Stage.STAGING),
    )
    events = when(cmd(TransitionStage, version=2, to_stage=Stage.PRODUCTION), state)
    assert not any(isinstance(e, AliasRemoved) for e in events)
