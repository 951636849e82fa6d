"""The audit timeline view: every event per model and per actor, with who, what, when, why."""

from __future__ import annotations

from datetime import timedelta

import msgspec

from eventlog.log import read_log
from events.model.commands import ApprovePromotion, RequestPromotion, SetAlias, TransitionStage
from events.stages import Stage
from projections.views.audit_timeline import PROJECTION, entries
from tests.support.database import Database
from tests.support.registry_history import Registry, gated_policy

VIEW = PROJECTION.view_names()


async def history(db: Database) -> Registry:
    """Two models, a metric batch, a promotion through approval, a registry policy change."""
    reg = Registry(db)
    await reg.set_registry_policy(gated_policy(approvals=1), comment="prod needs a reviewer")
    await reg.register_model("churn", owner="team-risk", model_id="m1")
    await reg.register_model("fraud", owner="team-risk", model_id="m2", actor="bob")
    v1 = await reg.register_version("m1", actor="carol")
    await reg.log_metrics("m1", v1, {"auc": 0.91, "loss": 0.2}, actor="trainer")
    await reg.execute(
        "m1", TransitionStage, version=v1, to_stage=Stage.STAGING, comment="smoke tests pass"
    )
    await reg.execute(
        "m1",
        RequestPromotion,
        request_id="r1",
        version=v1,
        target_stage=Stage.PRODUCTION,
        justification="auc +2%",
    )
    await reg.execute("m1", ApprovePromotion, "bob", request_id="r1", comment="ship it")
    await reg.execute("m1", SetAlias, alias="champion", version=v1)
    return reg


async def test_every_event_gets_one_row_with_who_what_when_why(db: Database) -> None:
    reg = await history(db)
    conn = await db.connect()
    head = await reg.project(PROJECTION)

    page = await entries(db.pool, VIEW, newest_first=False, limit=1000)
    logged = await read_log(conn, 0, 1000)
    # then there is one row per sealed event, in log order, with the envelope's facts
    assert (
        [e.log_position for e in page.items]
        == [e.log_position for e in logged]
        == list(range(1, head + 1))
    )
    for entry, event in zip(page.items, logged, strict=True):
        assert (
            entry.event_id,
            entry.stream_id,
            entry.event_type,
            entry.actor,
            entry.occurred_at,
            entry.sealed_at,
        ) == (
            event.envelope.event_id,
            event.stream_id,
            event.event_type,
            event.envelope.actor,
            event.envelope.occurred_at,
            event.sealed_at,
        )
        assert msgspec.json.decode(entry.data) == msgspec.json.decode(event.envelope.data)
    by_type = {e.event_type: e for e in page.items}
    # and the summaries read as sentences, with the reason the actor gave
    assert by_type["registry.policy_set"].model_id is None
    assert by_type["registry.policy_set"].reason == "prod needs a reviewer"
    assert by_type["metrics.logged"].summary == "trainer logged 2 metric point(s) for v1"
    assert (by_type["metrics.logged"].model_id, by_type["metrics.logged"].version) == ("m1", 1)
    assert by_type["model.promotion_requested"].reason == "auc +2%"
    assert by_type["model.promotion_approved"].summary == "bob approved request r1"
    executed = by_type["model.promotion_executed"]
    assert executed.summary == "request r1 executed: v1 staging → production (approved by bob)"
    stage_rows = [e for e in page.items if e.event_type == "model.stage_transitioned"]
    assert [e.summary for e in stage_rows] == [
        "alice moved v1 development → staging",
        "bob moved v1 staging → production (promotion, request r1)",
    ]
    assert stage_rows[0].reason == "smoke tests pass"
    assert by_type["model.alias_set"].summary == "alice pointed alias champion at v1"


async def test_filters_by_model_actor_type_version_and_business_time(db: Database) -> None:
    reg = await history(db)
    await reg.project(PROJECTION)
    everything = (await entries(db.pool, VIEW, newest_first=False, limit=1000)).items

    by_model = await entries(db.pool, VIEW, model_id="m2")
    assert [e.event_type for e in by_model.items] == ["model.registered"]
    by_actor = await entries(db.pool, VIEW, actor="bob", newest_first=False)
    assert [e.event_type for e in by_actor.items] == [
        "model.registered",
        "model.promotion_approved",
        "model.promotion_executed",
        "model.stage_transitioned",
    ]
    by_types = await entries(
        db.pool, VIEW, model_id="m1", event_types=["model.stage_transitioned", "model.alias_set"]
    )
    assert [e.event_type for e in by_types.items] == [
        "model.alias_set",
        "model.stage_transitioned",
        "model.stage_transitioned",
    ]
    assert {e.event_type for e in (await entries(db.pool, VIEW, version=1)).items} >= {
        "model.version_registered",
        "metrics.logged",
        "model.stage_transitioned",
    }

    # since <= occurred_at < until, on business time
    middle = everything[3].occurred_at
    window = await entries(
        db.pool, VIEW, since=middle, until=middle + timedelta(seconds=121), newest_first=False
    )
    assert [e.occurred_at for e in window.items] == [
        e.occurred_at
        for e in everything
        if middle <= e.occurred_at < middle + timedelta(seconds=121)
    ]
    assert window.items and all(e.occurred_at >= middle for e in window.items)
    # and up_to_position shows the log as it stood then
    assert len((await entries(db.pool, VIEW, up_to_position=4)).items) == 4


async def test_keyset_pages_cover_every_row_once_in_both_directions(db: Database) -> None:
    reg = await history(db)
    head = await reg.project(PROJECTION)

    for newest_first in (True, False):
        seen: list[int] = []
        cursor = None
        while True:
            page = await entries(db.pool, VIEW, cursor=cursor, newest_first=newest_first, limit=3)
            seen += [e.log_position for e in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert sorted(seen) == list(range(1, head + 1))
        assert seen == sorted(seen, reverse=newest_first)
