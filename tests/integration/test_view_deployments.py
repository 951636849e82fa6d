"""The deployments view: desired (stage/alias) against actual (live deployment) per place, and drift."""

from __future__ import annotations

import random

from events.model.commands import (
    ArchiveVersion,
    ReportDeploymentFailed,
    ReportDeploymentRolledBack,
    ReportDeploymentSucceeded,
    SetAlias,
    StartDeployment,
    TransitionStage,
)
from events.model.deployments import compare_deployments
from events.stages import Stage
from projections.views.deployments import PROJECTION, place, places, runs
from tests.support.database import Database
from tests.support.registry_history import Registry, random_history

VIEW = PROJECTION.view_names()


async def deploy(
    reg: Registry,
    model_id: str,
    deployment_id: str,
    version: int,
    *,
    succeed: bool = True,
    environment: str = "prod",
    **desire: object,
) -> None:
    await reg.execute(
        model_id,
        StartDeployment,
        "argo",
        deployment_id=deployment_id,
        version=version,
        environment=environment,
        target="churn-api",
        **desire,
    )
    if succeed:
        await reg.execute(model_id, ReportDeploymentSucceeded, "argo", deployment_id=deployment_id)


async def test_a_deployment_following_an_alias_drifts_when_the_alias_moves(db: Database) -> None:
    # given champion on v1, deployed to prod following the alias
    reg = Registry(db)
    await reg.register_model("churn", owner="team-risk", model_id="m1")
    v1, v2 = await reg.register_version("m1"), await reg.register_version("m1")
    await reg.execute("m1", SetAlias, alias="champion", version=v1)
    await deploy(reg, "m1", "d1", v1, desired_alias="champion")
    await reg.project(PROJECTION)
    here = await place(db.pool, VIEW, "m1", "prod", "churn-api")
    assert here is not None
    assert (here.follows, here.desired_version, here.live_version, here.drift, here.drift_code) == (
        "alias:champion",
        v1,
        v1,
        False,
        "in_sync",
    )

    # when the alias moves to v2
    await reg.execute("m1", SetAlias, alias="champion", version=v2)
    await reg.project(PROJECTION)
    # then the place drifts, and says why
    here = await place(db.pool, VIEW, "m1", "prod", "churn-api")
    assert here is not None and here.drift and here.drift_code == "version_mismatch"
    assert here.drift_reason == "alias:champion is v2; v1 is deployed"
    assert [p.target for p in await places(db.pool, VIEW, drifted_only=True)] == ["churn-api"]

    # when a deployment of v2 starts, it shows in flight; once it succeeds the drift is gone
    await deploy(reg, "m1", "d2", v2, succeed=False, desired_alias="champion")
    await reg.project(PROJECTION)
    here = await place(db.pool, VIEW, "m1", "prod", "churn-api")
    assert here is not None and (
        here.in_flight_deployment_id,
        here.in_flight_version,
        here.drift,
    ) == ("d2", v2, True)
    assert here.drift_reason.endswith("deployment d2 of v2 is in flight")
    await reg.execute("m1", ReportDeploymentSucceeded, "argo", deployment_id="d2")
    await reg.project(PROJECTION)
    here = await place(db.pool, VIEW, "m1", "prod", "churn-api")
    assert here is not None and (
        here.live_deployment_id,
        here.in_flight_deployment_id,
        here.drift,
    ) == ("d2", None, False)
    assert await places(db.pool, VIEW, drifted_only=True) == []


async def test_a_deployment_following_production_drifts_on_promotion_and_a_failure_changes_nothing(
    db: Database,
) -> None:
    # given v1 in production and deployed following the production stage
    reg = Registry(db)
    await reg.register_model("churn", owner="team-risk", model_id="m1")
    v1, v2 = await reg.register_version("m1"), await reg.register_version("m1")
    await reg.to_production("m1", v1)
    await deploy(reg, "m1", "d1", v1, desired_stage=Stage.PRODUCTION)
    # when v2 is promoted and its deployment fails
    await reg.to_production("m1", v2)
    await deploy(reg, "m1", "d2", v2, succeed=False, desired_stage=Stage.PRODUCTION)
    await reg.execute("m1", ReportDeploymentFailed, "argo", deployment_id="d2", reason="crashloop")
    await reg.project(PROJECTION)

    # then v1 still serves, the place drifts towards v2, and the failed run is in the history
    here = await place(db.pool, VIEW, "m1", "prod", "churn-api")
    assert here is not None
    assert (here.follows, here.desired_version, here.live_version, here.live_version_stage) == (
        "stage:production",
        v2,
        v1,
        "archived",
    )
    assert (here.drift_code, here.in_flight_deployment_id) == ("version_mismatch", None)
    history = await runs(db.pool, VIEW, "m1")
    assert [(r.deployment_id, r.status, r.reason) for r in history] == [
        ("d2", "failed", "crashloop"),
        ("d1", "succeeded", ""),
    ]

    # and with nothing in production, the desire names no version
    await reg.execute("m1", ArchiveVersion, version=v2, reason="broken")
    await reg.project(PROJECTION)
    here = await place(db.pool, VIEW, "m1", "prod", "churn-api")
    assert here is not None and (here.desired_version, here.drift_code) == (
        None,
        "no_desired_version",
    )


