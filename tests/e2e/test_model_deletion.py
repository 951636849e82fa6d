"""Deleting a model through HTTP: it leaves listings, search and MLflow answers, its name is
free again, its open requests are cancelled, its history stays behind a tombstone, and its
stored files become collectable; only an admin may, and never while it serves production."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest

from events.access import Role
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.policies import PERMISSIVE_POLICY_BODY

M = "/api/v1/models"
WEIGHTS = b"weights of a model nobody should have registered" * 100
SHA = hashlib.sha256(WEIGHTS).hexdigest()


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        ok(await running.put("/api/v1/policy", json={"policy": PERMISSIVE_POLICY_BODY}))
        yield running


def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response


async def position(answer: httpx.Response) -> int:
    last: int = answer.json()["position"]
    return last


async def a_model_with_files_metrics_and_an_open_request(api: Api, name: str) -> str:
    ok(await api.post(M, json={"name": name, "tags": {"team": "risk"}}), 201)
    champion = {"protected_aliases": [{"alias": "champion", "approvals": 1}]}
    ok(await api.put(f"{M}/{name}/policy", json={"policy": champion, "comment": "four eyes"}))
    ok(await api.put(f"{M}/{name}/blobs/sha256:{SHA}", content=WEIGHTS), 201)
    artifact = {"path": "model.bin", "sha256": SHA, "size": len(WEIGHTS)}
    ok(await api.post(f"{M}/{name}/versions", json={"artifacts": [artifact]}), 201)
    ok(
        await api.post(
            f"{M}/{name}/versions/1/metrics", json={"metrics": [{"key": "auc", "value": 0.7}]}
        ),
        201,
    )
    ok(await api.post(f"{M}/{name}/versions/1/stage", json={"to": "staging"}))
    request = ok(
        await api.post(
            f"{M}/{name}/promotions",
            json={"version": 1, "alias": "champion", "justification": "try"},
        ),
        202,
    )
    request_id: str = request.json()["request_id"]
    return request_id


async def test_a_deleted_model_is_gone_everywhere_but_its_history(api: Api) -> None:
    # given a model with a stored file, metrics, a staging version and an open request
    request_id = await a_model_with_files_metrics_and_an_open_request(api, "scratch")
    # when an admin deletes it
    deleted = ok(await api.post(f"{M}/scratch/delete", json={"reason": "created by mistake"}))
    after = await position(deleted)
    fresh = {"min_position": after}
    # then it is not found, listed, searched, nor shown by MLflow's API
    assert (await api.get(f"{M}/scratch", params=fresh)).status_code == 404
    listed = ok(await api.get(M, params=fresh)).json()["items"]
    assert "scratch" not in [m["name"] for m in listed]
    mlflow = ok(await api.get("/api/2.0/mlflow/registered-models/search")).json()
    assert "scratch" not in [m["name"] for m in mlflow.get("registered_models", [])]
    versions = ok(
        await api.get("/api/2.0/mlflow/model-versions/search", params={"filter": "name='scratch'"})
    ).json()
    assert versions.get("model_versions", []) == []
    # and its open request was cancelled by the deleter, saying why
    request = ok(await api.get(f"/api/v1/promotions/{request_id}", params=fresh)).json()
    assert (request["status"], request["decided_by"]) == ("cancelled", "admin")
    # and the log keeps its history, ending with the tombstone that says who and why
    log = ok(await api.get("/api/v1/events", params={"after": 0, "limit": 1000})).json()["items"]
    tombstones = [e["envelope"] for e in log if e["envelope"]["event_type"] == "model.deleted"]
    # (as recorded: the actor is a subject id, which the subjects endpoint names)
    assert [
        (await display(api, t["actor"]), t["data"]["name"], t["data"]["reason"]) for t in tombstones
    ] == [("admin", "scratch", "created by mistake")]
    # and the registry as it stood before the deletion still shows the model
    past = ok(await api.get(M, params={"as_of": after - 1})).json()["items"]
    assert "scratch" in [m["name"] for m in past]
    # and its file is no longer named by any version, so the GC may take it after the grace
    report = ok(await api.get("/api/v1/audit/artifacts")).json()
    orphans = {f["digest"]: f for f in report["findings"] if f["status"] == "orphan"}
    assert f"sha256:{SHA}" in orphans
    assert orphans[f"sha256:{SHA}"]["age_seconds"] < 3600  # counted from the deletion


async def test_the_name_of_a_deleted_model_is_free_for_a_new_one(api: Api) -> None:
    # given a deleted model with two versions
    ok(await api.post(M, json={"name": "churn"}), 201)
    for _ in range(2):
        external = {
            "path": "m",
            "external": True,
            "uri": "s3://b/m",
            "sha256": "ab" * 32,
            "size": 1,
        }
        ok(await api.post(f"{M}/churn/versions", json={"artifacts": [external]}), 201)
    first = ok(await api.get(f"{M}/churn")).json()["model_id"]
    ok(await api.post(f"{M}/churn/delete", json={"reason": "start again"}))
    # when a model is registered under the same name
    again = ok(await api.post(M, json={"name": "churn", "description": "the real one"}), 201)
    # then it is a new model, whose versions are numbered from 1
    shown = ok(await api.get(f"{M}/churn", params={"min_position": await position(again)})).json()
    assert shown["model_id"] != first and shown["description"] == "the real one"
    assert shown["latest_version"] is None
    external = {"path": "m", "external": True, "uri": "s3://b/n", "sha256": "cd" * 32, "size": 1}
    created = ok(await api.post(f"{M}/churn/versions", json={"artifacts": [external]}), 201)
    assert created.json()["version"] == 1


async def test_only_an_admin_deletes_and_never_a_model_serving_production(api: Api) -> None:
    # given a model with a version in production, and a contributor
    ok(await api.post(M, json={"name": "live"}), 201)
    external = {"path": "m", "external": True, "uri": "s3://b/m", "sha256": "ab" * 32, "size": 1}
    ok(await api.post(f"{M}/live/versions", json={"artifacts": [external]}), 201)
    for stage in ("staging", "production"):
        ok(await api.post(f"{M}/live/versions/1/stage", json={"to": stage, "comment": "ship"}))
    contributor = await api.token("carl", Role.CONTRIBUTOR)
    # when the contributor tries to delete it, it is refused for want of admin
    refused = ok(await api.post(f"{M}/live/delete", json={"reason": "x"}, as_=contributor), 403)
    assert refused.json()["details"]["permission"] == "admin"
    # and when the admin tries, it is refused while version 1 serves production
    conflict = ok(await api.post(f"{M}/live/delete", json={"reason": "retired"}), 409)
    assert "version 1 in production" in conflict.json()["detail"]
    # and a reason is required
    blank = ok(await api.post(f"{M}/live/delete", json={"reason": " "}), 422)
    assert (blank.json()["field"], blank.json()["rule"]) == ("reason", "required")
    # and the model is untouched
    assert ok(await api.get(f"{M}/live")).json()["stages"]["production"] == 1


async def display(api: Api, subject_id: str) -> str:
    assert subject_id.startswith("subj_"), f"{subject_id!r} is recorded in clear"
    shown: str = ok(await api.get(f"/api/v1/subjects/{subject_id}")).json()["display"]
    return shown
