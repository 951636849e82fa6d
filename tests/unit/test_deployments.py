"""Deployments reported by deployment systems, and desired-versus-actual comparison."""

from __future__ import annotations

import pytest

from events.errors import AlreadyExistsError, InvalidTransitionError, NotFoundError, ValidationError
from events.model.commands import (
    ReportDeploymentFailed,
    ReportDeploymentRolledBack,
    ReportDeploymentSucceeded,
    StartDeployment,
)
from events.model.deployments import DeploymentDrift, compare_deployments
from events.model.events import (
    AliasSet,
    DeploymentFailed,
    DeploymentRolledBack,
    DeploymentStarted,
    DeploymentSucceeded,
    ModelArchived,
    ModelEvent,
)
from events.model.state import DeploymentStatus
from events.stages import Stage
from tests.unit.domain_helpers import cmd, given, in_production, transitioned, when, with_versions


def _started(
    deployment_id: str,
    version: int,
    stage: Stage | None = Stage.PRODUCTION,
    alias: str | None = None,
    target: str = "k8s/churn-api",
) -> DeploymentStarted:
    return DeploymentStarted(
        deployment_id=deployment_id,
        version=version,
        environment="prod",
        target=target,
        desired_stage=stage,
        desired_alias=alias,
    )


def _live(
    deployment_id: str, version: int, replaced: str | None = None, **kw: object
) -> list[ModelEvent]:
    return [
        _started(deployment_id, version, **kw),  # type: ignore[arg-type]
        DeploymentSucceeded(deployment_id=deployment_id, replaced_deployment_id=replaced),
    ]


def test_starting_a_deployment_records_version_place_and_desire() -> None:
    command = cmd(
        StartDeployment,
        actor="argo",
        deployment_id="d1",
        version=1,
        environment="prod",
        target="k8s/churn-api",
        desired_stage=Stage.PRODUCTION,
    )
    assert when(command, given(with_versions(1))) == [_started("d1", 1)]


def test_a_deployment_of_an_unknown_version_or_a_reused_id_is_refused() -> None:
    with pytest.raises(NotFoundError):
        when(
            cmd(StartDeployment, deployment_id="d1", version=5, environment="prod", target="t"),
            given(with_versions(1)),
        )
    with pytest.raises(AlreadyExistsError):
        when(
            cmd(StartDeployment, deployment_id="d1", version=1, environment="prod", target="t"),
            given(with_versions(1), _started("d1", 1)),
        )


def test_a_deployment_follows_a_stage_or_an_alias_not_both() -> None:
    with pytest.raises(ValidationError):
        when(
            cmd(
                StartDeployment,
                deployment_id="d1",
                version=1,
                environment="prod",
                target="t",
                desired_stage=Stage.PRODUCTION,
                desired_alias="champion",
            ),
            given(with_versions(1)),
        )


def test_a_succeeded_deployment_becomes_live_replacing_the_previous_one() -> None:
    history = [*with_versions(2), *_live("d1", 1), _started("d2", 2)]
    events = when(cmd(ReportDeploymentSucceeded, deployment_id="d2"), given(history))
    assert events == [DeploymentSucceeded(deployment_id="d2", replaced_deployment_id="d1")]
    assert given(history, events).live == {"prod": {"k8s/churn-api": "d2"}}


def test_rolling_back_a_live_deployment_makes_the_replaced_one_live_again() -> None:
    history = [*with_versions(2), *_live("d1", 1), *_live("d2", 2, replaced="d1")]
    events = when(
        cmd(ReportDeploymentRolledBack, deployment_id="d2", reason="5xx spike"), given(history)
    )
    assert events == [
        DeploymentRolledBack(deployment_id="d2", restored_deployment_id="d1", reason="5xx spike")
    ]
    state = given(history, events)
    assert state.live == {"prod": {"k8s/churn-api": "d1"}}
    assert state.deployments["d2"].status == DeploymentStatus.ROLLED_BACK


def test_rolling_back_the_first_deployment_leaves_nothing_live() -> None:
    history = [*with_versions(1), *_live("d1", 1)]
    events = when(cmd(ReportDeploymentRolledBack, deployment_id="d1", reason="x"), given(history))
    assert given(history, events).live == {}


def test_a_failed_deployment_needs_a_reason_and_never_becomes_live() -> None:
    history = [*with_versions(1), _started("d1", 1)]
    with pytest.raises(ValidationError):
        when(cmd(ReportDeploymentFailed, deployment_id="d1", reason=""), given(history))
    events = when(
        cmd(ReportDeploymentFailed, deployment_id="d1", reason="image pull"), given(history)
    )
    assert events == [DeploymentFailed(deployment_id="d1", reason="image pull")]
    assert given(history, events).live == {}


@pytest.mark.parametrize(
    "command",
    [
        cmd(ReportDeploymentSucceeded, deployment_id="d1"),
        cmd(ReportDeploymentFailed, deployment_id="d1", reason="late"),
    ],
)
def test_a_finished_deployment_cannot_finish_again(command: object) -> None:
    with pytest.raises(InvalidTransitionError):
        when(command, given(with_versions(1), _live("d1", 1)))


def test_reports_about_an_unknown_deployment_are_not_found() -> None:
    with pytest.raises(NotFoundError):
        when(cmd(ReportDeploymentSucceeded, deployment_id="nope"), given(with_versions(1)))


def test_reports_are_accepted_for_an_archived_model_because_they_are_facts() -> None:
    history = [*with_versions(1), _started("d1", 1), ModelArchived(reason="x")]
    assert when(cmd(ReportDeploymentSucceeded, deployment_id="d1"), given(history))


def test_comparing_desired_and_actual_shows_drift_after_a_promotion() -> None:
    history = [*with_versions(2), *in_production(1), *_live("d1", 1)]
    assert compare_deployments(given(history)) == (
        DeploymentDrift(
            environment="prod",
            target="k8s/churn-api",
            deployment_id="d1",
            deployed_version=1,
            desired="stage:production",
            desired_version=1,
            in_sync=True,
        ),
    )
    history += [
        transitioned(2, Stage.DEVELOPMENT, Stage.STAGING),
        transitioned(1, Stage.PRODUCTION, Stage.ARCHIVED),
        transitioned(2, Stage.STAGING, Stage.PRODUCTION),
    ]
    [drift] = compare_deployments(given(history))
    assert (drift.in_sync, drift.desired_version, drift.deployed_version) == (False, 2, 1)


def test_comparing_an_alias_follower_with_the_alias_target() -> None:
    history = [
        *with_versions(2),
        *_live("d1", 1, stage=None, alias="champion", target="batch"),
        AliasSet(alias="champion", version=2, previous_version=None, comment=""),
    ]
    [drift] = compare_deployments(given(history))
    assert (drift.desired, drift.desired_version, drift.in_sync) == ("alias:champion", 2, False)
