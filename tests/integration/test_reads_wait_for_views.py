"""A read by name asks its first view query in the same round trip that finds the model
(``read_model_views(first=...)``). That row is kept only when the same statement saw the
views already showing the model's latest sealed event: a read while the views lag behind a
write waits for them and answers the write, on /api/v1 and on MLflow's API alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from eventlog.freshness import wait_for_position
from service.api import common
from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models"
MLFLOW = "/api/2.0/mlflow"


@asynccontextmanager
async def views_held_back(db: Database) -> AsyncIterator[None]:
    """While inside, the projection worker cannot record any progress: its checkpoints are
    locked, so whatever it applies stays uncommitted and unseen."""
    conn = await db.connect()
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM projection_checkpoints FOR UPDATE")
            yield
    finally:
        await conn.close()


class WaitSeen:
    """Wraps the real ``wait_for_position`` the API's reads call, to tell the test when a
    read has started waiting for the views (everything is still done by the real one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = asyncio.Event()
        real = wait_for_position

        async def waiting(*args: Any, **kwargs: Any) -> int:
            self.started.set()
            return await real(*args, **kwargs)

        monkeypatch.setattr(common, "wait_for_position", waiting)


async def answered_after_release(
    api: Api, db: Database, seen: WaitSeen, path: str, write: Callable[[], Awaitable[bool]]
) -> httpx.Response:
    """Write with the views held back, start the read and wait until it waits for the views
    (it cannot answer before they show the write), then let them go and take its answer."""
    seen.started.clear()
    async with views_held_back(db):
        assert await write()
        read = asyncio.create_task(api.get(path))
        await seen.started.wait()
        assert not read.done(), read.result().text
    return await read


async def test_a_read_by_name_waits_for_the_views_to_show_the_latest_write(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = WaitSeen(monkeypatch)
    async with running_api(db) as api:
        # given version 1 of churn, described "first", aliased champion, read once
        assert (await api.post(M, json={"name": "churn"})).status_code == 201
        manifest = [
            {
                "path": "m.bin",
                "external": True,
                "uri": "s3://b/m.bin",
                "sha256": "a" * 64,
                "size": 1,
            }
        ]
        created = await api.post(f"{M}/churn/versions", json={"artifacts": manifest})
        assert created.status_code == 201, created.text
        described = await api.patch(f"{M}/churn/versions/1", json={"description": "first"})
        assert described.status_code == 200, described.text
        moved = await api.put(f"{M}/churn/aliases/champion", json={"version": 1})
        assert moved.status_code == 200, moved.text
        assert (await api.get(f"{M}/churn/versions/1")).json()["description"] == "first"

        async def describe(text: str) -> bool:
            answer = await api.patch(f"{M}/churn/versions/1", json={"description": text})
            return answer.status_code == 200

        # when the description changes while the views are held back, and each read starts
        # before they catch up
        by_number = await answered_after_release(
            api, db, seen, f"{M}/churn/versions/1", lambda: describe("second")
        )
        by_alias = await answered_after_release(
            api, db, seen, f"{M}/churn/versions/by-alias/champion", lambda: describe("third")
        )
        mlflow = await answered_after_release(
            api,
            db,
            seen,
            f"{MLFLOW}/model-versions/get?name=churn&version=1",
            lambda: describe("fourth"),
        )
        mlflow_alias = await answered_after_release(
            api,
            db,
            seen,
            f"{MLFLOW}/registered-models/alias?name=churn&alias=champion",
            lambda: describe("fifth"),
        )

        # then each read answers the write it started after, never the row the views held
        # when the model was found
        assert by_number.status_code == 200, by_number.text
        assert by_number.json()["description"] == "second"
        assert by_alias.json()["description"] == "third"
        assert mlflow.json()["model_version"]["description"] == "fourth"
        assert mlflow_alias.json()["model_version"]["description"] == "fifth"
