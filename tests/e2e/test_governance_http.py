"""Governance and concurrency through HTTP: separation of duties, metric gates, concurrent
promotions and alias moves (from two API replicas on one database, so the races are
real optimistic-concurrency races, not turns on one process's lock), If-Match/ETag,
idempotent retries racing each other, and pagination while others write."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from litestar import Litestar

from events.access import Role
from service.api import idempotency
from service.api.router import api_app_kwargs
from service.runtime.composition import build_services
from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models"
V = f"{M}/churn/versions"
JSON = {"content-type": "application/json"}

STAGING_TO_PRODUCTION = {"from_stage": "staging", "to_stage": "production"}
OTHER_TRANSITIONS = [
    {"from_stage": "development", "to_stage": "staging"},
    {"from_stage": "staging", "to_stage": "development"},
    {"from_stage": "development", "to_stage": "archived"},
    {"from_stage": "staging", "to_stage": "archived"},
    {"from_stage": "production", "to_stage": "archived"},
]


def policy(production: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The default transitions, with staging -> production as given."""
    rule = {**STAGING_TO_PRODUCTION, **(production or {})}
    return {
        "policy": {"transitions": [rule, *OTHER_TRANSITIONS], **extra},
        "comment": "test policy",
    }


def artifact(n: int) -> dict[str, Any]:
    return {
        "path": "model.pkl",
        "external": True,
        "uri": f"s3://models/churn/{n}/model.pkl",
        "sha256": f"{n:064x}",
        "size": 1000 + n,
    }


def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
    )
    return response


def refused(response: httpx.Response, status: int, rule: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
    )
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    if rule is not None:
        assert problem["rule"] == rule, problem
    return problem


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


