"""Environments through HTTP on a real Postgres: v7 in production in eu and us at once,
v8 into production@eu leaves v7 in us, approvals and drift per environment, and missing,
unknown or needless environments refused with problem+json naming ``environment``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from events.access import Role
from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models"
V = f"{M}/churn/versions"
MLFLOW = "/api/2.0/mlflow"

# The README's policy: production per environment, entering it needs one approval.
REGIONAL_POLICY: dict[str, Any] = {
    "stages": [
        {"name": "development"},
        {"name": "staging"},
        {"name": "production", "exclusive": True, "environments": ["eu", "us"]},
        {"name": "archived", "terminal": True},
    ],
    "transitions": [
        {"from_stage": "development", "to_stage": "staging"},
        {"from_stage": "staging", "to_stage": "production", "approvals": 1},
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


def position(response: httpx.Response) -> int:
    return int(response.headers["Modelreg-Position"])


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


async def _model_with_versions_in_staging(api: Api, erin: str, *numbers: int) -> int:
    """The log position of the last write."""
    ok(await api.put(f"{M}/churn/policy", json={"policy": REGIONAL_POLICY}))
    for n in range(1, max(numbers) + 1):
        body = {
            "artifacts": [
                {
                    "path": "model.pkl",
                    "external": True,
                    "uri": f"s3://models/churn/{n}/model.pkl",
                    "sha256": f"{n:064x}",
                    "size": 1000 + n,
                }
            ]
        }
        last = ok(await api.post(V, json=body, as_=erin), 201)
        if n in numbers:
            last = ok(await api.post(f"{V}/{n}/stage", json={"to": "staging"}, as_=erin))
    return position(last)


async def _promote(api: Api, erin: str, bob: str, version: int, environment: str) -> int:
    """Requested by erin, approved by bob: the position of the approval."""
    body = {"to": "production", "environment": environment, "comment": f"to {environment}"}
    opened = ok(await api.post(f"{V}/{version}/stage", json=body, as_=erin), 202).json()
    approved = await api.post(
        f"/api/v1/promotions/{opened['request_id']}/approve", json={}, as_=bob
    )
    return position(ok(approved))


async def test_a_version_serves_two_environments_and_a_newer_one_takes_one_of_them(
    api: Api,
) -> None:
    erin = await api.token("erin", Role.CONTRIBUTOR)
    bob = await api.token("bob", Role.APPROVER)
    ok(await api.post(M, json={"name": "churn"}, as_=erin), 201)
    await _model_with_versions_in_staging(api, erin, 6, 7, 8)

    # given v7 approved into production@eu and then production@us
    await _promote(api, erin, bob, 7, "eu")
    at = await _promote(api, erin, bob, 7, "us")
    v7 = ok(await api.get(f"{V}/7?min_position={at}")).json()
    assert (v7["stage"], v7["environments"]) == ("production", ["eu", "us"])

    both = at

    # when v8 is approved into production@eu
    at = await _promote(api, erin, bob, 8, "eu")

    # then v8 holds eu, v7 still holds us
    v7 = ok(await api.get(f"{V}/7?min_position={at}")).json()
    v8 = ok(await api.get(f"{V}/8?min_position={at}")).json()
    assert (v7["stage"], v7["environments"]) == ("production", ["us"])
    assert (v8["stage"], v8["environments"]) == ("production", ["eu"])
    # and as of before v8's promotion, v7 was in both
    was = ok(await api.get(f"{V}/7?as_of={both}")).json()
    assert was["environments"] == ["eu", "us"]
    # and the model's summary names each environment's holder
    model = ok(await api.get(f"{M}/churn?min_position={at}")).json()
    assert (model["stages"]["production@eu"], model["stages"]["production@us"]) == (8, 7)
    # and an MLflow client sees both in Production, and cannot name an environment
    for number in (7, 8):
        seen = ok(await api.get(f"{MLFLOW}/model-versions/get?name=churn&version={number}"))
        assert seen.json()["model_version"]["current_stage"] == "Production"
    body = {"name": "churn", "version": "6", "stage": "Production"}
    refused = await api.post(f"{MLFLOW}/model-versions/transition-stage", json=body, as_=erin)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "environment" in refused.json()["message"]
    # and versions can be listed per environment
    listed = ok(await api.get(f"{V}?stage=production&environment=us&min_position={at}")).json()
    assert [row["version"] for row in listed["items"]] == [7]
    # and the timeline has an interval per environment
    timeline = ok(
        await api.get(f"{M}/churn/timeline?stage=production&environment=eu&min_position={at}")
    ).json()
    assert [(i["stage"], i["version"], i["to_position"] is None) for i in timeline] == [
        ("production@eu", 7, False),
        ("production@eu", 8, True),
    ]


async def test_an_approval_is_per_environment(api: Api) -> None:
    erin = await api.token("erin", Role.CONTRIBUTOR)
    bob = await api.token("bob", Role.APPROVER)
    ok(await api.post(M, json={"name": "churn"}, as_=erin), 201)
    await _model_with_versions_in_staging(api, erin, 1)

    # given a promotion request of v1 for production@eu
    body = {"version": 1, "target_stage": "production", "environment": "eu", "justification": "go"}
    made = ok(await api.post(f"{M}/churn/promotions", json=body, as_=erin), 202)
    opened = made.json()
    request = ok(
        await api.get(f"/api/v1/promotions/{opened['request_id']}?min_position={position(made)}")
    ).json()
    assert request["environment"] == "eu"

    # when bob approves it
    at = position(
        ok(await api.post(f"/api/v1/promotions/{opened['request_id']}/approve", json={}, as_=bob))
    )

    # then v1 is in production in eu only: us still needs its own approved request
    v1 = ok(await api.get(f"{V}/1?min_position={at}")).json()
    assert v1["environments"] == ["eu"]
    again = ok(
        await api.post(
            f"{V}/1/stage",
            json={"to": "production", "environment": "us", "comment": "us"},
            as_=erin,
        ),
        202,
    ).json()
    assert again["request_id"] != opened["request_id"]


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        ({"to": "production", "comment": "go"}, "required"),
        ({"to": "production", "environment": "apac", "comment": "go"}, "undefined_environment"),
        ({"to": "archived", "environment": "eu", "comment": "go"}, "no_environments"),
    ],
)
async def test_a_missing_unknown_or_needless_environment_is_refused_naming_it(
    api: Api, body: dict[str, Any], rule: str
) -> None:
    ok(await api.post(M, json={"name": "churn"}), 201)
    at = await _model_with_versions_in_staging(api, await api.token("erin", Role.CONTRIBUTOR), 1)
    before = ok(await api.get(f"{M}/churn/history?min_position={at}")).json()

    # when a move names no, an unknown or a needless environment
    refused = problem(await api.post(f"{V}/1/stage", json=body), 422)

    # then the problem names the field and the rule, and nothing was recorded
    assert (refused["field"], refused["rule"]) == ("environment", rule)
    assert ok(await api.get(f"{M}/churn/history?min_position={at}")).json() == before


async def test_a_promotion_request_without_its_environment_is_refused(api: Api) -> None:
    ok(await api.post(M, json={"name": "churn"}), 201)
    await _model_with_versions_in_staging(api, await api.token("erin", Role.CONTRIBUTOR), 1)
    body = {"version": 1, "target_stage": "production", "justification": "go"}
    refused = problem(await api.post(f"{M}/churn/promotions", json=body), 422)
    assert (refused["field"], refused["rule"]) == ("environment", "required")


async def test_drift_compares_each_environment_with_its_own_production_version(api: Api) -> None:
    erin = await api.token("erin", Role.CONTRIBUTOR)
    bob = await api.token("bob", Role.APPROVER)
    ok(await api.post(M, json={"name": "churn"}, as_=erin), 201)
    await _model_with_versions_in_staging(api, erin, 7, 8)
    await _promote(api, erin, bob, 7, "eu")
    await _promote(api, erin, bob, 7, "us")

    # given v7 deployed in eu and in us, both following production
    for environment in ("eu", "us"):
        body = {
            "environment": environment,
            "target": "k8s",
            "desired_stage": "production",
            "deployment_id": f"dep-{environment}",
        }
        ok(await api.post(f"{V}/7/deployments", json=body, as_=erin), 201)
        report = {"deployment_id": f"dep-{environment}", "status": "succeeded"}
        ok(await api.post(f"{M}/churn/deployments/report", json=report, as_=erin))

    # when v8 takes production@eu
    at = await _promote(api, erin, bob, 8, "eu")

    # then eu drifts (it wants v8), us is in sync (it still wants v7)
    places = ok(await api.get(f"{M}/churn/deployments?min_position={at}")).json()
    judged = {
        p["environment"]: (p["desired_version"], p["live_version"], p["drift_code"]) for p in places
    }
    assert judged == {"eu": (8, 7, "version_mismatch"), "us": (7, 7, "in_sync")}
