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
    api: Api,
    db: Database,
    seen: WaitSeen,
    path: str,
    write: Callable[[], Awaitable[bool]],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Write with the views held back, start the read and wait until it waits for the views
    (it cannot answer before they show the write), then let them go and take its answer."""
    seen.started.clear()
    async with views_held_back(db):
        assert await write()
        read = asyncio.create_task(api.get(path, headers=headers or {}))
        waiting = asyncio.create_task(seen.started.wait())
        # A read that does not wait answers while the views are held: caught, not hung on.
        await asyncio.wait({read, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        assert not read.done(), f"answered without waiting for the views: {read.result().text}"
    return await read


async def written_while_held(
    api: Api, db: Database, seen: WaitSeen, path: str, body: dict[str, Any]
) -> httpx.Response:
    """POST ``body`` with the views held back; its answer, which must come without the
    request ever starting to wait for the views (a write answers what it recorded)."""
    seen.started.clear()
    async with views_held_back(db):
        write = asyncio.create_task(api.post(path, json=body))
        waiting = asyncio.create_task(seen.started.wait())
        await asyncio.wait({write, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        assert write.done(), f"POST {path} waited for the views to show it"
        return write.result()


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
        history = await answered_after_release(
            api, db, seen, f"{M}/churn/history", lambda: describe("sixth")
        )

        # then each read answers the write it started after, never the row the views held
        # when the model was found
        assert by_number.status_code == 200, by_number.text
        assert by_number.json()["description"] == "second"
        assert by_alias.json()["description"] == "third"
        assert mlflow.json()["model_version"]["description"] == "fourth"
        assert mlflow_alias.json()["model_version"]["description"] == "fifth"
        assert history.json()["items"][0]["event_type"] == "model.version_description_updated"
        assert history.json()["items"][0]["log_position"] == await head(db)


async def test_a_read_of_a_versions_metrics_waits_for_the_metrics_just_logged(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = WaitSeen(monkeypatch)
    async with running_api(db) as api:
        # given versions 1 and 2 of churn, version 1 with auc 0.90 on holdout, read once
        assert (await api.post(M, json={"name": "churn"})).status_code == 201
        for digit in "ab":
            artifact = {"path": "m.bin", "external": True, "uri": "s3://b/m.bin", "size": 1}
            manifest = [artifact | {"sha256": digit * 64}]
            created = await api.post(f"{M}/churn/versions", json={"artifacts": manifest})
            assert created.status_code == 201, created.text
        metrics = f"{M}/churn/versions/1/metrics"
        assert (await log_auc(api, 0.90)) and (await api.get(metrics)).status_code == 200

        # when auc is logged again while the views are held back (the model's own stream
        # does not move: metrics have streams of their own), and each kind of metrics read
        # starts before they catch up
        latest = await answered_after_release(api, db, seen, metrics, lambda: log_auc(api, 0.91))
        history = await answered_after_release(
            api, db, seen, f"{metrics}?key=auc", lambda: log_auc(api, 0.92)
        )
        series = await answered_after_release(
            api, db, seen, f"{metrics}/series", lambda: log_auc(api, 0.93)
        )
        best = await answered_after_release(
            api, db, seen, f"{metrics}/auc/best?dataset=holdout", lambda: log_auc(api, 0.94)
        )
        compared = await answered_after_release(
            api, db, seen, f"{M}/churn/compare?versions=2,1", lambda: log_auc(api, 0.95)
        )
        version = await answered_after_release(
            api, db, seen, f"{M}/churn/versions/1", lambda: log_auc(api, 0.96)
        )

        # then each answers the point logged before it started
        assert latest.status_code == 200, latest.text
        assert [m["value"] for m in latest.json()] == [0.91]
        assert [p["value"] for p in history.json()["items"]] == [0.90, 0.91, 0.92]
        assert [(s["key"], s["points"]) for s in series.json()] == [("auc", 4)]
        assert best.json()["value"] == 0.94
        assert [(m["key"], m["values"]) for m in compared.json()["metrics"]] == [
            ("auc", [None, 0.95])
        ]
        assert [(m["key"], m["value"]) for m in version.json()["metrics"]] == [("auc", 0.96)]


async def log_auc(api: Api, value: float) -> bool:
    point = {"key": "auc", "value": value, "dataset": "holdout"}
    answer = await api.post(f"{M}/churn/versions/1/metrics", json={"metrics": [point]})
    return answer.status_code == 201


async def test_an_approvers_inbox_waits_for_the_request_just_opened(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = WaitSeen(monkeypatch)
    async with running_api(db) as api:
        # given a policy under which production needs one approval, and version 1 of churn
        policy = {
            "transitions": [{"from_stage": "development", "to_stage": "production", "approvals": 1}]
        }
        assert (await api.put("/api/v1/policy", json={"policy": policy})).status_code == 200
        assert (await api.post(M, json={"name": "churn"})).status_code == 201
        artifact = {"path": "m.bin", "external": True, "uri": "s3://b/m.bin", "size": 1}
        created = await api.post(
            f"{M}/churn/versions", json={"artifacts": [artifact | {"sha256": "a" * 64}]}
        )
        assert created.status_code == 201, created.text
        assert (await api.get("/api/v1/promotions")).json() == []
        opened: list[str] = []

        async def request_production() -> bool:
            answer = await api.post(
                f"{M}/churn/versions/1/stage", json={"to": "production", "comment": "ship"}
            )
            opened.append(answer.json().get("request_id", ""))
            return answer.status_code == 202

        # when a promotion is requested while the views are held back, and the open
        # requests are listed (by someone who did not write it: no min_position) before
        # they catch up
        listed = await answered_after_release(
            api, db, seen, "/api/v1/promotions", request_production
        )

        # then the listing holds the request
        assert listed.status_code == 200, listed.text
        assert [r["request_id"] for r in listed.json()] == opened


async def head(db: Database) -> int:
    position: int = await db.pool.fetchval("SELECT last_log_position FROM sealer_state")
    return position


async def test_a_listing_asked_for_the_latest_waits_for_a_write_by_anyone(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = WaitSeen(monkeypatch)
    async with running_api(db) as api:
        # given a registry with one model, listed once
        created = await api.post(M, json={"name": "churn"})
        at = {"min_position": created.headers["Modelreg-Position"]}
        assert [m["name"] for m in (await api.get(M, params=at)).json()["items"]] == ["churn"]

        async def create(name: str) -> bool:
            return (await api.post(M, json={"name": name})).status_code == 201

        # when another model is created while the views are held back, and the models are
        # listed without its position but with Modelreg-Consistency: latest (as the CLI
        # does), by name and then by a search across models
        listed = await answered_after_release(
            api, db, seen, M, lambda: create("fraud"), {"Modelreg-Consistency": "latest"}
        )
        found = await answered_after_release(
            api,
            db,
            seen,
            f"{M}/churn",
            lambda: create("spam"),
            {"Modelreg-Consistency": "LATEST"},
        )

        # then the listing holds the new model, and a read of another model waited too
        assert listed.status_code == 200, listed.text
        assert [m["name"] for m in listed.json()["items"]] == ["churn", "fraud"]
        assert found.status_code == 200, found.text


async def test_the_consistency_asked_by_one_request_is_not_carried_to_the_next(
    db: Database,
) -> None:
    async with running_api(db) as api:
        # given one request that asked for the latest, in this task (the in-process
        # transport runs each request in the caller's context, as no server must leak)
        created = await api.post(M, json={"name": "churn"})
        assert created.status_code == 201, created.text
        latest = {"Modelreg-Consistency": "latest"}
        assert (await api.get(M, headers=latest)).json()["items"][0]["name"] == "churn"

        # when a model is created while the views are held back and the next request lists
        # the models without the header
        async with views_held_back(db):
            assert (await api.post(M, json={"name": "fraud"})).status_code == 201
            listed = await api.get(M)

        # then that listing answered from the views as they stood, not waiting for them
        assert listed.status_code == 200, listed.text
        assert [m["name"] for m in listed.json()["items"]] == ["churn"]


async def test_an_mlflow_transition_answers_what_it_recorded_without_waiting_for_the_views(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = WaitSeen(monkeypatch)
    async with running_api(db) as api:
        # given a version the views show, in None
        assert (
            await api.post(f"{MLFLOW}/registered-models/create", json={"name": "churn"})
        ).is_success
        created = await api.post(
            f"{MLFLOW}/model-versions/create", json={"name": "churn", "source": "s3://b/1"}
        )
        assert created.status_code == 200, created.text
        shown = await api.get(f"{MLFLOW}/model-versions/get?name=churn&version=1")
        assert shown.json()["model_version"]["current_stage"] == "None"

        # when it moves to Staging while the views are held back, then it answers
        # without starting to wait for them, with the move
        moved = await written_while_held(
            api,
            db,
            seen,
            f"{MLFLOW}/model-versions/transition-stage",
            {"name": "churn", "version": "1", "stage": "Staging"},
        )
        assert moved.status_code == 200, moved.text
        answer = moved.json()["model_version"]
        assert answer["current_stage"] == "Staging"
        # and that answer is what the views show once they have caught up
        after = await api.get(f"{MLFLOW}/model-versions/get?name=churn&version=1")
        assert after.json()["model_version"] == answer


async def test_an_mlflow_model_create_answers_what_it_recorded_without_waiting_for_the_views(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = WaitSeen(monkeypatch)
    async with running_api(db) as api:
        # when a model is created while the views are held back, then it answers
        # without starting to wait for them
        created = await written_while_held(
            api,
            db,
            seen,
            f"{MLFLOW}/registered-models/create",
            {"name": "churn", "description": "v2", "tags": [{"key": "t", "value": "1"}]},
        )
        assert created.status_code == 200, created.text
        answer = created.json()["registered_model"]
        assert (answer["name"], answer["description"]) == ("churn", "v2")
        # and that answer is what the views show once they have caught up
        after = await api.get(f"{MLFLOW}/registered-models/get?name=churn")
        assert after.json()["registered_model"] == answer


async def churn_version_1_read_once(api: Api, path: str) -> None:
    """Model churn with version 1 (its files held elsewhere), and ``path`` read once: empty."""
    assert (await api.post(M, json={"name": "churn"})).status_code == 201
    entry = {"path": "m", "external": True, "uri": "s3://b/m", "sha256": "a" * 64, "size": 1}
    created = await api.post(f"{M}/churn/versions", json={"artifacts": [entry]})
    assert created.status_code == 201, created.text
    assert (await api.get(path)).json() == []


async def test_a_models_stage_timeline_waits_for_the_models_latest_write(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = WaitSeen(monkeypatch)
    async with running_api(db) as api:
        # given version 1 of churn, whose timeline has been read once
        await churn_version_1_read_once(api, f"{M}/churn/timeline?stage=staging")

        async def to_staging() -> bool:
            moved = await api.post(f"{M}/churn/versions/1/stage", json={"to": "staging"})
            return moved.status_code == 200

        # when the version moves to staging while the views are held back, and the
        # timeline is read (by someone holding no position of that write) before they
        # catch up
        timeline = await answered_after_release(
            api, db, seen, f"{M}/churn/timeline?stage=staging", to_staging
        )

        # then it waited for them and shows the move
        assert timeline.status_code == 200, timeline.text
        assert [i["version"] for i in timeline.json()] == [1]


async def test_a_models_deployment_runs_wait_for_the_models_latest_write(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = WaitSeen(monkeypatch)
    async with running_api(db) as api:
        # given version 1 of churn, whose deployment runs have been read once
        await churn_version_1_read_once(api, f"{M}/churn/deployments/runs")

        async def deploy() -> bool:
            started = await api.post(
                f"{M}/churn/versions/1/deployments",
                json={"environment": "prod", "target": "k8s", "deployment_id": "d-1"},
            )
            return started.status_code == 201

        # when a deployment starts while the views are held back, and the runs are read
        # (by someone holding no position of that write) before they catch up
        runs = await answered_after_release(api, db, seen, f"{M}/churn/deployments/runs", deploy)

        # then the read waited for them and shows the run
        assert runs.status_code == 200, runs.text
        assert [r["deployment_id"] for r in runs.json()] == ["d-1"]
