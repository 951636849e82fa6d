"""Native writes by model name go to the model that bears the name now, though each
replica remembers which model a name led to (``Registry.on_named``) and skips looking it
up again: a registration, a tag, after another replica renamed the model and created a new
one under its name, or archived it."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.replicas import another_replica

M = "/api/v1/models"


def external(n: int) -> dict[str, Any]:
    return {
        "path": "model.bin",
        "uri": f"s3://b/{n}",
        "sha256": f"{n:064x}",
        "size": 1,
        "external": True,
    }


async def registered(client: httpx.AsyncClient | Api, name: str, entry: dict[str, Any]) -> int:
    answer = await client.post(f"{M}/{name}/versions", json={"artifacts": [entry]})
    assert answer.status_code == 201, answer.text
    number: int = answer.json()["version"]
    return number


async def uris(api: Api, name: str) -> list[str]:
    """The artifact URIs of every version of ``name``."""
    listed = await api.get(f"{M}/{name}/versions", headers={"Modelreg-Consistency": "latest"})
    assert listed.status_code == 200, listed.text
    found: list[str] = []
    for item in listed.json()["items"]:
        version = (await api.get(f"{M}/{name}/versions/{item['version']}")).json()
        found += [a["uri"] for a in version["content"]["artifacts"]]
    return sorted(found)


async def remembered_churn(api: Api) -> None:
    """churn and its version 1 (uri s3://b/1), registered through ``api``, which so
    remembers churn's id."""
    assert (await api.post(M, json={"name": "churn"})).status_code == 201
    assert await registered(api, "churn", external(1)) == 1


async def replace_churn_elsewhere(other: httpx.AsyncClient) -> None:
    """Another replica renames churn to churn-old and creates a new churn."""
    renamed = await other.post(f"{M}/churn/rename", json={"new_name": "churn-old"})
    assert renamed.status_code == 200, renamed.text
    assert (await other.post(M, json={"name": "churn"})).status_code == 201


async def test_a_registration_after_a_rename_elsewhere_lands_on_the_model_bearing_the_name(
    db: Database,
) -> None:
    async with running_api(db) as api, another_replica(api) as other:
        # given a replica that registered a version of churn (and so remembers its id)
        await remembered_churn(api)
        # when another replica renames churn and creates a new churn
        await replace_churn_elsewhere(other)

        # and the first replica registers a version of churn, then tags version 1
        number = await registered(api, "churn", external(2))
        tagged = await api.put(f"{M}/churn/versions/1/tags/team", json={"value": "new"})

        # then both went to the new churn; the renamed model kept only its own
        assert number == 1
        assert tagged.status_code == 200, tagged.text
        assert await uris(api, "churn") == ["s3://b/2"]
        assert await uris(api, "churn-old") == ["s3://b/1"]
        new = (await api.get(f"{M}/churn/versions/1")).json()
        old = (await api.get(f"{M}/churn-old/versions/1")).json()
        assert (new["tags"], old["tags"]) == ({"team": "new"}, {})


async def test_a_manifest_of_the_new_models_blob_is_checked_against_that_model(
    db: Database,
) -> None:
    async with running_api(db) as api, another_replica(api) as other:
        # given a replica that remembers churn's id, and a new churn in its place
        await remembered_churn(api)
        await replace_churn_elsewhere(other)
        # and a blob stored for the new churn only
        body = b"the new churn's weights"
        digest = hashlib.sha256(body).hexdigest()
        assert (
            await other.put(f"{M}/churn/blobs/sha256:{digest}", content=body)
        ).status_code == 201

        # when the first replica registers a version naming that blob
        entry = {"path": "model.bin", "sha256": digest, "size": len(body)}
        number = await registered(api, "churn", entry)

        # then the manifest was judged against the new churn's blobs, and the version is its
        assert number == 1
        served = await api.get(f"{M}/churn/versions/1/files/model.bin")
        assert served.content == body


async def test_a_registration_after_an_archive_elsewhere_is_refused_as_for_any_archived_model(
    db: Database,
) -> None:
    async with running_api(db) as api, another_replica(api) as other:
        # given a replica that registered a version of churn
        await remembered_churn(api)
        # when another replica archives churn
        archived = await other.post(f"{M}/churn/archive", json={"reason": "retired"})
        assert archived.status_code == 200, archived.text

        # then a registration on the first replica is refused as on the archived model
        refused = await api.post(f"{M}/churn/versions", json={"artifacts": [external(2)]})
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "conflict"
        assert (
            await db.pool.fetchval(
                "SELECT count(*) FROM events WHERE event_type = 'model.version_registered'"
            )
            == 1
        )
