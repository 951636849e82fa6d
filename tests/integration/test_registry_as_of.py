"""Time travel over the registry and one model; rebuild equals live; two runners at once.

Covers, for every registry view (catalogue, versions, stage timeline, approvals,
deployments, audit): a fold up to any position equals the live view as it was at that
position; a rebuild (mid-traffic) equals a fold from scratch; two workers give the same.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import asyncpg

from eventlog.freshness import wait_for_position
from eventlog.log import head_position
from eventlog.sealer import sealed_channel
from events.model.commands import RequestPromotion, SetAlias, StartDeployment, TransitionStage
from events.stages import Stage
from projections.base import Projection
from projections.registry_state import MODEL_PROJECTIONS, model_as_of, registry_as_of, views_as_of
from projections.runner import (
    ProjectionWorker,
    advance,
    ensure_projection,
    generations,
    start_rebuild,
    step,
    switch_if_caught_up,
)
from projections.views import (
    approvals,
    audit_timeline,
    deployments,
    model_catalogue,
    model_versions,
    stage_timeline,
)
from tests.support.database import Database
from tests.support.registry_history import Registry, gated_policy, random_history

GOVERNANCE = (
    stage_timeline.PROJECTION,
    approvals.PROJECTION,
    deployments.PROJECTION,
    audit_timeline.PROJECTION,
)


async def live_checksums(
    conn: asyncpg.Connection, projections: tuple[Projection, ...] = MODEL_PROJECTIONS
) -> dict[str, str]:
    return {p.name: await p.checksum(conn, p.view_names()) for p in projections}


async def folded_checksums(
    conn: asyncpg.Connection, position: int, projections: tuple[Projection, ...] = MODEL_PROJECTIONS
) -> dict[str, str]:
    async with views_as_of(conn, position, projections) as (_, names):
        return {p.name: await p.checksum(conn, names[p.name]) for p in projections}


async def advance_live_to(
    conn: asyncpg.Connection, projection: Projection, position: int, batch: int
) -> None:
    """Bring the live generation exactly to ``position`` (not to the head)."""
    await ensure_projection(conn, projection)
    while True:
        live = next(g for g in await generations(conn, projection.name) if g.status == "live")
        if live.log_position >= position:
            return
        await advance(conn, projection, live, head=position, batch=batch)


async def test_time_travel_at_many_positions_equals_the_live_views_as_they_were(
    db: Database,
) -> None:
    # given a long random history over three models
    reg = Registry(db)
    await random_history(reg, random.Random(11), 220)
    head = await reg.seal()
    conn = await db.connect()

    # when the live views move forward in uneven steps, stopping at many positions
    rng = random.Random(5)
    positions = sorted({1, 2, head // 3, head // 2, head - 1, head, *rng.sample(range(1, head), 4)})
    for position in positions:
        for projection in MODEL_PROJECTIONS:
            await advance_live_to(conn, projection, position, batch=rng.choice((3, 17, 50)))
        # then a fold of the log up to that position equals every live view at that moment
        assert await folded_checksums(conn, position) == await live_checksums(conn), (
            f"at position {position}"
        )


async def test_model_as_of_equals_the_live_views_of_that_model_then(db: Database) -> None:
    # given a random history in which registry policies come and go
    reg = Registry(db)
    await random_history(reg, random.Random(23), 160)
    head = await reg.seal()
    conn = await db.connect()

    for position in (head // 4, head // 2, head):
        for projection in MODEL_PROJECTIONS:
            await advance_live_to(conn, projection, position, batch=100)
        for model_id in ("m1", "m2"):
            # when one model is folded alone (its streams and the registry policy only)
            snapshot = await model_as_of(conn, model_id, position, audit_limit=10_000)
            # then it shows what the live views showed for that model at that position
            now = snapshot.sealed_at
            assert snapshot.position == position
            assert snapshot.model == await model_catalogue.get_model(
                conn, model_catalogue.PROJECTION.view_names(), model_id
            )
            assert snapshot.timeline == await stage_timeline.timeline(
                conn, stage_timeline.PROJECTION.view_names(), model_id
            )
            assert snapshot.alias_timeline == await stage_timeline.alias_timeline(
                conn, stage_timeline.PROJECTION.view_names(), model_id
            )
            assert snapshot.deployments == await deployments.places(
                conn, deployments.PROJECTION.view_names(), model_id
            )
            live_requests = [
                await approvals.request(
                    conn,
                    approvals.PROJECTION.view_names(),
                    r.request_id,
                    model_id=model_id,
                    now=now,
                )
                for r in snapshot.requests
            ]
            assert snapshot.requests == live_requests
            open_now = await approvals.open_requests(
                conn, approvals.PROJECTION.view_names(), model_id, now=now
            )
            assert [r for r in snapshot.requests if r.status == "pending"] == open_now
            live_audit = await audit_timeline.entries(
                conn, audit_timeline.PROJECTION.view_names(), model_id=model_id, limit=10_000
            )
            assert [e.log_position for e in snapshot.audit] == [
                e.log_position for e in live_audit.items
            ]
            assert [v.version for v in snapshot.versions] == sorted(
                v.version for v in snapshot.versions
            )  # ordered, and each equals the live row:
            for version in snapshot.versions:
                assert version == await model_versions.get_version(
                    conn, model_versions.PROJECTION.view_names(), model_id, version.version
                )


async def test_one_models_fold_applies_the_registry_policy_in_force_then(db: Database) -> None:
    # given a request made while the registry's policy waived separation of duties, then a
    # policy that requires it, and other models' events around both
    reg = Registry(db)
    await reg.register_model("model-other", model_id="m9")
    await reg.set_registry_policy(gated_policy(approvals=1, separation_of_duties=False))
    await reg.register_model("model-m1", model_id="m1")
    v1 = await reg.register_version("m1", actor="carol")
    await reg.transition("m1", v1, Stage.STAGING, actor="carol")
    await reg.request_promotion("m1", v1, Stage.PRODUCTION, actor="alice")
    waived = await reg.seal()
    await reg.register_version("m9")
    await reg.set_registry_policy(gated_policy(approvals=1))
    required = await reg.seal()
    conn = await db.connect()

    # when the model is folded alone before and after the second policy
    before = await model_as_of(conn, "m1", waived)
    after = await model_as_of(conn, "m1", required)

    # then each shows who may approve under the registry policy in force then
    [r_before] = before.requests
    [r_after] = after.requests
    assert (r_before.separation_of_duties, r_before.approvers_excluded) == (False, [])
    assert (r_after.separation_of_duties, r_after.approvers_excluded) == (True, ["alice", "carol"])


async def test_registry_as_of_a_position_and_a_log_time(db: Database) -> None:
    # given v1 in production and an open request for v2, sealed; later v2 promoted by an alias move
    reg = Registry(db)
    await reg.set_registry_policy(gated_policy(approvals=1))
    await reg.register_model("churn", owner="team-risk", model_id="m1")
    v1, v2 = (
        await reg.register_version("m1", actor="carol"),
        await reg.register_version("m1", actor="carol"),
    )
    await reg.execute("m1", TransitionStage, version=v1, to_stage=Stage.STAGING)
    await reg.execute("m1", TransitionStage, version=v2, to_stage=Stage.STAGING)
    await reg.execute(
        "m1",
        RequestPromotion,
        request_id="r1",
        version=v2,
        target_stage=Stage.PRODUCTION,
        justification="better",
    )
    await reg.execute("m1", SetAlias, alias="champion", version=v1)
    await reg.execute(
        "m1",
        StartDeployment,
        "argo",
        deployment_id="d1",
        version=v1,
        environment="prod",
        target="svc",
        desired_alias="champion",
    )
    first = await reg.seal()
    # the scenario: a moment strictly after the first seal and strictly before the next write
    await asyncio.sleep(0.05)
    between = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await reg.execute("m1", SetAlias, alias="champion", version=v2)
    head = await reg.seal()
    conn = await db.connect()

    # when the registry is folded at the first head, and at a time between the two seals
    snapshot = await registry_as_of(conn, first)
    by_time = await registry_as_of(conn, between)

    # then both show the registry as it stood then
    assert snapshot == by_time
    assert snapshot.position == first and head > first
    assert [m.name for m in snapshot.models] == ["churn"]
    assert [(v.version, v.stage) for v in snapshot.versions] == [
        (v1, Stage.STAGING),
        (v2, Stage.STAGING),
    ]
    assert snapshot.in_stage("m1", "staging") == [v1, v2]
    assert [(a.alias, a.version) for a in snapshot.aliases] == [("champion", v1)]
    assert [(r.request_id, r.approvals_missing) for r in snapshot.open_requests] == [("r1", 1)]
    assert [
        (p.environment, p.in_flight_deployment_id, p.drift_code) for p in snapshot.deployments
    ] == [("prod", "d1", "nothing_live")]
    # and past the head means the head
    latest = await registry_as_of(conn, head + 100)
    assert latest.position == head and [(a.alias, a.version) for a in latest.aliases] == [
        ("champion", v2)
    ]


async def test_a_rebuild_mid_traffic_equals_a_fold_from_scratch(db: Database) -> None:
    # given the governance views live over a long random history, built in small batches
    reg = Registry(db)
    rng = random.Random(31)
    await random_history(reg, rng, 200)
    await reg.seal()
    conn = await db.connect()
    for projection in GOVERNANCE:
        await ensure_projection(conn, projection)
        while await step(conn, projection, batch=9):
            pass

    # when every one of them is rebuilt while more commands arrive
    for projection in GOVERNANCE:
        assert await start_rebuild(conn, projection) == 2
    for _ in range(8):
        await random_history(reg, rng, 10)
        await reg.seal()
        for projection in GOVERNANCE:
            await step(conn, projection, batch=9, rebuild_batch=23)
    for projection in GOVERNANCE:
        while await step(conn, projection, batch=9, rebuild_batch=23):
            pass

    # then generation 2 serves each of them, at the head, equal to a fold from scratch
    head = await head_position(conn)
    for projection in GOVERNANCE:
        assert [
            (g.generation, g.status, g.log_position)
            for g in await generations(conn, projection.name)
        ] == [(2, "live", head)]
    assert await live_checksums(conn, GOVERNANCE) == await folded_checksums(conn, head, GOVERNANCE)


async def test_two_runners_at_once_give_the_same_views(db: Database) -> None:
    # given two workers over the governance views, started before any event
    stop = asyncio.Event()
    workers = [
        ProjectionWorker(
            db.connect,
            db.schema,
            GOVERNANCE,
            channel=sealed_channel(db.schema),
            batch=13,
            poll_interval=0.05,
        )
        for _ in range(2)
    ]
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        # when a random history is written and sealed in several rounds while they run
        reg = Registry(db)
        rng = random.Random(47)
        for _ in range(5):
            await random_history(reg, rng, 30)
            await reg.seal()
        head = await head_position(db.pool)
        await wait_for_position(db.pool, head, [p.name for p in GOVERNANCE], timeout=60)
        # then each view has exactly one leader, and the views equal a fold from scratch
        for projection in GOVERNANCE:
            assert sum(projection.name in w.leading for w in workers) == 1
        conn = await db.connect()
        assert await live_checksums(conn, GOVERNANCE) == await folded_checksums(
            conn, head, GOVERNANCE
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_the_switch_succeeds_whatever_order_the_checkpoint_rows_lie_in(db: Database) -> None:
    # given a rebuild caught up, and the live checkpoint row stored after the building one
    # (it moves to the end each time the live position advances)
    conn = await db.connect()
    projection = stage_timeline.PROJECTION
    await ensure_projection(conn, projection)
    await start_rebuild(conn, projection)
    await conn.execute(
        "UPDATE projection_checkpoints SET updated_at = statement_timestamp() WHERE projection = $1 AND status = 'live'",
        projection.name,
    )
    await conn.execute(
        "SET enable_indexscan = off; SET enable_bitmapscan = off"
    )  # scan in storage order

    # when the switch runs, then generation 2 is live and generation 1 retired
    assert await switch_if_caught_up(conn, projection)
    assert [(g.generation, g.status) for g in await generations(conn, projection.name)] == [
        (2, "live")
    ]
