"""MLflow creates go to the model that bears the name now, though each replica remembers
which model a name led to (``Registry.known_id``) and skips looking it up again.

Covers: after another replica renames the model and registers a new one under its old
name, or deletes (archives) it, a replica that remembers the old id creates the version
on the model that bears the name, or answers RESOURCE_DOES_NOT_EXIST, as if it had looked
the name up; the renamed model gets nothing.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.replicas import another_replica

MLFLOW = "/api/2.0/mlflow"


async def call(client: httpx.AsyncClient | Api, rpc: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(f"{MLFLOW}/{rpc}", json=body)


async def created(client: httpx.AsyncClient | Api, name: str, source: str) -> dict[str, Any]:
    answer = await call(client, "model-versions/create", {"name": name, "source": source})
    assert answer.status_code == 200, answer.text
    version: dict[str, Any] = answer.json()["model_version"]
    return version


async def versions_of(api: Api, name: str) -> list[tuple[str, str]]:
    answer = await api.get(f"{MLFLOW}/model-versions/search", params={"filter": f"name='{name}'"})
    assert answer.status_code == 200, answer.text
    return sorted((v["version"], v["source"]) for v in answer.json().get("model_versions", []))


async def churn_with_a_version(api: Api, source: str) -> None:
    """Model "churn" and one version, created through ``api`` (which so learns its id)."""
    assert (await call(api, "registered-models/create", {"name": "churn"})).status_code == 200
    await created(api, "churn", source)


async def test_a_create_after_a_rename_elsewhere_lands_on_the_model_bearing_the_name(
    db: Database,
) -> None:
    async with running_api(db) as api, another_replica(api) as other:
        # given a replica that created a version of "churn" (and remembers where it went)
        await churn_with_a_version(api, "s3://b/old-1")

        # when another replica renames it and registers a new model under the old name
        renamed = await call(
            other, "registered-models/rename", {"name": "churn", "new_name": "churn-old"}
        )
        assert renamed.status_code == 200, renamed.text
        # (another body: the same create sent again would be a retry of the first)
        again = {"name": "churn", "description": "the new churn"}
        assert (await call(other, "registered-models/create", again)).status_code == 200

        # and the first replica creates a version of "churn"
        version = await created(api, "churn", "s3://b/new-1")

        # then it is the new model's first version; the renamed model has only its own
        assert (version["name"], version["version"]) == ("churn", "1")
        assert await versions_of(api, "churn") == [("1", "s3://b/new-1")]
        assert await versions_of(api, "churn-old") == [("1", "s3://b/old-1")]


async def test_a_create_after_a_delete_elsewhere_answers_that_the_model_does_not_exist(
    db: Database,
) -> None:
    async with running_api(db) as api, another_replica(api) as other:
        # given a replica that created a version of "churn"
        await churn_with_a_version(api, "s3://b/1")

        # when another replica deletes the model
        deleted = await other.request(
            "DELETE", f"{MLFLOW}/registered-models/delete", json={"name": "churn"}
        )
        assert deleted.status_code == 200, deleted.text

        # then a create on the first replica answers as MLflow does, and records nothing
        answer = await call(api, "model-versions/create", {"name": "churn", "source": "s3://b/2"})
        assert answer.status_code == 404, answer.text
        assert answer.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        rows = await db.pool.fetchval(
            "SELECT count(*) FROM events WHERE event_type = 'model.version_registered'"
        )
        assert rows == 1
