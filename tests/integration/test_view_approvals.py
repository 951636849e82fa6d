"""The approvals view: open requests and who must act, decided requests and their outcome."""

from __future__ import annotations

from datetime import timedelta

from events.model.commands import (
    ApprovePromotion,
    CancelPromotion,
    ClearModelPolicy,
    ExpirePromotion,
    RejectPromotion,
    RequestPromotion,
    SetModelPolicy,
    TransitionStage,
)
from events.stages import Stage
from projections.views.approvals import PROJECTION, awaiting, decided, open_requests, request
from tests.support.database import Database
from tests.support.registry_history import Registry, gated_policy

VIEW = PROJECTION.view_names()


async def staged(reg: Registry, model_id: str, registrant: str = "carol") -> int:
    """A registered model with one version, registered by ``registrant``, in staging."""
    await reg.register_model(f"model-{model_id}", owner="team-risk", model_id=model_id)
    version = await reg.register_version(model_id, actor=registrant)
    await reg.execute(
        model_id, TransitionStage, registrant, version=version, to_stage=Stage.STAGING
    )
    return version


async def test_an_open_request_says_who_must_act_under_separation_of_duties(db: Database) -> None:
    # given a policy needing 2 approvals to production, a version registered by carol,
    # and alice asking to promote it
    reg = Registry(db)
    await reg.set_registry_policy(gated_policy(approvals=2))
    v1 = await staged(reg, "m1")
    await reg.execute(
        "m1",
        RequestPromotion,
        "alice",
        request_id="r1",
        version=v1,
        target_stage=Stage.PRODUCTION,
        justification="auc +2%",
    )
    requested_at = reg.last
    await reg.project(PROJECTION)

    # then the request is open, needs 2 approvers, and neither the requester nor the registrant may act
    [open_one] = await open_requests(db.pool, VIEW, now=requested_at)
    assert (open_one.request_id, open_one.version, open_one.target_stage) == (
        "r1",
        v1,
        "production",
    )
    assert open_one.separation_of_duties is True
    assert open_one.approvers_excluded == ["alice", "carol"]
    assert (open_one.approvals_required, open_one.approvals_missing) == (2, 2)
    assert open_one.who_must_act == "2 more approver(s), not alice, carol"
    assert open_one.expires_at == requested_at + timedelta(hours=1) and not open_one.overdue

    # when bob approves
    await reg.execute("m1", ApprovePromotion, "bob", request_id="r1", comment="looks good")
    await reg.project(PROJECTION)

    # then one approval is missing, bob may not approve twice, dave still may
    [open_one] = await open_requests(db.pool, VIEW, "m1", now=requested_at)
    assert open_one.approvals == ["bob"] and open_one.approvals_missing == 1
    assert open_one.approvers_excluded == ["alice", "carol", "bob"]
    assert [r.request_id for r in await awaiting(db.pool, VIEW, "dave", now=requested_at)] == ["r1"]
    assert await awaiting(db.pool, VIEW, "bob", now=requested_at) == []
    assert await awaiting(db.pool, VIEW, "carol", now=requested_at) == []
    # and past its expiry the open request is flagged overdue until someone records the expiry
    [late] = await open_requests(db.pool, VIEW, now=requested_at + timedelta(hours=2))
    assert late.overdue


async def test_separation_of_duties_follows_the_policy_in_force(db: Database) -> None:
    # given a registry policy without separation of duties
    reg = Registry(db)
    await reg.set_registry_policy(gated_policy(approvals=1, separation_of_duties=False))
    v1 = await staged(reg, "m1")
    await reg.execute(
        "m1",
        RequestPromotion,
        "alice",
        request_id="r1",
        version=v1,
        target_stage=Stage.PRODUCTION,
        justification="ready",
    )
    await reg.project(PROJECTION)

    # then anyone may approve, the requester and registrant included
    [r1] = await open_requests(db.pool, VIEW)
    assert (r1.separation_of_duties, r1.approvers_excluded) == (False, [])
    assert r1.who_must_act == "1 more approver(s)"

    # when the model sets its own policy with separation of duties, it wins over the registry's
    await reg.execute("m1", SetModelPolicy, "admin", policy=gated_policy(approvals=1))
    await reg.project(PROJECTION)
    [r1] = await open_requests(db.pool, VIEW)
    assert (r1.separation_of_duties, r1.approvers_excluded) == (True, ["alice", "carol"])

    # and clearing it falls back to the registry's again
    await reg.execute("m1", ClearModelPolicy, "admin")
    await reg.project(PROJECTION)
    [r1] = await open_requests(db.pool, VIEW)
    assert r1.separation_of_duties is False


