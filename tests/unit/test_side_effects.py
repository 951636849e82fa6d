"""The receipt's "also moved": every demotion and alias move a decision made besides its ask."""

from __future__ import annotations

from events.model.commands import Rollback, TransitionStage
from events.model.events import AliasSet
from events.model.side_effects import side_effects
from events.stages import Stage, TransitionKind
from service.cli.lifecycle import moved
from service.client.models import Receipt
from tests.unit.domain_helpers import cmd, given, in_production, transitioned, when, with_versions

D, S, P, A = Stage.DEVELOPMENT, Stage.STAGING, Stage.PRODUCTION, Stage.ARCHIVED


def _stable_on(version: int, previous: int | None = None) -> AliasSet:
    return AliasSet(alias="stable", version=version, previous_version=previous, comment="")


def test_a_promotion_names_the_demotion_and_the_aliases_archiving_dropped() -> None:
    # given version 1 in production under the unprotected alias "stable", version 2 staged
    state = given(with_versions(2), in_production(1), _stable_on(1), transitioned(2, D, S))
    # when version 2 is promoted
    events = when(cmd(TransitionStage, version=2, to_stage=P), state)
    # then the receipt says what else moved
    assert side_effects(events) == [
        "alias 'stable': removed from version 1 (archived)",
        "version 1: production -> archived (demoted)",
    ]


def test_a_rollback_names_the_aliases_that_followed_it() -> None:
    history = [
        *with_versions(2),
        *in_production(1),
        transitioned(2, D, S),
        transitioned(1, P, A, TransitionKind.DEMOTION),
        transitioned(2, S, P),
        _stable_on(2),
    ]
    events = when(cmd(Rollback, reason="incident"), given(history))
    assert side_effects(events) == [
        "alias 'stable': version 2 -> 1 (follows the rollback)",
        "version 2: production -> archived (demoted)",
    ]


def test_a_move_that_asked_for_exactly_what_happened_moved_nothing_else() -> None:
    events = when(cmd(TransitionStage, version=1, to_stage=S), given(with_versions(1)))
    assert side_effects(events) == []


def test_the_cli_prints_what_else_moved_under_the_move() -> None:
    # given the receipt of a promotion that demoted the production version
    receipt = Receipt(
        events=["model.stage_transitioned", "model.stage_transitioned"],
        stream_version=9,
        position=42,
        also_moved=["version 1: production -> archived (demoted)"],
    )
    # when the CLI describes it
    sentence = moved("churn v2 -> production")(receipt)
    # then the side effect is on its own line
    assert sentence.splitlines()[1:] == [
        "  also moved: version 1: production -> archived (demoted)"
    ]