class Replica:
    """A second API process on the same database: its own executor, caches and locks."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def request(self, method: str, path: str, *, as_: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {as_}", **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)


@asynccontextmanager
async def second_replica(api: Api) -> AsyncIterator[Replica]:
    services = build_services(api.services.settings, api.services.pool, pepper=api.services.pepper)
    transport = httpx.ASGITransport(app=Litestar(**api_app_kwargs(services)))  # type: ignore[arg-type]  # Litestar's scope types are narrower
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://replica-2.test"
        ) as client:
            yield Replica(client)
    finally:
        await services.executor.drain()


async def log_size(api: Api) -> int:
    count: int = await api.services.pool.fetchval("SELECT count(*) FROM events")
    return count


async def log_position(api: Api) -> int:
    head: int = await api.services.pool.fetchval(
        "SELECT last_log_position FROM sealer_state WHERE id = 1"
    )
    return head


async def register_versions(
    api: Api, count: int, *, as_: str | None = None, model: str = "churn"
) -> int:
    """Register versions; return the position of the last one."""
    position = 0
    for _ in range(count):
        made = ok(
            await api.post(
                f"{M}/{model}/versions", json={"artifacts": [artifact(position)]}, as_=as_
            ),
            201,
        )
        position = int(made.headers["Modelreg-Position"])
    return position


async def model_row(api: Api, position: int) -> dict[str, Any]:
    row: dict[str, Any] = ok(await api.get(f"{M}/churn?min_position={position}")).json()
    return row


async def versions_in(api: Api, stage: str, position: int) -> list[int]:
    page = ok(await api.get(f"{V}?stage={stage}&limit=500&min_position={position}")).json()
    return sorted(v["version"] for v in page["items"])


def last_position(*responses: httpx.Response) -> int:
    return max(int(r.headers.get("Modelreg-Position", 0)) for r in responses)


# --- separation of duties -------------------------------------------------------------


async def test_neither_the_requester_nor_the_registrant_may_approve(api: Api) -> None:
    erin = await api.token("erin", Role.CONTRIBUTOR, Role.APPROVER)  # registers the versions
    dan = await api.token("dan", Role.CONTRIBUTOR, Role.APPROVER)  # requests the promotions
    bob = await api.token("bob", Role.APPROVER)
    ok(await api.put("/api/v1/policy", json=policy({"approvals": 1})))
    ok(await api.post(M, json={"name": "churn"}, as_=erin), 201)
    await register_versions(api, 2, as_=erin)
    ok(await api.post(f"{V}/1/stage", json={"to": "staging"}, as_=erin))
    request_id = ok(
        await api.post(f"{V}/1/stage", json={"to": "production", "comment": "ship it"}, as_=dan),
        202,
    ).json()["request_id"]

    before = await log_size(api)
    by_requester = refused(
        await api.post(f"/api/v1/promotions/{request_id}/approve", json={}, as_=dan),
        409,
        "separation_of_duties",
    )
    assert "requested the promotion" in by_requester["detail"]
    by_registrant = refused(
        await api.post(f"/api/v1/promotions/{request_id}/approve", json={}, as_=erin),
        409,
        "separation_of_duties",
    )
    assert "registered the version" in by_registrant["detail"]
    assert await log_size(api) == before

    # the open request says who may not approve it
    shown = ok(
        await api.get(
            f"/api/v1/promotions/{request_id}?min_position={await log_position(api)}", as_=bob
        )
    ).json()
    assert (shown["status"], sorted(shown["approvers_excluded"]), shown["approvals_missing"]) == (
        "pending",
        ["dan", "erin"],
        1,
    )
    approved = ok(
        await api.post(
            f"/api/v1/promotions/{request_id}/approve", json={"comment": "four eyes"}, as_=bob
        )
    )
    assert "model.promotion_executed" in approved.json()["events"]
    assert (await model_row(api, last_position(approved)))["stages"]["production"] == 1


async def test_two_approvals_need_two_people_and_the_policy_can_waive_the_separation(
    api: Api,
) -> None:
    carol = await api.token("carol", Role.CONTRIBUTOR)
    bob = await api.token("bob", Role.APPROVER)
    dan = await api.token("dan", Role.CONTRIBUTOR, Role.APPROVER)
    ok(await api.put("/api/v1/policy", json=policy({"approvals": 2})))
    ok(await api.post(M, json={"name": "churn"}, as_=carol), 201)
    await register_versions(api, 2, as_=carol)
    for n in (1, 2):
        ok(await api.post(f"{V}/{n}/stage", json={"to": "staging"}, as_=carol))
    request_id = ok(
        await api.post(f"{V}/1/stage", json={"to": "production", "comment": "go"}, as_=carol), 202
    ).json()["request_id"]
    first = ok(await api.post(f"/api/v1/promotions/{request_id}/approve", json={}, as_=bob))
    assert first.json()["events"] == ["model.promotion_approved"]
    refused(
        await api.post(f"/api/v1/promotions/{request_id}/approve", json={}, as_=bob),
        409,
        "duplicate_approval",
    )
    second = ok(
        await api.post(f"/api/v1/promotions/{request_id}/approve", json={})
    )  # the admin, a second person
    assert "model.promotion_executed" in second.json()["events"]

    # a model whose policy turns the separation off: the requester may approve their own
    ok(
        await api.put(
            f"{M}/churn/policy", json=policy({"approvals": 1}, separation_of_duties=False)
        )
    )
    own = ok(
        await api.post(f"{V}/2/stage", json={"to": "production", "comment": "mine"}, as_=dan), 202
    ).json()["request_id"]
    executed = ok(await api.post(f"/api/v1/promotions/{own}/approve", json={}, as_=dan))
    assert "model.promotion_executed" in executed.json()["events"]
    assert (await model_row(api, last_position(executed)))["stages"]["production"] == 2


# --- metric gates ---------------------------------------------------------------------


async def test_metric_gates_refuse_a_version_below_the_threshold_or_worse_than_production(
    api: Api,
) -> None:
    gates = [
        {"metric": "auc", "dataset": "holdout", "op": ">=", "threshold": 0.9},
        {"metric": "auc", "dataset": "holdout", "op": ">=", "compare_to_production": True},
    ]
    ok(await api.put("/api/v1/policy", json=policy({"gates": gates})))
    ok(await api.post(M, json={"name": "churn"}), 201)
    await register_versions(api, 2)
    for n in (1, 2):
        ok(await api.post(f"{V}/{n}/stage", json={"to": "staging"}))

    async def log(version: int, value: float, dataset: str = "holdout") -> None:
        ok(
            await api.post(
                f"{V}/{version}/metrics",
                json={"metrics": [{"key": "auc", "value": value, "dataset": dataset}]},
            ),
            201,
        )

    async def promote(version: int) -> httpx.Response:
        return await api.post(f"{V}/{version}/stage", json={"to": "production"})

    before = await log_size(api)
    missing = refused(await promote(1), 409, "metric_gate")
    assert missing["details"]["value"] is None
    await log(1, 0.97, dataset="train")  # the gate reads holdout only
    refused(await promote(1), 409, "metric_gate")
    await log(1, 0.85)
    low = refused(await promote(1), 409, "metric_gate")
    assert (low["details"]["value"], low["details"]["gate"]) == (0.85, "auc >= 0.9 on holdout")
    assert await log_size(api) == before + 2  # the two metric batches, no refused move
    await log(1, 0.93)
    ok(await promote(1))

    await log(2, 0.91)  # above the threshold, below production's 0.93
    worse = refused(await promote(2), 409, "metric_gate")
    assert (worse["details"]["value"], worse["details"]["production_value"]) == (0.91, 0.93)
    await log(2, 0.95)
    promoted = ok(await promote(2))
    row = await model_row(api, last_position(promoted))
    assert (row["stages"]["production"], row["stages"]["archived"]) == (2, 1)


async def test_a_client_cannot_pin_a_gate_baseline_with_a_huge_step_or_an_old_timestamp(
    api: Api,
) -> None:
    # given production v1 with auc 0.93 on holdout, and a gate "no worse than production"
    gate = {"metric": "auc", "dataset": "holdout", "op": ">=", "compare_to_production": True}
    ok(await api.put("/api/v1/policy", json=policy({"gates": [gate]})))
    ok(await api.post(M, json={"name": "churn"}), 201)
    await register_versions(api, 2)
    for n in (1, 2):
        ok(await api.post(f"{V}/{n}/stage", json={"to": "staging"}))

    async def log(version: int, value: float, **point: Any) -> httpx.Response:
        body = {"metrics": [{"key": "auc", "value": value, "dataset": "holdout", **point}]}
        return await api.post(f"{V}/{version}/metrics", json=body)

    ok(await log(1, 0.93), 201)
    ok(await api.post(f"{V}/1/stage", json={"to": "production"}))
    ok(await log(2, 0.91), 201)

    # when a contributor tries to pin production's value low with a huge step or a year-2000 time
    refused(await log(1, 0.0, step=2**63 - 1), 422, "range")
    refused(await log(1, 0.0, timestamp="1969-12-31T23:59:59Z"), 422, "range")
    refused(await log(1, 0.0, timestamp="2999-01-01T00:00:00Z"), 422, "range")
    ok(await log(1, 0.0, step=2**53, timestamp="2000-01-01T00:00:00Z"), 201)  # still allowed
    # and the trainer then records production's real value again, at an ordinary step
    ok(await log(1, 0.93, step=1), 201)

    # then the gate reads the value recorded last, not the one with the highest step
    worse = refused(await api.post(f"{V}/2/stage", json={"to": "production"}), 409, "metric_gate")
    assert (worse["details"]["value"], worse["details"]["production_value"]) == (0.91, 0.93)


async def test_an_approval_rechecks_the_gates_against_the_latest_metrics(api: Api) -> None:
    bob = await api.token("bob", Role.APPROVER)
    gates = [{"metric": "auc", "dataset": "holdout", "threshold": 0.9}]
    ok(await api.put("/api/v1/policy", json=policy({"approvals": 1, "gates": gates})))
    ok(await api.post(M, json={"name": "churn"}), 201)
    await register_versions(api, 1)
    ok(await api.post(f"{V}/1/stage", json={"to": "staging"}))
    ok(
        await api.post(
            f"{V}/1/metrics",
            json={"metrics": [{"key": "auc", "value": 0.95, "dataset": "holdout"}]},
        ),
        201,
    )
    request_id = ok(
        await api.post(f"{V}/1/stage", json={"to": "production", "comment": "good auc"}), 202
    ).json()["request_id"]
    # a later evaluation is worse: the approval is refused and the request stays open
    ok(
        await api.post(
            f"{V}/1/metrics",
            json={"metrics": [{"key": "auc", "value": 0.5, "dataset": "holdout", "step": 1}]},
        ),
        201,
    )
    refused(
        await api.post(f"/api/v1/promotions/{request_id}/approve", json={}, as_=bob),
        409,
        "metric_gate",
    )
    still = ok(
        await api.get(f"/api/v1/promotions/{request_id}?min_position={await log_position(api)}")
    ).json()
    assert (still["status"], still["approvals"]) == ("pending", [])
    ok(
        await api.post(
            f"{V}/1/metrics",
            json={"metrics": [{"key": "auc", "value": 0.96, "dataset": "holdout", "step": 2}]},
        ),
        201,
    )
    approved = ok(await api.post(f"/api/v1/promotions/{request_id}/approve", json={}, as_=bob))
    assert (await model_row(api, last_position(approved)))["stages"]["production"] == 1


# --- production changes: safe defaults, every route (issue 13 items 7 and 9) ----------


async def test_under_the_default_policy_a_contributor_changes_production_only_through_an_approver(
    api: Api,
) -> None:
    # given no registry policy set, and a contributor with two versions in staging
    alice = await api.token("alice", Role.CONTRIBUTOR)
    bob = await api.token("bob", Role.APPROVER)
    ok(await api.post(M, json={"name": "churn"}, as_=alice), 201)
    await register_versions(api, 2, as_=alice)
    for n in (1, 2):
        ok(await api.post(f"{V}/{n}/stage", json={"to": "staging"}, as_=alice))

    # when she moves version 1 to production, it only opens a request
    asked = ok(
        await api.post(f"{V}/1/stage", json={"to": "production", "comment": "ship"}, as_=alice),
        202,
    )
    assert (await model_row(api, last_position(asked)))["stages"]["production"] is None
    approved = ok(
        await api.post(f"/api/v1/promotions/{asked.json()['request_id']}/approve", json={}, as_=bob)
    )
    assert (await model_row(api, last_position(approved)))["stages"]["production"] == 1

    # and archiving the production version follows the production rule: a request, no move
    archive = ok(
        await api.post(f"{V}/1/stage", json={"to": "archived", "comment": "retire"}, as_=alice),
        202,
    )
    assert "model.stage_transitioned" not in archive.json()["events"]
    assert (await model_row(api, last_position(archive)))["stages"]["production"] == 1

    # and so does a rollback (once there is a version to roll back to)
    second = ok(
        await api.post(f"{V}/2/stage", json={"to": "production", "comment": "v2"}, as_=alice), 202
    )
    ok(
        await api.post(
            f"/api/v1/promotions/{second.json()['request_id']}/approve", json={}, as_=bob
        )
    )
    before = await log_size(api)
    refused(
        await api.post(f"{M}/churn/rollback", json={"reason": "v2 is slow"}, as_=alice),
        409,
        "rollback_requires_approval",
    )
    assert await log_size(api) == before


async def test_a_promotion_never_drops_a_protected_alias_and_the_receipt_says_what_else_moved(
    api: Api,
) -> None:
    # given champion protected, on version 1 in production, and the unprotected alias stable
    alice = await api.token("alice", Role.CONTRIBUTOR)
    bob = await api.token("bob", Role.APPROVER)
    ok(await api.put("/api/v1/policy", json=policy(protected_aliases=[{"alias": "champion"}])))
    ok(await api.post(M, json={"name": "churn"}, as_=alice), 201)
    await register_versions(api, 2, as_=alice)
    for n in (1, 2):
        ok(await api.post(f"{V}/{n}/stage", json={"to": "staging"}, as_=alice))
    ok(await api.post(f"{V}/1/stage", json={"to": "production"}, as_=alice))
    ok(await api.put(f"{M}/churn/aliases/stable", json={"version": 1}, as_=alice))
    champion = ok(
        await api.post(
            f"{M}/churn/promotions",
            json={"version": 1, "alias": "champion", "justification": "best"},
            as_=alice,
        ),
        202,
    )
    ok(
        await api.post(
            f"/api/v1/promotions/{champion.json()['request_id']}/approve", json={}, as_=bob
        )
    )

    # when version 2 is promoted directly, which would archive version 1 and drop champion
    before = await log_size(api)
    refused(
        await api.post(f"{V}/2/stage", json={"to": "production"}, as_=alice), 409, "protected_alias"
    )
    # then nothing moved
    assert await log_size(api) == before

    # when the promotion moves champion along, through its approval
    moving = ok(
        await api.post(
            f"{M}/churn/promotions",
            json={
                "version": 2,
                "target_stage": "production",
                "alias": "champion",
                "justification": "v2",
            },
            as_=alice,
        ),
        202,
    )
    done = ok(
        await api.post(
            f"/api/v1/promotions/{moving.json()['request_id']}/approve", json={}, as_=bob
        )
    )
    # then the receipt names what else moved
    assert done.json()["also_moved"] == [
        "alias 'stable': removed from version 1 (archived)",
        "version 1: production -> archived (demoted)",
    ]
    row = await model_row(api, last_position(done))
    assert (row["stages"]["production"], row["aliases"]) == (2, {"champion": 2})


# --- concurrent promotions ------------------------------------------------------------


async def _two_in_staging(api: Api, first: int) -> None:
    await register_versions(api, 2)
    for n in (first, first + 1):
        ok(await api.post(f"{V}/{n}/stage", json={"to": "staging"}))


async def test_concurrent_direct_promotions_leave_exactly_one_version_in_production(
    api: Api,
) -> None:
    ok(await api.put("/api/v1/policy", json=policy()))  # production needs no approval
    ok(await api.post(M, json={"name": "churn"}), 201)
    async with second_replica(api) as replica:
        for round_ in range(3):
            a, b = 2 * round_ + 1, 2 * round_ + 2
            await _two_in_staging(api, a)
            one, two = await asyncio.gather(
                api.post(f"{V}/{a}/stage", json={"to": "production"}),
                replica.request("POST", f"{V}/{b}/stage", as_=api.admin, json={"to": "production"}),
            )
            # the policy needs no approval: both moves happen, one after the other, and the
            # later one demotes the earlier (demote_production_to = archived)
            ok(one)
            ok(two)
            position = last_position(one, two)
            in_production = await versions_in(api, "production", position)
            assert len(in_production) == 1 and in_production[0] in (a, b)
            loser = b if in_production[0] == a else a
            assert loser in await versions_in(api, "archived", position)
            timeline = ok(
                await api.get(f"{M}/churn/timeline?stage=production&min_position={position}")
            ).json()
            open_intervals = [t for t in timeline if t["to_position"] is None]
            assert [t["version"] for t in open_intervals] == in_production


async def test_concurrent_conditional_promotions_let_exactly_one_win(api: Api) -> None:
    ok(await api.put("/api/v1/policy", json=policy()))  # production needs no approval
    ok(await api.post(M, json={"name": "churn"}), 201)
    async with second_replica(api) as replica:
        for round_ in range(3):
            a, b = 2 * round_ + 1, 2 * round_ + 2
            await _two_in_staging(api, a)
            etag = ok(await api.get(f"{M}/churn")).headers["ETag"]
            one, two = await asyncio.gather(
                api.post(f"{V}/{a}/stage", json={"to": "production"}, headers={"If-Match": etag}),
                replica.request(
                    "POST",
                    f"{V}/{b}/stage",
                    as_=api.admin,
                    json={"to": "production"},
                    headers={"If-Match": etag},
                ),
            )
            # whichever replica loses, at whatever point, its precondition failed: 412
            assert sorted([one.status_code, two.status_code]) == [200, 412], (one.text, two.text)
            winner, loser = (a, b) if one.status_code == 200 else (b, a)
            assert refused(two if winner == a else one, 412)["code"] == "precondition_failed"
            position = last_position(one, two)
            assert await versions_in(api, "production", position) == [winner]
            assert loser in await versions_in(api, "staging", position)


async def test_concurrent_promotions_under_an_approval_policy_wait_for_approval(api: Api) -> None:
    bob = await api.token("bob", Role.APPROVER)
    ann = await api.token("ann", Role.APPROVER)
    ok(await api.put("/api/v1/policy", json=policy({"approvals": 1})))
    ok(await api.post(M, json={"name": "churn"}), 201)
    await _two_in_staging(api, 1)
    async with second_replica(api) as replica:
        one, two = await asyncio.gather(
            api.post(f"{V}/1/stage", json={"to": "production", "comment": "v1"}),
            replica.request(
                "POST", f"{V}/2/stage", as_=api.admin, json={"to": "production", "comment": "v2"}
            ),
        )
        ok(one, 202)
        ok(two, 202)
        position = last_position(one, two)
        assert await versions_in(api, "production", position) == []
        waiting = ok(await api.get(f"{M}/churn/promotions?min_position={position}")).json()
        assert sorted(r["version"] for r in waiting) == [1, 2]

        # both approved at once, on different replicas: each executes in turn
        yes_one, yes_two = await asyncio.gather(
            api.post(f"/api/v1/promotions/{one.json()['request_id']}/approve", json={}, as_=bob),
            replica.request(
                "POST", f"/api/v1/promotions/{two.json()['request_id']}/approve", as_=ann, json={}
            ),
        )
    assert {yes_one.status_code, yes_two.status_code} <= {200, 409}, (yes_one.text, yes_two.text)
    position = last_position(yes_one, yes_two)
    in_production = await versions_in(api, "production", position)
    assert len(in_production) == 1
    history = ok(
        await api.get(f"{M}/churn/history?type=model.promotion_executed&min_position={position}")
    ).json()["items"]
    executed = [e["version"] for e in history]
    assert (
        executed and in_production[0] == executed[0]
    )  # newest first: the last executed holds production


# --- concurrent alias moves -----------------------------------------------------------


async def test_concurrent_alias_moves_all_succeed_and_end_consistent(api: Api) -> None:
    ok(await api.post(M, json={"name": "churn"}), 201)
    await register_versions(api, 4)
    async with second_replica(api) as replica:
        moves = []
        for i in range(24):
            body = {"version": i % 4 + 1, "comment": f"move {i}"}
            if i % 2:
                moves.append(
                    replica.request("PUT", f"{M}/churn/aliases/champion", as_=api.admin, json=body)
                )
            else:
                moves.append(api.put(f"{M}/churn/aliases/champion", json=body))
        # and other aliases moving at the same time
        moves += [
            api.put(f"{M}/churn/aliases/canary-{n}", json={"version": n}) for n in range(1, 5)
        ]
        responses = await asyncio.gather(*moves)
    errors = [(r.status_code, r.text) for r in responses if r.status_code != 200]
    assert not errors
    position = last_position(*responses)
    row = await model_row(api, position)
    current = row["aliases"]["champion"]
    assert {k: v for k, v in row["aliases"].items() if k.startswith("canary")} == {
        f"canary-{n}": n for n in range(1, 5)
    }
    by_alias = ok(await api.get(f"{V}/by-alias/champion?min_position={position}")).json()
    assert by_alias["version"] == current
    # the history is one unbroken chain of intervals ending at the current version
    intervals = ok(await api.get(f"{M}/churn/aliases/champion?min_position={position}")).json()
    intervals.sort(key=lambda t: t["from_position"])
    assert intervals[-1]["to_position"] is None and intervals[-1]["version"] == current
    for earlier, later in itertools.pairwise(intervals):
        assert earlier["to_position"] == later["from_position"]
    # no lost update: each recorded move names the version it moved from, in log order, and
    # a move to where the alias already points records nothing
    history = ok(
        await api.get(
            f"{M}/churn/history?type=model.alias_set&oldest_first=true&limit=1000&min_position={position}"
        )
    ).json()
    moves_made = [e["data"] for e in history["items"] if e["data"]["alias"] == "champion"]
    assert [m["previous_version"] for m in moves_made] == [
        None,
        *(m["version"] for m in moves_made[:-1]),
    ]
    assert moves_made[-1]["version"] == current
    assert len(moves_made) == len(intervals) == sum(1 for r in responses[:24] if r.json()["events"])


# --- If-Match / ETag ------------------------------------------------------------------


async def test_if_match_makes_writes_conditional(api: Api) -> None:
    ok(await api.post(M, json={"name": "churn"}), 201)
    await register_versions(api, 1)
    model = ok(await api.get(f"{M}/churn"))
    etag = model.headers["ETag"]
    assert etag == '"2"'
    assert ok(await api.get(f"{V}/1")).headers["ETag"] == etag  # versions share the model's stream

    before = await log_size(api)
    stale = refused(
        await api.patch(f"{M}/churn", json={"description": "x"}, headers={"If-Match": '"1"'}), 412
    )
    assert (stale["details"]["expected_version"], stale["details"]["actual_version"]) == (1, 2)
    refused(await api.post(V, json={"artifacts": [artifact(2)]}, headers={"If-Match": '"1"'}), 412)
    refused(
        await api.put(
            f"{M}/churn/tags/team", json={"value": "risk"}, headers={"If-Match": 'W/"7"'}
        ),
        412,
    )
    assert await log_size(api) == before

    updated = ok(
        await api.patch(
            f"{M}/churn", json={"description": "who leaves"}, headers={"If-Match": etag}
        )
    )
    assert updated.headers["ETag"] == '"3"'
    weak = ok(
        await api.post(V, json={"artifacts": [artifact(2)]}, headers={"If-Match": 'W/"3"'}), 201
    )
    assert weak.headers["ETag"] == '"4"'
    ok(await api.put(f"{M}/churn/tags/team", json={"value": "risk"}, headers={"If-Match": "*"}))
    # the ETag of a read is the version a write must name
    latest = ok(await api.get(f"{M}/churn"))
    assert latest.headers["ETag"] == '"5"'
    assert latest.json()["description"] == "who leaves"
    ok(
        await api.put(
            f"{M}/churn/policy", json=policy(), headers={"If-Match": latest.headers["ETag"]}
        )
    )


# --- idempotency ----------------------------------------------------------------------


async def test_idempotent_retries_racing_each_other_record_once(api: Api) -> None:
    carol = await api.token("carol", Role.CONTRIBUTOR)
    ok(await api.post(M, json={"name": "churn"}, as_=carol), 201)
    body = {"artifacts": [artifact(1)], "description": "first"}
    key = {"Idempotency-Key": "register-v1-7f3a"}
    before = await log_size(api)
    async with second_replica(api) as replica:
        responses = await asyncio.gather(
            *[
                api.post(V, json=body, headers=key, as_=carol)
                if i % 2
                else replica.request("POST", V, as_=carol, json=body, headers=key)
                for i in range(8)
            ]
        )
    assert [r.status_code for r in responses] == [201] * 8, [r.text for r in responses]
    assert await log_size(api) == before + 1
    bodies = {r.content for r in responses}
    assert len(bodies) == 1, bodies
    assert {r.json()["version"] for r in responses} == {1}
    assert {r.headers["Modelreg-Position"] for r in responses} == {
        responses[0].headers["Modelreg-Position"]
    }

    # a later retry gets the first response again, marked as a replay
    retry = ok(await api.post(V, json=body, headers=key, as_=carol), 201)
    assert (retry.content, retry.headers["Idempotent-Replayed"]) == (responses[0].content, "true")
    # the same key for something else is refused, and records nothing
    other = refused(
        await api.post(V, json={**body, "description": "second"}, headers=key, as_=carol),
        422,
        "reused",
    )
    assert other["field"] == "Idempotency-Key"
    refused(
        await api.post(
            f"{V}/1/metrics", json={"metrics": [{"key": "auc", "value": 1}]}, headers=key, as_=carol
        ),
        422,
        "reused",
    )
    assert await log_size(api) == before + 1
    # keys belong to their principal: the admin's request with carol's key is a new request
    mine = ok(await api.post(V, json=body, headers=key), 201)
    assert mine.json()["version"] == 2
    versions = ok(await api.get(f"{V}?min_position={mine.headers['Modelreg-Position']}")).json()[
        "items"
    ]
    assert sorted(v["version"] for v in versions) == [1, 2]


async def test_idempotent_model_creation_racing_itself_creates_one_model(api: Api) -> None:
    key = {"Idempotency-Key": "create-churn"}
    before = await log_size(api)
    async with second_replica(api) as replica:
        responses = await asyncio.gather(
            *[
                api.post(M, json={"name": "churn"}, headers=key)
                if i % 2
                else replica.request("POST", M, as_=api.admin, json={"name": "churn"}, headers=key)
                for i in range(6)
            ]
        )
    assert [r.status_code for r in responses] == [201] * 6, [r.text for r in responses]
    assert len({r.json()["model_id"] for r in responses}) == 1
    assert await log_size(api) == before + 1
    # without a key, a second create of the same name is a conflict
    refused(await api.post(M, json={"name": "churn"}), 409)


async def test_an_idempotent_token_request_shows_its_secret_once(api: Api) -> None:
    body = {"principal": "ci-bot", "roles": ["contributor"], "scopes": ["churn*"]}
    key = {"Idempotency-Key": "issue-ci-bot"}
    before = await log_size(api)
    async with second_replica(api) as replica:
        racing = await asyncio.gather(
            *[
                api.post("/api/v1/tokens", json=body, headers=key)
                if i % 2
                else replica.request(
                    "POST", "/api/v1/tokens", as_=api.admin, json=body, headers=key
                )
                for i in range(4)
            ]
        )
    assert [r.status_code for r in racing] == [201] * 4, [r.text for r in racing]
    assert len({r.json()["token_id"] for r in racing}) == 1
    secrets = [r.json()["secret"] for r in racing if r.json()["secret"] is not None]
    assert len(secrets) == 1  # the secret is shown once, to one of the copies
    assert await log_size(api) == before + 1
    retry = ok(await api.post("/api/v1/tokens", json=body, headers=key), 201).json()
    assert (retry["token_id"], retry["secret"]) == (racing[0].json()["token_id"], None)
    assert retry["note"] == "a retry: the secret was shown in the first response only"
    refused(
        await api.post("/api/v1/tokens", json={**body, "roles": ["admin"]}, headers=key),
        422,
        "reused",
    )
    assert await log_size(api) == before + 1
    me = ok(await api.get("/api/v1/me", as_=secrets[0])).json()
    assert (me["name"], me["scopes"]) == ("ci-bot", ["churn*"])


async def test_a_copy_waits_for_a_running_first_request_and_an_abandoned_claim_is_taken_over(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok(await api.post(M, json={"name": "churn"}), 201)
    body = json.dumps({"artifacts": [artifact(1)]}).encode()
    digest = hashlib.sha256(f"POST {V}\n".encode() + body).digest()
    claim = (
        "INSERT INTO idempotency_keys (principal, key, request_hash, status, headers, body, created_at)"
        " VALUES ('admin', $1, $2, $3, '[]', '', statement_timestamp() - make_interval(secs => $4))"
    )
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.5)
    before = await log_size(api)

    # another replica is still running the first request (its session holds the key's
    # lock): a copy waits, then gets a 409
    replica = await api.services.pool.acquire()
    lock = idempotency.claim_lock(api.services.settings.db_schema, "admin", "running-elsewhere")
    await replica.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", lock)
    await api.services.pool.execute(claim, "running-elsewhere", digest, idempotency.RUNNING, 0.0)
    busy = refused(
        await api.post(V, content=body, headers={**JSON, "Idempotency-Key": "running-elsewhere"}),
        409,
    )
    assert "still running" in busy["detail"]
    assert await log_size(api) == before
    # ... and a different request under that key is refused at once
    refused(
        await api.post(
            V, json={"artifacts": [artifact(2)]}, headers={"Idempotency-Key": "running-elsewhere"}
        ),
        422,
        "reused",
    )

    await replica.execute("SELECT pg_advisory_unlock_all()")
    await api.services.pool.release(replica)

    # a claim left by a process that died (no session holds its lock) is taken over
    await api.services.pool.execute(claim, "left-behind", digest, idempotency.RUNNING, 3600.0)
    taken = ok(
        await api.post(V, content=body, headers={**JSON, "Idempotency-Key": "left-behind"}), 201
    )
    assert taken.json()["version"] == 1
    again = ok(
        await api.post(V, content=body, headers={**JSON, "Idempotency-Key": "left-behind"}), 201
    )
    assert (again.content, again.headers["Idempotent-Replayed"]) == (taken.content, "true")
    assert await log_size(api) == before + 1


async def test_a_policy_as_read_can_be_written_back(api: Api) -> None:
    ok(
        await api.put(
            "/api/v1/policy",
            json=policy(
                {"approvals": 2, "gates": [{"metric": "auc", "threshold": 0.8}]},
                protected_aliases=[{"alias": "champion"}],
            ),
        )
    )
    read = ok(await api.get("/api/v1/policy"))
    written = await api.put(
        "/api/v1/policy",
        json={"policy": read.json()["policy"]},
        headers={"If-Match": read.headers["ETag"]},
    )
    assert ok(written).json()["events"] == []  # the same policy: nothing to record
    assert read.json()["policy"]["protected_aliases"] == [
        {"alias": "champion", "approvals": 1, "gates": []}
    ]


# --- pagination -----------------------------------------------------------------------


async def test_pagination_is_stable_while_others_write(api: Api) -> None:
    ok(await api.post(M, json={"name": "churn"}), 201)
    position = await register_versions(api, 25)
    names = [f"model-{i:02}" for i in range(0, 40, 2)]
    for name in names:
        position = max(position, last_position(ok(await api.post(M, json={"name": name}), 201)))

    async def page_through(path: str, key: str, writer: Any) -> list[Any]:
        seen: list[Any] = []
        cursor = None
        url = f"{path}&min_position={position}"
        for _ in range(100):
            page, *_ = await asyncio.gather(
                api.get(url if cursor is None else f"{url}&cursor={cursor}"), writer(), writer()
            )
            body = ok(page).json()
            seen += [item[key] for item in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                return seen
        raise AssertionError("no last page")

    counter = iter(range(10_000))

    async def new_version() -> None:
        ok(await api.post(V, json={"artifacts": [artifact(100 + next(counter))]}), 201)

    async def new_model() -> None:
        n = next(counter)
        ok(
            await api.post(M, json={"name": f"model-{2 * (n % 20) + 1:02}-{n}"}), 201
        )  # between the existing names

    for order, check in (("version", sorted), ("-version", lambda s: sorted(s, reverse=True))):
        seen = await page_through(f"{V}?order_by={order}&limit=4", "version", new_version)
        assert len(seen) == len(set(seen)), f"duplicates in {seen}"
        assert set(range(1, 26)) <= set(seen), f"gaps in {seen}"
        assert seen == check(seen)
    seen_models = await page_through(f"{M}?order_by=name&limit=3&q=model-", "name", new_model)
    assert len(seen_models) == len(set(seen_models)), seen_models
    assert set(names) <= set(seen_models)
    assert seen_models == sorted(seen_models)
