"""The stage timeline view: which version held each stage and alias, from when to when."""

from __future__ import annotations

import itertools
from datetime import timedelta

from events.model.commands import ArchiveVersion, RemoveAlias, RestoreVersion, Rollback, SetAlias
from events.stages import Stage
from projections.views.stage_timeline import (
    PROJECTION,
    alias_holder_at,
    alias_timeline,
    holder_at,
    holders_at,
    timeline,
)
from tests.support.database import Database
from tests.support.registry_history import Registry

VIEW = PROJECTION.view_names()


async def test_what_was_in_production_at_a_business_time(db: Database) -> None:
    # given v1 promoted to production at t1, then v2 promoted at t2 (demoting v1)
    reg = Registry(db)
    await reg.register_model("churn", owner="team-risk", model_id="m1")
    v1, v2 = await reg.register_version("m1"), await reg.register_version("m1")
    t1 = reg.now + timedelta(
        seconds=60
    )  # to_production runs staging at now, production one step later
    await reg.to_production("m1", v1)
    reg.tick(3600)
    t2 = reg.now + timedelta(seconds=60)
    await reg.to_production("m1", v2, actor="bob")
    await reg.project(PROJECTION)

    # then the holder of production at each business time is the version that held it then
    assert await holder_at(db.pool, VIEW, "m1", Stage.PRODUCTION, t1 - timedelta(seconds=1)) is None
    at_t1 = await holder_at(db.pool, VIEW, "m1", Stage.PRODUCTION, t1)
    assert at_t1 is not None and at_t1.version == v1 and at_t1.entered_by == "alice"
    middle = await holder_at(db.pool, VIEW, "m1", Stage.PRODUCTION, t1 + timedelta(minutes=30))
    assert (
        middle is not None
        and middle.version == v1
        and middle.to_time == t2
        and middle.left_by == "bob"
    )
    # and at the instant of the promotion the new version holds it (the demotion is the same decision)
    at_t2 = await holder_at(db.pool, VIEW, "m1", Stage.PRODUCTION, t2)
    assert at_t2 is not None and at_t2.version == v2 and at_t2.to_time is None

    # and by log position the answer is the same (the demotion comes just before the promotion)
    assert middle.to_position == at_t2.from_position - 1
    by_position = await holder_at(db.pool, VIEW, "m1", Stage.PRODUCTION, at_t2.from_position - 2)
    assert by_position is not None and by_position.version == v1
    by_position = await holder_at(db.pool, VIEW, "m1", Stage.PRODUCTION, at_t2.from_position)
    assert by_position is not None and by_position.version == v2


async def test_the_timeline_records_every_interval_with_who_how_and_why(db: Database) -> None:
    # given a version that goes through every stage, is demoted, restored and rolled back to
    reg = Registry(db)
    await reg.register_model("churn", owner="team-risk", model_id="m1")
    v1, v2 = await reg.register_version("m1"), await reg.register_version("m1")
    await reg.to_production("m1", v1)
    await reg.to_production("m1", v2)
    await reg.execute("m1", Rollback, "carol", reason="v2 regressed")
    await reg.project(PROJECTION)

    # then v1's intervals chain without gaps: development, staging, production, archived, production
    v1_rows = [r for r in await timeline(db.pool, VIEW, "m1") if r.version == v1]
    assert [(r.stage, r.kind) for r in v1_rows] == [
        ("development", "registered"),
        ("staging", "direct"),
        ("production", "direct"),
        ("archived", "demotion"),
        ("production", "rollback"),
    ]
    for before, after in itertools.pairwise(v1_rows):
        assert before.to_position == after.from_position and before.to_time == after.from_time
    assert v1_rows[-1].comment == "v2 regressed" and v1_rows[-1].entered_by == "carol"
    # and v2 was demoted by the rollback, to the policy's demotion stage
    v2_now = [
        r for r in await timeline(db.pool, VIEW, "m1", stage=Stage.ARCHIVED) if r.version == v2
    ]
    assert len(v2_now) == 1 and v2_now[0].to_position is None and v2_now[0].kind == "demotion"
    # and asked for several stages at once, the timeline keeps exactly those, in log order
    everything = await timeline(db.pool, VIEW, "m1")
    some = await timeline(db.pool, VIEW, "m1", stage=[Stage.PRODUCTION, Stage.ARCHIVED])
    assert some == [r for r in everything if r.stage in ("production", "archived")]
    assert {r.stage for r in some} == {"production", "archived"}


async def test_a_restored_version_opens_a_new_development_interval(db: Database) -> None:
    reg = Registry(db)
    await reg.register_model("churn", owner="team-risk", model_id="m1")
    v1 = await reg.register_version("m1")
    await reg.execute("m1", ArchiveVersion, version=v1, reason="obsolete")
    await reg.execute(
        "m1", RestoreVersion, "admin", version=v1, reason="needed again", actor_is_admin=True
    )
    await reg.project(PROJECTION)

    rows = await timeline(db.pool, VIEW, "m1")
    assert [(r.stage, r.to_position is None) for r in rows] == [
        ("development", False),
        ("archived", False),
        ("development", True),
    ]
    assert rows[2].kind == "restore" and rows[2].entered_by == "admin"


async def test_what_was_in_production_anywhere_at_a_time(db: Database) -> None:
    # given two models in production and one that never got there
    reg = Registry(db)
    for model_id in ("a", "b", "c"):
        await reg.register_model(f"model-{model_id}", owner="team-risk", model_id=model_id)
        await reg.register_version(model_id)
    await reg.to_production("a", 1)
    await reg.to_production("b", 1)
    asked = reg.now
    reg.tick()
    await reg.execute("b", ArchiveVersion, version=1, reason="retired")
    await reg.project(PROJECTION)

    # then the registry-wide question lists both at that time, and only one now
    assert [
        (h.model_id, h.version) for h in await holders_at(db.pool, VIEW, Stage.PRODUCTION, asked)
    ] == [("a", 1), ("b", 1)]
    assert [h.model_id for h in await holders_at(db.pool, VIEW, Stage.PRODUCTION, reg.now)] == ["a"]


async def test_alias_intervals_follow_set_move_and_removal(db: Database) -> None:
    # given champion on v1, moved to v2, then removed
    reg = Registry(db)
    await reg.register_model("churn", owner="team-risk", model_id="m1")
    v1, v2 = await reg.register_version("m1"), await reg.register_version("m1")
    await reg.execute("m1", SetAlias, alias="champion", version=v1)
    on_v1 = reg.last
    await reg.execute("m1", SetAlias, "bob", alias="champion", version=v2, comment="better auc")
    on_v2 = reg.last
    await reg.execute("m1", RemoveAlias, alias="champion")
    await reg.project(PROJECTION)

    rows = await alias_timeline(db.pool, VIEW, "m1")
    assert [(r.version, r.entered_by, r.left_by) for r in rows] == [
        (v1, "alice", "bob"),
        (v2, "bob", "alice"),
    ]
    assert rows[1].comment == "better auc"
    held = await alias_holder_at(db.pool, VIEW, "m1", "champion", on_v1)
    assert held is not None and held.version == v1
    held = await alias_holder_at(db.pool, VIEW, "m1", "champion", on_v2)
    assert held is not None and held.version == v2
    assert await alias_holder_at(db.pool, VIEW, "m1", "champion", reg.now) is None
