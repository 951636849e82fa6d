"""Refused requests are recorded for auditors outside the event log: who, what, why and how
often, through a real registry on a real Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from eventlog.db import create_pool
from events.access import Role
from service.denials.flusher import DenialFlusher
from service.denials.recorder import DenialRecorder
from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models"
D = "/api/v1/audit/denials"
POLICY = {
    "policy": {
        "transitions": [
            {"from_stage": "development", "to_stage": "staging"},
            {"from_stage": "staging", "to_stage": "production", "approvals": 1},
        ]
    },
    "comment": "one approval for production",
}


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response


async def denials(api: Api, **params: str | int) -> list[dict[str, object]]:
    items: list[dict[str, object]] = ok(await api.get(D, params=params)).json()["items"]
    return items


async def test_each_kind_of_refusal_is_recorded_with_who_what_and_why(api: Api) -> None:
    # given a model, a reader, a contributor scoped to other models, and a contributor
    ok(await api.post(M, json={"name": "churn"}), 201)
    ok(await api.put(f"{M}/churn/policy", json=POLICY))
    reader = await api.token("rita", Role.READER)
    scoped = await api.token("sam", Role.CONTRIBUTOR, scopes=("fraud*",))
    dan = await api.token("dan", Role.CONTRIBUTOR, Role.APPROVER)
    artifact = {"path": "m", "external": True, "uri": "s3://b/m", "sha256": "ab" * 32, "size": 1}
    version = {"artifacts": [artifact]}
    ok(await api.post(f"{M}/churn/versions", json=version, as_=dan), 201)
    ok(await api.post(f"{M}/churn/versions/1/stage", json={"to": "staging"}, as_=dan))
    request_id = ok(
        await api.post(
            f"{M}/churn/versions/1/stage", json={"to": "production", "comment": "ship"}, as_=dan
        ),
        202,
    ).json()["request_id"]

    # when each is refused: not permitted, out of scope, not authenticated (three times the
    # same way), and by the governance policy (the requester approving their own request)
    ok(await api.post(M, json={"name": "mine"}, as_=reader), 403)
    ok(await api.post(f"{M}/churn/versions", json=version, as_=scoped), 403)
    for _ in range(3):
        ok(await api.client.get(f"{M}/churn", headers={"Authorization": "Bearer nope"}), 401)
    ok(await api.post(f"/api/v1/promotions/{request_id}/approve", json={}, as_=dan), 409)

    # then an admin reads each refusal with who, what and why
    rows = await denials(api)
    by_who = {(r["principal"], r["code"]): r for r in rows}
    rita = by_who[("rita", "permission_denied")]
    assert (rita["method"], rita["route"], rita["permission"], rita["status"]) == (
        "POST",
        "/api/v1/models",
        "write",
        403,
    )
    sam = by_who[("sam", "permission_denied")]
    assert (sam["route"], sam["model"], sam["count"]) == (
        "/api/v1/models/{name}/versions",
        "churn",
        1,
    )
    anonymous = by_who[(None, "unauthenticated")]
    assert (anonymous["count"], anonymous["status"], anonymous["token_id"]) == (3, 401, None)
    assert anonymous["route"] == "/api/v1/models/{name}"
    governance = by_who[("dan", "policy_violation")]
    assert str(governance["reason"]).startswith("separation_of_duties: dan requested")
    # and filters narrow the answer
    assert {r["principal"] for r in await denials(api, principal="sam")} == {"sam"}
    assert {r["code"] for r in await denials(api, code="unauthenticated")} == {"unauthenticated"}
    assert {r["model"] for r in await denials(api, model="churn")} == {"churn"}
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await denials(api, since=later) == []


async def test_only_an_admin_reads_refusals_and_a_reader_asking_is_itself_recorded(
    api: Api,
) -> None:
    reader = await api.token("rita", Role.READER)
    # when a reader asks for the refusals
    refused = ok(await api.get(D, as_=reader), 403).json()
    # then it is told it needs admin, and that refusal is what the admin then reads
    assert refused["details"]["permission"] == "admin"
    [row] = await denials(api)
    assert (row["principal"], row["route"], row["permission"]) == (
        "rita",
        "/api/v1/audit/denials",
        "admin",
    )


async def test_pages_follow_next_before_and_a_forged_cursor_is_a_400(api: Api) -> None:
    # given refusals on five different routes
    for path in (
        "/api/v1/models",
        "/api/v1/tokens",
        "/api/v1/policy",
        "/api/v1/events",
        "/api/v1/webhooks",
    ):
        ok(await api.client.get(path, headers={"Authorization": "Bearer nope"}), 401)
    # when they are read two at a time
    first = ok(await api.get(D, params={"limit": 2})).json()
    second = ok(await api.get(D, params={"limit": 2, "before": first["next_before"]})).json()
    third = ok(await api.get(D, params={"limit": 2, "before": second["next_before"]})).json()
    # then every route comes once, newest first, and the last page says there is no more
    routes = [r["route"] for page in (first, second, third) for r in page["items"]]
    assert sorted(routes) == sorted(
        ["/api/v1/models", "/api/v1/tokens", "/api/v1/policy", "/api/v1/events", "/api/v1/webhooks"]
    )
    assert third["next_before"] is None
    # and a cursor the API did not give is refused, naming the parameter
    for forged in ("x", "1-", "1-2-3", "9" * 19 + "-1"):
        problem = ok(await api.get(D, params={"before": forged}), 400).json()
        assert problem["field"] == "before", problem


async def test_a_write_that_fails_keeps_the_refusals_for_the_next_one(db: Database) -> None:
    # given a flusher whose pool is closed (Postgres unreachable) and one refusal recorded
    recorder = DenialRecorder()
    now = datetime.now(UTC)
    recorder.record(
        now, principal="eve", token_id="t", status=403, code="permission_denied", method="GET",
        route="/r", model="", permission="read", reason="no", client="127.0.0.1",
    )  # fmt: skip
    closed = await create_pool(db.url, schema=db.schema, app_role=db.app_role, min_size=1)
    await closed.close()
    broken = DenialFlusher(recorder, closed, retention=timedelta(days=1), now=lambda: now)
    # when the write fails
    with pytest.raises(asyncpg.InterfaceError):
        await broken.flush()
    # then the refusal is still held, and a flusher with a working pool writes it once
    assert len(recorder) == 1
    working = DenialFlusher(recorder, db.pool, retention=timedelta(days=1), now=lambda: now)
    await working.flush()
    await working.flush()
    assert await db.pool.fetchval("SELECT sum(count) FROM denials") == 1


async def test_rows_past_the_retention_are_deleted_and_newer_ones_kept(db: Database) -> None:
    # given a refusal written two days ago and one written now
    recorder = DenialRecorder()
    now = datetime.now(UTC)
    for at, who in ((now - timedelta(days=2), "old"), (now, "new")):
        recorder.record(
            at, principal=who, token_id="t", status=403, code="permission_denied",
            method="GET", route="/r", model="", permission="read", reason="no", client="",
        )  # fmt: skip
    flusher = DenialFlusher(recorder, db.pool, retention=timedelta(days=1), now=lambda: now)
    await flusher.flush()
    # when the flusher prunes with a one-day retention
    await flusher.prune()
    # then only the recent one is left
    left = await db.pool.fetch("SELECT principal FROM denials")
    assert [r["principal"] for r in left] == ["new"]
