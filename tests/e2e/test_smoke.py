"""A first walk through the API against a real store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.api import Api, running_api
from tests.support.database import Database

ARTIFACT = {
    "path": "model.pkl",
    "external": True,
    "uri": "s3://bucket/churn/1/model.pkl",
    "sha256": "a" * 64,
    "size": 1234,
}


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


async def test_register_a_model_and_a_version_then_read_them(api: Api) -> None:
    created = await api.post(
        "/api/v1/models",
        json={"name": "churn", "description": "who leaves", "tags": {"team": "risk"}},
    )
    assert created.status_code == 201, created.text
    position = int(created.headers["Modelreg-Position"])

    version = await api.post(
        "/api/v1/models/churn/versions", json={"artifacts": [ARTIFACT], "params": {"lr": 0.1}}
    )
    assert version.status_code == 201, version.text
    assert version.json()["version"] == 1

    model = await api.get(
        f"/api/v1/models/churn?min_position={version.headers['Modelreg-Position']}"
    )
    assert model.status_code == 200, model.text
    body = model.json()
    assert (body["name"], body["latest_version"], body["tags"]) == ("churn", 1, {"team": "risk"})
    assert model.headers["ETag"] == '"2"'
    assert position > 0
