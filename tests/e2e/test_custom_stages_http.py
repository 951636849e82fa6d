"""Custom stages through HTTP on a real Postgres: the glossary lifecycle
(training -> staging -> production) is one registry policy away; undefined stages and
policies that would strand versions are refused with problem+json naming field and rule."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from events.access import Role
from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models"
V = f"{M}/churn/versions"
MLFLOW = "/api/2.0/mlflow"

# The README's policy, verbatim.
GLOSSARY_POLICY: dict[str, Any] = {
    "stages": [
        {"name": "training"},
        {"name": "staging"},
        {"name": "production", "exclusive": True},
        {"name": "archived", "terminal": True},
    ],
    "transitions": [
        {"from_stage": "training", "to_stage": "staging"},
        {"from_stage": "staging", "to_stage": "training"},
        {"from_stage": "staging", "to_stage": "production", "approvals": 1},
        {"from_stage": "training", "to_stage": "archived"},
        {"from_stage": "staging", "to_stage": "archived"},
        {"from_stage": "production", "to_stage": "archived", "approvals": 1},
    ],
}


def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
    )
    return response


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def artifact(n: int) -> dict[str, Any]:
    return {
        "path": "model.pkl",
        "external": True,
        "uri": f"s3://models/churn/{n}/model.pkl",
        "sha256": f"{n:064x}",
        "size": 1000 + n,
    }


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


async def stage_of(api: Api, version: int, position: int) -> str:
    row = ok(await api.get(f"{V}/{version}?min_position={position}")).json()
    stage: str = row["stage"]
    return stage


async def test_the_glossary_lifecycle_is_one_registry_policy_away(api: Api) -> None:
    erin = await api.token("erin", Role.CONTRIBUTOR)
    bob = await api.token("bob", Role.APPROVER)
    # given the registry policy training -> staging -> production
    ok(await api.put("/api/v1/policy", json={"policy": GLOSSARY_POLICY, "comment": "ours"}))
    view = ok(await api.get("/api/v1/policy")).json()
    assert [s["name"] for s in view["stages"]] == ["training", "staging", "production", "archived"]
    assert view["initial_stage"] == "training"
    ok(await api.post(M, json={"name": "churn"}, as_=erin), 201)

    # when two versions are registered, then they start in training
    for n in (1, 2):
        made = ok(await api.post(V, json={"artifacts": [artifact(n)]}, as_=erin), 201)
        assert await stage_of(api, n, int(made.headers["Modelreg-Position"])) == "training"

    # when version 1 moves to staging, then directly; to production, then through approval
    ok(await api.post(f"{V}/1/stage", json={"to": "staging"}, as_=erin))
    request_id = ok(
        await api.post(f"{V}/1/stage", json={"to": "production", "comment": "go"}, as_=erin),
        202,
    ).json()["request_id"]
    approved = ok(await api.post(f"/api/v1/promotions/{request_id}/approve", json={}, as_=bob))
    assert await stage_of(api, 1, int(approved.headers["Modelreg-Position"])) == "production"

    # when version 2 follows it to production, then production stays exclusive: 1 is archived
    ok(await api.post(f"{V}/2/stage", json={"to": "staging"}, as_=erin))
    second = ok(
        await api.post(f"{V}/2/stage", json={"to": "production", "comment": "better"}, as_=erin),
        202,
    ).json()["request_id"]
    done = ok(await api.post(f"/api/v1/promotions/{second}/approve", json={}, as_=bob))
    position = int(done.headers["Modelreg-Position"])
    assert await stage_of(api, 2, position) == "production"
    assert await stage_of(api, 1, position) == "archived"

    # when an admin restores the archived version 1 (a contributor may not), then it is
    # back in the initial stage, training
    forbidden = problem(
        await api.post(f"{V}/1/restore", json={"reason": "needed again"}, as_=erin), 403
    )
    assert forbidden["code"] == "permission_denied"
    restored = ok(await api.post(f"{V}/1/restore", json={"reason": "needed again"}))
    assert await stage_of(api, 1, int(restored.headers["Modelreg-Position"])) == "training"

    # and lists filter by the custom stage; MLflow clients see it verbatim
    ok(await api.post(V, json={"artifacts": [artifact(3)]}, as_=erin), 201)
    made = ok(await api.post(V, json={"artifacts": [artifact(4)]}, as_=erin), 201)
    position = int(made.headers["Modelreg-Position"])
    page = ok(await api.get(f"{V}?stage=training&min_position={position}")).json()
    assert sorted(v["version"] for v in page["items"]) == [1, 3, 4]
    mlflow = ok(await api.get(f"{MLFLOW}/model-versions/get?name=churn&version=3")).json()
    assert mlflow["model_version"]["current_stage"] == "training"
    mlflow = ok(await api.get(f"{MLFLOW}/model-versions/get?name=churn&version=2")).json()
    assert mlflow["model_version"]["current_stage"] == "Production"


async def test_a_stage_the_policy_does_not_define_is_a_problem_naming_field_and_rule(
    api: Api,
) -> None:
    # given a model under the default policy with one version
    ok(await api.post(M, json={"name": "churn"}), 201)
    ok(await api.post(V, json={"artifacts": [artifact(1)]}), 201)
    before = ok(await api.get(f"{M}/churn")).headers["ETag"]
    # when the version is sent to an undefined stage, or to an invalid name
    undefined = problem(await api.post(f"{V}/1/stage", json={"to": "training"}), 422)
    invalid = problem(await api.post(f"{V}/1/stage", json={"to": "Prod uction"}), 422)
    # then each problem names the field and the rule, and nothing is recorded
    assert (undefined["field"], undefined["rule"]) == ("to", "undefined_stage")
    assert (invalid["field"], invalid["rule"]) == ("to", "pattern")
    assert ok(await api.get(f"{M}/churn")).headers["ETag"] == before


async def test_a_registry_policy_that_would_strand_versions_is_refused(api: Api) -> None:
    # given the glossary lifecycle and a version in training
    ok(await api.put("/api/v1/policy", json={"policy": GLOSSARY_POLICY}))
    ok(await api.post(M, json={"name": "churn"}), 201)
    ok(await api.post(V, json={"artifacts": [artifact(1)]}), 201)
    etag = ok(await api.get("/api/v1/policy")).headers["ETag"]
    # when an admin goes back to the default lifecycle (which has no training)
    refused = problem(await api.put("/api/v1/policy", json={"policy": {}}), 409)
    # then it is refused with the stage and version, and the policy is unchanged
    assert (refused["field"], refused["rule"]) == ("policy.stages", "stage_in_use")
    assert (refused["details"]["stage"], refused["details"]["version"]) == ("training", 1)
    assert ok(await api.get("/api/v1/policy")).headers["ETag"] == etag
    # and a model with its own policy that keeps training is not concerned
    own = {**GLOSSARY_POLICY, "transitions": GLOSSARY_POLICY["transitions"][:1]}
    ok(await api.put(f"{M}/churn/policy", json={"policy": own}))
    ok(await api.put("/api/v1/policy", json={"policy": {}}))
    # but it cannot drop its own policy while its version sits in training
    cleared = problem(await api.delete(f"{M}/churn/policy"), 409)
    assert cleared["rule"] == "stage_in_use"


async def test_a_malformed_lifecycle_is_a_problem_naming_field_and_rule(api: Api) -> None:
    body = {**GLOSSARY_POLICY, "stages": [*GLOSSARY_POLICY["stages"], {"name": "training"}]}
    duplicate = problem(await api.put("/api/v1/policy", json={"policy": body}), 422)
    assert (duplicate["field"], duplicate["rule"]) == ("policy.stages[4].name", "unique")
    body = {**GLOSSARY_POLICY, "initial_stage": "Training"}
    initial = problem(await api.put("/api/v1/policy", json={"policy": body}), 422)
    assert (initial["field"], initial["rule"]) == ("policy.initial_stage", "pattern")


def test_the_readme_shows_the_policy_this_file_runs() -> None:
    # given the README's custom-stages example
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("echo '", readme.index("## Custom stages")) + len("echo '")
    # when its policy document is read, then it is the one these tests set and move through
    assert json.loads(readme[start : readme.index("' > lifecycle.json", start)]) == (
        GLOSSARY_POLICY
    )
