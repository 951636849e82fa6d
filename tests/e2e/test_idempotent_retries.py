"""A keyed retry after the first attempt's process died: the events it recorded are found
first, so the retry gets the first answer (never "already exists" or "invalid transition"),
with the write's own stream version and ETag; and a claim on the key dies with the process
that held it, so the retry runs at once, while a live owner still makes copies wait."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from events.streams import MODEL_TYPE
from service.api import idempotency
from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models"
JSON = {"Content-Type": "application/json"}
ARTIFACT = {
    "path": "model.pkl",
    "external": True,
    "uri": "s3://models/churn/1/model.pkl",
    "sha256": "1" * 64,
    "size": 1001,
}


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, response.text
    return response


async def forget_answers(db: Database) -> None:
    """What a process killed after its append and before keeping the answer leaves: the
    events, and no kept response for the key."""
    await db.pool.execute("DELETE FROM idempotency_keys")


async def test_a_retried_model_creation_answers_its_first_receipt(api: Api, db: Database) -> None:
    # given a model created with a key whose answer was lost, and a later change to it
    key = {"Idempotency-Key": "create-churn"}
    first = ok(await api.post(M, json={"name": "churn"}, headers=key), 201)
    await forget_answers(db)
    ok(await api.patch(f"{M}/churn", json={"description": "later"}))

    # when the creation is retried with the same key
    retry = await api.post(M, json={"name": "churn"}, headers=key)

    # then it answers what the first attempt did, at the version that attempt wrote
    ok(retry, 201)
    assert retry.json()["replayed"] is True
    assert retry.json()["model_id"] == first.json()["model_id"]
    assert retry.json()["events"] == first.json()["events"]
    assert retry.json()["stream_version"] == first.json()["stream_version"] == 1
    assert retry.headers["etag"] == first.headers["etag"]
    assert retry.json()["position"] == first.json()["position"]


async def test_a_retried_stage_change_answers_its_first_receipt(api: Api, db: Database) -> None:
    # given a version moved to staging with a key whose answer was lost, then tagged
    ok(await api.post(M, json={"name": "churn"}), 201)
    ok(await api.post(f"{M}/churn/versions", json={"artifacts": [ARTIFACT]}), 201)
    key = {"Idempotency-Key": "stage-churn-1"}
    first = ok(await api.post(f"{M}/churn/versions/1/stage", json={"to": "staging"}, headers=key))
    await forget_answers(db)
    ok(await api.put(f"{M}/churn/tags/team", json={"value": "risk"}))

    # when the stage change is retried with the same key
    retry = await api.post(f"{M}/churn/versions/1/stage", json={"to": "staging"}, headers=key)

    # then it answers the first receipt, not "invalid transition staging -> staging"
    ok(retry)
    assert retry.json()["replayed"] is True
    assert retry.json()["events"] == first.json()["events"]
    assert retry.json()["stream_version"] == first.json()["stream_version"]
    assert retry.headers["etag"] == first.headers["etag"]
    history = ok(await api.get(f"{M}/churn"))
    assert history.headers["etag"] != first.headers["etag"]  # the stream moved on since


async def claim_as_another_process(db: Database, key: str, body: bytes) -> asyncpg.Connection:
    """A first request with ``key``, claimed and still running in another process: its
    claim row, and its session holding the key's lock."""
    conn = await db.connect("another-replica")
    lock = idempotency.claim_lock(db.schema, "admin", key)
    await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", lock)
    digest = hashlib.sha256(f"POST {M}\n".encode() + body).digest()
    await conn.execute(
        "INSERT INTO idempotency_keys (principal, key, request_hash, status, headers, body)"
        " VALUES ('admin', $1, $2, $3, '[]', '')",
        key,
        digest,
        idempotency.RUNNING,
    )
    return conn


async def test_a_claim_whose_owner_was_killed_is_taken_over_at_once(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a keyed request claimed by a process that was then killed (its session ends)
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.5)  # a wait would end in a 409 soon
    body = json.dumps({"name": "churn"}).encode()
    owner = await claim_as_another_process(db, "killed-midway", body)
    owner.terminate()

    # when the client retries with the same key
    retry = await api.post(M, content=body, headers={"Idempotency-Key": "killed-midway", **JSON})

    # then the retry runs at once instead of waiting for the dead owner
    ok(retry, 201)
    assert retry.json()["model"] == "churn"


async def test_a_claim_whose_owner_is_alive_makes_a_copy_wait(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a keyed request still running in another live process
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.5)
    body = json.dumps({"name": "churn"}).encode()
    await claim_as_another_process(db, "running-elsewhere", body)

    # when a copy arrives
    copy = await api.post(M, content=body, headers={"Idempotency-Key": "running-elsewhere", **JSON})

    # then it waits for the first and is told it still runs; nothing is recorded
    assert copy.status_code == 409, copy.text
    assert copy.json()["details"]["key"] == "running-elsewhere"
    assert await api.services.store.stream_ids(MODEL_TYPE) == []
