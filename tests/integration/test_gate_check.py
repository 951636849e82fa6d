"""The gate check: the decider run on a move without recording it, over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models/churn"
POLICY = {
    "policy": {
        "transitions": [
            {"from_stage": "development", "to_stage": "staging"},
            {
                "from_stage": "staging",
                "to_stage": "production",
                "approvals": 1,
                "gates": [{"metric": "auc", "op": ">=", "threshold": 0.9}],
            },
        ]
    },
    "comment": "production needs an approver and auc >= 0.9",
}


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        assert (await running.put("/api/v1/policy", json=POLICY)).status_code == 200
        assert (await running.post("/api/v1/models", json={"name": "churn"})).status_code == 201
        artifact = {"path": "m.pkl", "external": True, "uri": "s3://b/m.pkl"}
        version = {"artifacts": [artifact | {"sha256": "ab" * 32, "size": 10}]}
        for _ in range(2):
            assert (await running.post(f"{M}/versions", json=version)).status_code == 201
        yield running


async def check(api: Api, version: int, to: str) -> dict[str, Any]:
    response = await api.get(f"{M}/versions/{version}/gate", params={"to": to})
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def events(api: Api) -> int:
    count: int = await api.services.pool.fetchval("SELECT count(*) FROM events")
    return count


async def test_the_check_says_what_the_move_would_do_and_records_nothing(api: Api) -> None:
    before = await events(api)
    # a direct move passes directly
    direct = await check(api, 1, "staging")
    assert (direct["passes"], direct["outcome"]) == (True, "direct")
    assert direct["would_record"] == ["model.stage_transitioned"]
    # a move the policy has no rule for is refused, naming why
    skipped = await check(api, 1, "production")
    assert (skipped["passes"], skipped["outcome"]) == (False, "refused")
    assert skipped["code"] and skipped["reason"]
    assert await events(api) == before
    # in staging without the metric, the gate refuses; with it, the move needs an approval
    await api.post(f"{M}/versions/1/stage", json={"to": "staging"})
    gated = await check(api, 1, "production")
    assert not gated["passes"] and "auc" in gated["reason"]
    # and each gate is listed with the value it was judged on
    assert [(g["gate"]["metric"], g["value"], g["passed"]) for g in gated["gates"]] == [
        ("auc", None, False)
    ]
    metrics = {"metrics": [{"key": "auc", "value": 0.93}]}
    assert (await api.post(f"{M}/versions/1/metrics", json=metrics)).status_code in (200, 201)
    passing = await check(api, 1, "production")
    assert (passing["passes"], passing["outcome"]) == (True, "needs_approval")
    assert passing["approvals_required"] == 1
    assert passing["would_record"] == ["model.promotion_requested"]
    assert [(g["gate"]["metric"], g["value"], g["passed"]) for g in passing["gates"]] == [
        ("auc", 0.93, True)
    ]


async def test_an_unknown_version_or_stage_is_a_4xx(api: Api) -> None:
    missing = await api.get(f"{M}/versions/9/gate", params={"to": "staging"})
    assert missing.status_code == 404
    bad = await api.get(f"{M}/versions/1/gate", params={"to": "canary"})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    assert (bad.json()["field"], bad.json()["rule"]) == ("to", "undefined_stage")
    unnamed = await api.get("/api/v1/models/nope/versions/1/gate", params={"to": "staging"})
    assert unnamed.status_code == 404