async def test_rolling_back_restores_the_replaced_deployment_then_nothing(db: Database) -> None:
    reg = Registry(db)
    await reg.register_model("churn", owner="team-risk", model_id="m1")
    v1, v2 = await reg.register_version("m1"), await reg.register_version("m1")
    await reg.to_production("m1", v1)
    await deploy(reg, "m1", "d1", v1, desired_stage=Stage.PRODUCTION)
    await deploy(reg, "m1", "d2", v2, desired_stage=Stage.PRODUCTION)
    await reg.project(PROJECTION)
    here = await place(db.pool, VIEW, "m1", "prod", "churn-api")
    assert here is not None and (here.live_deployment_id, here.drift_code) == (
        "d2",
        "version_mismatch",
    )

    # when d2 is rolled back, d1 serves again and the place is in sync
    await reg.execute("m1", ReportDeploymentRolledBack, "argo", deployment_id="d2", reason="5xx")
    await reg.project(PROJECTION)
    here = await place(db.pool, VIEW, "m1", "prod", "churn-api")
    assert here is not None and (here.live_deployment_id, here.live_version, here.drift) == (
        "d1",
        v1,
        False,
    )

    # when d1 is rolled back too, nothing serves: the drift says so
    await reg.execute(
        "m1", ReportDeploymentRolledBack, "argo", deployment_id="d1", reason="bad config"
    )
    await reg.project(PROJECTION)
    here = await place(db.pool, VIEW, "m1", "prod", "churn-api")
    assert here is not None and (here.live_deployment_id, here.drift_code) == (None, "nothing_live")
    assert here.drift_reason == "nothing serves here; stage:production wants v1"


async def test_a_deployment_following_a_shared_stage_drifts_when_its_version_leaves_it(
    db: Database,
) -> None:
    reg = Registry(db)
    await reg.register_model("churn", owner="team-risk", model_id="m1")
    v1 = await reg.register_version("m1")
    await reg.execute("m1", TransitionStage, version=v1, to_stage=Stage.STAGING)
    await deploy(reg, "m1", "d1", v1, environment="staging", desired_stage=Stage.STAGING)
    await deploy(reg, "m1", "d2", v1, environment="dev")  # follows nothing: never drifts
    await reg.project(PROJECTION)
    assert [(p.environment, p.drift_code) for p in await places(db.pool, VIEW, "m1")] == [
        ("dev", "untracked"),
        ("staging", "in_sync"),
    ]

    await reg.execute("m1", TransitionStage, version=v1, to_stage=Stage.DEVELOPMENT)
    await reg.project(PROJECTION)
    staging = await place(db.pool, VIEW, "m1", "staging", "churn-api")
    assert staging is not None and staging.drift_code == "stage_mismatch"
    assert staging.drift_reason == "deployed v1 is in development, not staging"
    assert [p.environment for p in await places(db.pool, VIEW, environment="dev")] == ["dev"]


# Deployments, and the stage moves and aliases they follow, far more often than usual.
DEPLOYMENT_HEAVY = {"deployment": 40, "stage": 30, "alias": 20}


async def test_drift_agrees_with_the_domain_after_a_random_history(db: Database) -> None:
    # given a random history of stages, aliases and deployments
    reg = Registry(db)
    await random_history(reg, random.Random(7), 400, weights=DEPLOYMENT_HEAVY)
    await reg.project(PROJECTION)

    # then every live deployment that follows something is judged as the domain judges it
    compared = 0
    for model_id in reg.states:
        expected = {
            (d.environment, d.target): (
                d.deployment_id,
                d.deployed_version,
                d.desired,
                d.desired_version,
                d.in_sync,
            )
            for d in compare_deployments(reg.state(model_id))
        }
        found = {
            (p.environment, p.target): (
                p.live_deployment_id,
                p.live_version,
                p.follows,
                p.desired_version,
                not p.drift,
            )
            for p in await places(db.pool, VIEW, model_id)
            if p.live_deployment_id is not None and p.follows is not None
        }
        assert found == expected
        compared += len(expected)
    assert compared > 3  # enough live deployments that follow something: not trivially equal
