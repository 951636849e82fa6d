"""Production per environment in the views: random histories where models follow a policy
with production in several environments fold in the views as the domain folds them, live
and rebuilt."""

from __future__ import annotations

import dataclasses
import random

from events.stages import Stage, placement
from projections.runner import ensure_projection, generations, step
from projections.views.deployments import PROJECTION as DEPLOYMENTS
from projections.views.deployments import places
from projections.views.model_catalogue import CATALOGUE, get_model
from projections.views.model_versions import VERSIONS
from projections.views.stage_timeline import PROJECTION as TIMELINE
from projections.views.stage_timeline import current_holdings
from tests.integration.test_view_versions import assert_view_equals_domain
from tests.support.database import Database
from tests.support.registry_history import (
    ENVIRONMENTS,
    Registry,
    as_of,
    check_rebuild_equals_live,
    random_history,
    record_live_positions,
    registry,
)

# Policies (half of them per environment), stage moves and promotions more often than usual.
REGIONAL_HEAVY = {"rollback_or_policy": 10, "stage": 30, "promotion": 8, "deployment": 10}


async def test_random_histories_with_production_per_environment_fold_alike_live_and_rebuilt(
    db: Database,
) -> None:
    # given random histories in which some models put production per environment
    reg = await registry(db)
    rng = random.Random(12)
    for _ in range(4):
        await random_history(reg, rng, 120, weights=REGIONAL_HEAVY)
        await reg.project(VERSIONS, CATALOGUE, DEPLOYMENTS, TIMELINE, batch=23)
    live = [s for s in reg.states.values() if not s.deleted]
    # (the history did put a version in production in two environments at once)
    assert any(len(v.environment_names()) > 1 for s in live for v in s.versions.values())

    # then each version shows the environments the domain folded
    assert await assert_view_equals_domain(reg, reg.conn, VERSIONS.view_names()) > 50
    # and the catalogue names the holder of each stage@environment
    for state in live:
        row = await get_model(reg.conn, CATALOGUE.view_names(), state.model_id)
        assert row is not None
        for environment in ENVIRONMENTS:
            holders = state.in_stage(Stage.PRODUCTION, environment)
            expected = max(holders) if holders else None
            assert row.stages.get(placement(Stage.PRODUCTION, environment)) == expected
    # and deployments following production want the version in production in their environment
    for state in live:
        for place in await places(reg.conn, DEPLOYMENTS.view_names(), state.model_id):
            if place.follows == f"stage:{Stage.PRODUCTION}":
                assert place.desired_version == state.champion(place.environment)
    # and the timeline has an open interval per stage and per stage@environment held now
    held = {
        (i.model_id, i.stage, i.version)
        for i in await current_holdings(reg.conn, TIMELINE.view_names())
        if not reg.states[i.model_id].deleted
    }
    assert held == {
        (state.model_id, where, number)
        for state in live
        for number, version in state.versions.items()
        for where in (
            version.stage,
            *(placement(version.stage, e) for e in version.environment_names()),
        )
    }
    # and a rebuild of each view equals the live one
    for projection in (VERSIONS, CATALOGUE, DEPLOYMENTS, TIMELINE):
        await check_rebuild_equals_live(reg, projection, projection.checksum, rng)


async def test_time_travel_with_environments_equals_the_live_views_as_they_were(
    db: Database,
) -> None:
    # given a history in which production is per environment for some models
    reg = await registry(db)
    await random_history(reg, random.Random(12), 300, weights=REGIONAL_HEAVY)
    for projection in (VERSIONS, CATALOGUE, TIMELINE):
        # when the live view is stepped along the log, recording its checksum at each step
        recorded = await record_live_positions(reg, projection, projection.checksum, batch=9)
        assert len(recorded) > 10
        # then a fold of the log up to any of those positions equals the view as it was
        for at, expected, _ in random.Random(3).sample(recorded, 6):
            assert await as_of(reg, projection, at, projection.checksum) == expected


async def test_views_of_the_code_before_environments_are_rebuilt_and_replaced(
    db: Database,
) -> None:
    # given a versions view whose live generation has the shape the code before
    # environments wrote (no environments column, code version 1), and a history with
    # production per environment in the log
    reg = await registry(db)
    await random_history(reg, random.Random(12), 150, weights=REGIONAL_HEAVY)
    await reg.seal()
    older = dataclasses.replace(
        VERSIONS,
        version=1,
        tables=[
            dataclasses.replace(t, columns=t.columns.replace("environments       text[]", "--"))
            if t.name == "model_versions"
            else t
            for t in VERSIONS.tables
        ],
    )
    await ensure_projection(reg.conn, older)
    assert "environments" not in await _columns(reg, "model_versions")

    # when this code's worker takes over (it starts a rebuild) and runs until nothing moves
    await ensure_projection(reg.conn, VERSIONS)
    while await step(reg.conn, VERSIONS):
        pass

    # then the rebuilt generation, of this code, is live and equals the domain's fold
    live = [g for g in await generations(reg.conn, VERSIONS.name) if g.status == "live"]
    assert [g.code_version for g in live] == [VERSIONS.version]
    assert "environments" in await _columns(reg, "model_versions")
    assert await assert_view_equals_domain(reg, reg.conn, VERSIONS.view_names()) > 20


async def _columns(reg: Registry, view: str) -> set[str]:
    rows = await reg.conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0",
        view,
    )
    return {r["attname"] for r in rows}
