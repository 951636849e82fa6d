"""Metric gates decided on the metrics, even when another replica just added them.

A governed command reads a version's metrics only when the policy deciding it has metric
gates (service.commands.registry). A replica that has seen only a policy without gates
must still judge a move on the real metrics once another replica's policy gates it: its
first try is refused by the policy's guard, and the try after reads the metrics."""

from __future__ import annotations

from typing import Any

import httpx

from tests.integration.test_mlflow_names import another_replica
from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models/churn"
OPEN = {"policy": {"transitions": [{"from_stage": "development", "to_stage": "staging"}]}}
GATED = {
    "policy": {
        "transitions": [
            {
                "from_stage": "development",
                "to_stage": "staging",
                "gates": [{"metric": "auc", "op": ">=", "threshold": 0.8, "dataset": "holdout"}],
            },
            {"from_stage": "staging", "to_stage": "development"},
        ]
    },
    "comment": "staging needs auc >= 0.8 on holdout",
}
ARTIFACT = {
    "path": "m.pkl",
    "external": True,
    "uri": "s3://b/m.pkl",
    "sha256": "ab" * 32,
    "size": 1,
}


async def to_staging(client: Api | httpx.AsyncClient, version: int) -> httpx.Response:
    return await client.post(f"{M}/versions/{version}/stage", json={"to": "staging"})


async def log_auc(api: Api, version: int, value: float) -> None:
    point: dict[str, Any] = {"key": "auc", "value": value, "dataset": "holdout"}
    logged = await api.post(f"{M}/versions/{version}/metrics", json={"metrics": [point]})
    assert logged.status_code == 201, logged.text


async def test_a_gate_added_by_another_replica_is_judged_on_the_versions_metrics(
    db: Database,
) -> None:
    async with running_api(db) as api, another_replica(api) as other:
        # given three versions of churn, and a replica that moved version 1 under a policy
        # without gates (so that is the registry policy it has seen)
        opened = await api.put("/api/v1/policy", json=OPEN | {"comment": "no gates yet"})
        assert opened.status_code == 200, opened.text
        assert (await api.post("/api/v1/models", json={"name": "churn"})).status_code == 201
        for _ in range(3):
            created = await api.post(f"{M}/versions", json={"artifacts": [ARTIFACT]})
            assert created.status_code == 201, created.text
        moved = await to_staging(api, 1)
        assert moved.status_code == 200, moved.text
        # and versions 2 and 3 with auc 0.9 and 0.7 on holdout
        await log_auc(api, 2, 0.9)
        await log_auc(api, 3, 0.7)

        # when another replica gates development -> staging on auc >= 0.8
        gated = await other.put("/api/v1/policy", json=GATED)
        assert gated.status_code == 200, gated.text

        # then the first replica moves version 2, whose auc passes the gate
        passing = await to_staging(api, 2)
        assert passing.status_code == 200, passing.text
        # and refuses version 3, naming the gate it fails
        failing = await to_staging(api, 3)
        assert failing.status_code == 409, failing.text
        assert "auc" in failing.json()["detail"]