async def test_decided_requests_record_their_outcome_newest_first(db: Database) -> None:
    # given four requests: executed, rejected, cancelled and expired
    reg = Registry(db)
    await reg.set_registry_policy(gated_policy(approvals=1))
    v1 = await staged(reg, "m1")
    for request_id in ("r1", "r2", "r3", "r4"):
        await reg.execute(
            "m1",
            RequestPromotion,
            "alice",
            request_id=request_id,
            version=v1,
            target_stage=Stage.PRODUCTION,
            justification=f"try {request_id}",
        )
    await reg.execute("m1", RejectPromotion, "bob", request_id="r2", comment="latency regressed")
    await reg.execute("m1", CancelPromotion, "alice", request_id="r3", comment="wrong version")
    await reg.execute("m1", ApprovePromotion, "dave", request_id="r1", comment="ship it")
    reg.tick(3 * 3600)
    await reg.execute("m1", ExpirePromotion, "system", request_id="r4")
    await reg.project(PROJECTION)

    # then nothing is open and every decision is listed, newest first, with who decided and why
    assert await open_requests(db.pool, VIEW) == []
    done = await decided(db.pool, VIEW, "m1")
    assert [(r.request_id, r.status, r.decided_by) for r in done] == [
        ("r4", "expired", "system"),
        ("r1", "executed", "dave"),
        ("r3", "cancelled", "alice"),
        ("r2", "rejected", "bob"),
    ]
    executed = done[1]
    assert executed.executed_approvers == ["dave"] and executed.rules == [
        "transition:staging->production"
    ]
    assert done[3].decision_comment == "latency regressed"
    assert all(r.approvals_missing == 0 and r.who_must_act.startswith("nobody") for r in done)

    # and pages continue from the last decision seen; a status filter narrows them
    first = await decided(db.pool, VIEW, limit=2)
    rest = await decided(db.pool, VIEW, before_position=first[-1].decided_position, limit=2)
    assert [r.request_id for r in first + rest] == ["r4", "r1", "r3", "r2"]
    assert [r.request_id for r in await decided(db.pool, VIEW, status="rejected")] == ["r2"]


async def test_one_request_shows_its_votes_in_order(db: Database) -> None:
    reg = Registry(db)
    await reg.set_registry_policy(gated_policy(approvals=3))
    v1 = await staged(reg, "m1")
    await reg.execute(
        "m1",
        RequestPromotion,
        "alice",
        request_id="r1",
        version=v1,
        target_stage=Stage.PRODUCTION,
        alias="champion",
        justification="ready",
    )
    await reg.execute("m1", ApprovePromotion, "bob", request_id="r1", comment="ok")
    await reg.execute("m1", ApprovePromotion, "dave", request_id="r1", comment="fine")
    await reg.execute("m1", RejectPromotion, "erin", request_id="r1", comment="no rollout plan")
    await reg.project(PROJECTION)

    found = await request(db.pool, VIEW, "r1")
    assert found is not None and found.alias == "champion" and found.status == "rejected"
    assert [(v.actor, v.vote, v.comment) for v in found.votes] == [
        ("bob", "approved", "ok"),
        ("dave", "approved", "fine"),
        ("erin", "rejected", "no rollout plan"),
    ]
    assert await request(db.pool, VIEW, "nope") is None
