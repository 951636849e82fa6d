"""Commands decided under the registry policy in force, even when another replica has
just changed it.

A replica builds a governed command on the registry policy it last saw, and the append is
guarded by that policy's revision (service.commands.registry). A replica that has seen
only an older policy must still decide under the new one: its first try is refused by the
guard, and the try after reads the policy afresh. Two things depend on it here: metric
gates, whose metrics are read only when the policy deciding has gates, and the stage a new
version starts in, which is the policy's initial stage."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.replicas import another_replica

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


CUSTOM = {
    "policy": {
        "stages": [
            {"name": "training"},
            {"name": "review"},
            {"name": "archived", "terminal": True},
        ],
        "transitions": [
            {"from_stage": "training", "to_stage": "review"},
            {"from_stage": "training", "to_stage": "archived"},
            {"from_stage": "review", "to_stage": "archived"},
        ],
    },
    "comment": "our own lifecycle: versions start in training",
}


async def test_a_version_registered_after_another_replica_changed_the_stages_starts_in_the_new_initial_stage(
    db: Database,
) -> None:
    async with running_api(db) as api, another_replica(api) as other:
        # given a replica that registered a version under the default stages (so that is
        # the registry policy it has seen)
        assert (await api.post("/api/v1/models", json={"name": "churn"})).status_code == 201
        first = await api.post(f"{M}/versions", json={"artifacts": [ARTIFACT]})
        assert first.status_code == 201, first.text
        # (the one version is archived, so the new stages strand nothing)
        archived = await api.post(f"{M}/versions/1/stage", json={"to": "archived"})
        assert archived.status_code == 200, archived.text

        # when another replica replaces the stages, and the first registers a version
        changed = await other.put("/api/v1/policy", json=CUSTOM)
        assert changed.status_code == 200, changed.text
        second = await api.post(f"{M}/versions", json={"artifacts": [ARTIFACT]})
        assert second.status_code == 201, second.text

        # then the version starts in the new policy's initial stage
        version = await api.get(f"{M}/versions/2")
        assert version.status_code == 200, version.text
        assert version.json()["stage"] == "training"
