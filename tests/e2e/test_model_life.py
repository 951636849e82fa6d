"""The full life of a model through HTTP, with the audit timeline and as_of answers
checked at each step: register -> versions -> metrics -> staging -> promotion request ->
approval by a second person -> production -> alias -> rollback -> archive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from events.access import Role
from tests.support.api import Api, running_api
from tests.support.database import Database


def artifact(n: int) -> dict[str, Any]:
    return {
        "path": "model.pkl",
        "external": True,
        "uri": f"s3://models/churn/{n}/model.pkl",
        "sha256": f"{n:064x}",
        "size": 1000 + n,
    }


POLICY = {
    "policy": {
        "transitions": [
            {"from_stage": "development", "to_stage": "staging"},
            {"from_stage": "staging", "to_stage": "development"},
            {
                "from_stage": "staging",
                "to_stage": "production",
                "approvals": 1,
                "gates": [{"metric": "auc", "op": ">=", "dataset": "holdout", "threshold": 0.9}],
            },
            {"from_stage": "development", "to_stage": "archived"},
            {"from_stage": "staging", "to_stage": "archived"},
            {"from_stage": "production", "to_stage": "archived"},
        ],
        "protected_aliases": [{"alias": "champion", "approvals": 1}],
    },
    "comment": "production needs an approval and auc >= 0.9 on holdout",
}


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


async def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response


async def test_the_full_life_of_a_model(api: Api) -> None:
    alice = await api.token("alice", Role.CONTRIBUTOR)
    bob = await api.token("bob", Role.APPROVER)
    await ok(await api.put("/api/v1/policy", json=POLICY))

    # register the model and two versions, each with metrics
    created = await ok(
        await api.post(
            "/api/v1/models", json={"name": "churn", "tags": {"team": "risk"}}, as_=alice
        ),
        201,
    )
    after_register = int(created.headers["Modelreg-Position"])
    for n, auc in ((1, 0.91), (2, 0.95)):
        v = await ok(
            await api.post(
                "/api/v1/models/churn/versions",
                json={"artifacts": [artifact(n)], "params": {"lr": 0.1 * n}},
                as_=alice,
            ),
            201,
        )
        assert v.json()["version"] == n
        await ok(
            await api.post(
                f"/api/v1/models/churn/versions/{n}/metrics",
                as_=alice,
                json={"metrics": [{"key": "auc", "value": auc, "dataset": "holdout"}]},
            ),
            201,
        )

    # v1 -> staging directly (no approval needed), then production needs bob
    await ok(
        await api.post(
            "/api/v1/models/churn/versions/1/stage",
            json={"to": "staging", "comment": "try it"},
            as_=alice,
        )
    )
    pending = await ok(
        await api.post(
            "/api/v1/models/churn/versions/1/stage",
            json={"to": "production", "comment": "ship"},
            as_=alice,
        ),
        202,
    )
    request_id = pending.json()["request_id"]

    # alice cannot approve (role), bob can; the approval executes the promotion
    denied = await api.post(f"/api/v1/promotions/{request_id}/approve", json={}, as_=alice)
    assert denied.status_code == 403
    assert denied.json()["details"]["permission"] == "approve"
    approved = await ok(
        await api.post(
            f"/api/v1/promotions/{request_id}/approve", json={"comment": "lgtm"}, as_=bob
        )
    )
    assert "model.promotion_executed" in approved.json()["events"]
    in_production = int(approved.headers["Modelreg-Position"])

    model = (await ok(await api.get(f"/api/v1/models/churn?min_position={in_production}"))).json()
    assert model["stages"]["production"] == 1

    # v2 the same way, which demotes v1; then the protected alias through a request
    await ok(
        await api.post("/api/v1/models/churn/versions/2/stage", json={"to": "staging"}, as_=alice)
    )
    silent = await api.post(
        "/api/v1/models/churn/versions/2/stage", json={"to": "production"}, as_=alice
    )
    assert (silent.status_code, silent.json()["field"], silent.json()["rule"]) == (
        422,
        "comment",
        "required",
    )
    second = await ok(
        await api.post(
            "/api/v1/models/churn/versions/2/stage",
            json={"to": "production", "comment": "better"},
            as_=alice,
        ),
        202,
    )
    await ok(
        await api.post(
            f"/api/v1/promotions/{second.json()['request_id']}/approve", json={}, as_=bob
        )
    )
    blocked = await api.put("/api/v1/models/churn/aliases/champion", json={"version": 2}, as_=alice)
    assert blocked.status_code == 409
    assert blocked.json()["rule"] == "protected_alias"
    alias_request = await ok(
        await api.post(
            "/api/v1/models/churn/promotions",
            as_=alice,
            json={"version": 2, "alias": "champion", "justification": "best auc"},
        ),
        202,
    )
    aliased = await ok(
        await api.post(
            f"/api/v1/promotions/{alias_request.json()['request_id']}/approve", json={}, as_=bob
        )
    )
    after_alias = int(aliased.headers["Modelreg-Position"])
    by_alias = (
        await ok(
            await api.get(
                f"/api/v1/models/churn/versions/by-alias/champion?min_position={after_alias}"
            )
        )
    ).json()
    assert (by_alias["version"], by_alias["stage"]) == (2, "production")
    v1 = (await ok(await api.get("/api/v1/models/churn/versions/1"))).json()
    assert v1["stage"] == "archived"

    # roll back: production and the protected alias move only with an approval, so alice
    # asks and bob approves; v1 returns to production and takes the alias with it
    direct = await api.post(
        "/api/v1/models/churn/rollback", json={"reason": "v2 misbehaves"}, as_=alice
    )
    assert (direct.status_code, direct.json()["rule"]) == (409, "rollback_requires_approval")
    asked = await ok(
        await api.post(
            "/api/v1/models/churn/promotions",
            as_=alice,
            json={"version": 1, "rollback": True, "justification": "v2 misbehaves"},
        ),
        202,
    )
    rolled = await ok(
        await api.post(f"/api/v1/promotions/{asked.json()['request_id']}/approve", json={}, as_=bob)
    )
    assert rolled.json()["also_moved"] == [
        "alias 'champion': version 2 -> 1 (follows the rollback)",
        "version 2: production -> archived (demoted)",
    ]
    after_rollback = int(rolled.headers["Modelreg-Position"])
    model = (await ok(await api.get(f"/api/v1/models/churn?min_position={after_rollback}"))).json()
    assert (model["stages"]["production"], model["aliases"]) == (1, {"champion": 1})

    # archive the model (admin only)
    refused = await api.post("/api/v1/models/churn/archive", json={"reason": "retired"}, as_=alice)
    assert refused.status_code == 403
    archived = await ok(await api.post("/api/v1/models/churn/archive", json={"reason": "retired"}))
    end = int(archived.headers["Modelreg-Position"])
    assert (await ok(await api.get(f"/api/v1/models/churn?min_position={end}"))).json()[
        "archived"
    ] is True

    # as_of answers: the model as it stood after each step
    assert (await ok(await api.get(f"/api/v1/models/churn?as_of={after_register}"))).json()[
        "latest_version"
    ] is None
    then = (await ok(await api.get(f"/api/v1/models/churn?as_of={in_production}"))).json()
    assert (then["stages"]["production"], then["latest_version"], then["archived"]) == (1, 2, False)
    then = (
        await ok(
            await api.get(f"/api/v1/models/churn/versions/by-alias/champion?as_of={after_alias}")
        )
    ).json()
    assert then["version"] == 2
    gone = await api.get(f"/api/v1/models/churn/versions/by-alias/champion?as_of={in_production}")
    assert gone.status_code == 404

    # the stage timeline answers "what was in production then?"
    held = (
        await ok(await api.get(f"/api/v1/models/churn/timeline?stage=production&at={after_alias}"))
    ).json()
    assert [h["version"] for h in held] == [2]

    # the audit timeline tells who did what, when and why, in order
    history = (
        await ok(
            await api.get(
                f"/api/v1/models/churn/history?oldest_first=true&limit=1000&min_position={end}"
            )
        )
    ).json()
    actors_and_types = [(e["actor"], e["event_type"]) for e in history["items"]]
    assert actors_and_types[0] == ("alice", "model.registered")
    assert ("bob", "model.promotion_approved") in actors_and_types
    assert actors_and_types[-1] == ("admin", "model.archived")
    assert any(e["reason"] == "v2 misbehaves" for e in history["items"])

    # and the chains verify
    report = (await ok(await api.get("/api/v1/audit/verify"))).json()
    assert report["ok"] is True
    assert report["head_position"] >= end
