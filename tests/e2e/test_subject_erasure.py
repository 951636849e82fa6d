"""Erasing a person (issue 18): names live outside the hashed log, under a subject id.

After erasure the log still verifies, a replay from position 0 equals the live views, the
person reads as "erased subject" in every answer, and nothing published names them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from eventlog.freshness import wait_for_position
from eventlog.log import head_position
from eventlog.store import EventStore
from events.access import Role
from events.catalogue import CODEC
from events.model.commands import RegisterModel, RequestPromotion
from events.model.decider import MODEL
from events.policy import AliasRule
from events.streams import model_stream
from events.subjects import is_subject_id
from projections.registry_state import all_projections
from projections.time_travel import fold_as_of
from service.commands.executor import CommandExecutor
from service.commands.registry import name_keys
from service.commands.subjects import erase_subject
from service.identity.subjects import ERASED, SubjectDirectory
from service.publication.jetstream import ensure_stream
from service.publication.relay import Relay
from service.settings import load_settings
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.policies import PERMISSIVE_POLICY_BODY, permissive
from tests.support.publication import (
    Clients,
    Names,
    clients,
    names,
    nats_factory,
    relay_config,
    stream_contents,
)
from tests.support.waiting import eventually

__all__ = ["clients", "names"]  # fixtures

M = "/api/v1/models"
ALICE = "alice@example.com"
POLICY = {
    "policy": {
        **PERMISSIVE_POLICY_BODY,
        "protected_aliases": [{"alias": "champion", "approvals": 1}],
    },
    "comment": "the champion alias needs an approval",
}
CHAMPION = {"version": 1, "alias": "champion", "justification": "best so far"}
ARTIFACT = {
    "path": "model.pkl",
    "external": True,
    "uri": "s3://models/1/model.pkl",
    "sha256": "ab" * 32,
    "size": 100,
}


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        ok(await running.put("/api/v1/policy", json=POLICY))
        yield running


def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response


def refused(response: httpx.Response, status: int, why: str) -> dict[str, Any]:
    """A problem+json answer whose rule (or, for rules of no field, code) is ``why``."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert why in (problem.get("rule"), problem.get("code")), problem
    return problem


async def settled(api: Api) -> int:
    """The head of the log, once every view reached it."""
    head = await head_position(api.services.pool)
    await wait_for_position(
        api.services.pool, head, [p.name for p in all_projections()], timeout=10
    )
    return head


async def alice_works(api: Api) -> tuple[str, str]:
    """Alice registers churn v1 and asks for the champion alias; Bob approves. Returns her
    token's secret and the request id."""
    alice = await api.token(ALICE, Role.CONTRIBUTOR)
    bob = await api.token("bob", Role.APPROVER)
    ok(await api.post(M, json={"name": "churn"}, as_=alice), 201)
    ok(await api.post(f"{M}/churn/versions", json={"artifacts": [ARTIFACT]}, as_=alice), 201)
    made = ok(await api.post(f"{M}/churn/promotions", json=CHAMPION, as_=alice), 202)
    request_id: str = made.json()["request_id"]
    ok(await api.post(f"/api/v1/promotions/{request_id}/approve", json={}, as_=bob))
    return alice, request_id


async def views_as_folded_from_zero(db: Database) -> dict[str, str]:
    """Every view's checksum when folded again from position 0 (a replay)."""
    conn = await db.connect()
    try:
        async with conn.transaction():
            folded = await fold_as_of(conn, all_projections(), await head_position(conn))
            return {p.name: await p.checksum(conn, folded[p.name]) for p in all_projections()}
    finally:
        await conn.close()


async def live_views(db: Database) -> dict[str, str]:
    return {p.name: await p.checksum(db.pool, p.view_names()) for p in all_projections()}


async def test_an_erased_person_reads_as_erased_everywhere_and_the_log_still_verifies(
    api: Api, db: Database, clients: Clients, names: Names, nats_url: str
) -> None:
    # given Alice's work, recorded under her subject id
    alice, request_id = await alice_works(api)
    subject = ok(await api.get(f"/api/v1/subjects/{ALICE}")).json()
    subject_id = subject["subject_id"]
    assert is_subject_id(subject_id)
    assert (subject["name"], subject["display"], subject["erased"]) == (ALICE, ALICE, False)
    await settled(api)
    history = ok(await api.get(f"{M}/churn/history")).json()["items"]
    assert {e["actor"] for e in history} == {ALICE, "bob"}  # answers resolve ids to names

    # when the admin erases her, by name
    erased = ok(
        await api.post(f"/api/v1/subjects/{ALICE}/erase", json={"reason": "GDPR art. 17 request"})
    ).json()

    # then the answer says what was done, and that no event recorded before subjects names her
    assert erased["subject"]["subject_id"] == subject_id
    assert erased["subject"]["erased"] is True
    assert erased["subject"]["name"] is None
    assert erased["subject"]["erased_by"] == "admin"
    assert len(erased["revoked_tokens"]) == 1
    assert erased["legacy_events"] == 0
    # and her token no longer works
    assert (await api.get("/api/v1/me", as_=alice)).status_code == 401
    # and the log verifies, and holds her name nowhere, nor does the subjects table
    verified = ok(await api.get("/api/v1/audit/verify")).json()
    assert verified["ok"] is True, verified
    pool = api.services.pool
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM events WHERE position($1::bytea IN envelope) > 0", ALICE.encode()
        )
        == 0
    )
    assert await pool.fetchval("SELECT count(*) FROM subjects WHERE principal = $1", ALICE) == 0
    # and every answer reads her as erased: the subject, the model's history, the request
    position = await settled(api)
    shown = ok(await api.get(f"/api/v1/subjects/{subject_id}")).json()
    assert (shown["name"], shown["display"], shown["erased"]) == (None, ERASED, True)
    assert shown["reason"] == "GDPR art. 17 request"
    fresh = {"min_position": position}
    history = ok(await api.get(f"{M}/churn/history", params=fresh)).json()["items"]
    assert {e["actor"] for e in history} == {ERASED, "bob"}
    registered = next(e for e in history if e["event_type"] == "model.registered")
    assert registered["summary"].startswith(f"{ERASED} registered model churn")
    by_name = ok(await api.get(f"/api/v1/audit/actors/{subject_id}", params=fresh)).json()
    assert by_name["items"] and {e["actor"] for e in by_name["items"]} == {ERASED}
    request = ok(await api.get(f"/api/v1/promotions/{request_id}", params=fresh)).text
    assert ERASED in request and ALICE not in request
    # and the erasure itself is in the log, holding the id only
    erasures = [e for e in history if e["event_type"] == "subject.erased"]
    assert erasures == []  # not a model's event: it is in the global feed
    feed = ok(await api.get("/api/v1/audit/actors/admin", params=fresh)).json()["items"]
    assert [e["summary"] for e in feed if e["event_type"] == "subject.erased"] == [
        f"admin erased the personal data of {ERASED}"
    ]
    # and a replay from position 0 folds exactly the live views
    assert await views_as_folded_from_zero(db) == await live_views(db)
    # and what NATS consumers receive names her by id only
    relay = Relay(db.connect, nats_factory(nats_url), relay_config(db, names))
    client = await clients.connect(nats_url)
    await ensure_stream(client, relay.config.stream)
    conn = await db.connect()
    try:
        assert await relay.publish_all(conn, client) == position
    finally:
        await conn.close()
    published = await stream_contents(client, names.stream)
    assert published and not [m for m in published if ALICE.encode() in m.payload]
    assert any(subject_id.encode() in m.payload for m in published)


async def test_with_names_kept_in_memory_an_erasure_in_any_process_reads_as_erased(
    api: Api, db: Database
) -> None:
    # given the API names people from memory (its subject LISTEN is up, as `serve` runs it)
    subjects = api.services.executor.subjects
    assert subjects is not None
    listener = subjects.listen(db.connect, db.schema)
    task = asyncio.create_task(listener.run())
    try:
        await eventually(lambda: listener.listening, what="the subjects LISTEN is up")
        # and it has shown Alice's and Bob's work by name
        await alice_works(api)
        fresh = {"min_position": await settled(api)}
        history = ok(await api.get(f"{M}/churn/history", params=fresh)).json()["items"]
        assert {e["actor"] for e in history} == {ALICE, "bob"}
        alice_id = ok(await api.get(f"/api/v1/subjects/{ALICE}")).json()["subject_id"]
        assert subjects.remembers(alice_id)
        # when another process (the CLI, another replica) erases Alice
        heard = subjects.notices
        elsewhere = CommandExecutor(EventStore(db.pool, CODEC), subjects=SubjectDirectory(db.pool))
        await erase_subject(elsewhere, ALICE, actor="admin", reason="asked", now=datetime.now(UTC))
        await eventually(lambda: subjects.notices > heard, what="the API heard the erasure")
        # then the API's next answer reads her as erased
        history = ok(await api.get(f"{M}/churn/history", params=fresh)).json()["items"]
        assert {e["actor"] for e in history} == {ERASED, "bob"}
        # and Bob, erased through this API, reads as erased in its very next answer
        ok(await api.post("/api/v1/subjects/bob/erase", json={"reason": "asked"}))
        history = ok(await api.get(f"{M}/churn/history", params=fresh)).json()["items"]
        assert {e["actor"] for e in history} == {ERASED}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await listener.close()


async def test_separation_of_duties_still_refuses_self_approval_by_id_and_across_legacy_names(
    api: Api,
) -> None:
    # given a requester recorded by subject id
    carl = await api.token("carl", Role.CONTRIBUTOR, Role.APPROVER)
    ok(await api.post(M, json={"name": "churn"}, as_=carl), 201)
    ok(await api.post(f"{M}/churn/versions", json={"artifacts": [ARTIFACT]}, as_=carl), 201)
    mine = ok(await api.post(f"{M}/churn/promotions", json=CHAMPION, as_=carl), 202)
    # when he approves his own request, then it is refused
    refused(
        await api.post(
            f"/api/v1/promotions/{mine.json()['request_id']}/approve", json={}, as_=carl
        ),
        409,
        "separation_of_duties",
    )
    # given a request recorded before subjects existed, naming dora in clear
    dora = await api.token("dora", Role.CONTRIBUTOR, Role.APPROVER)
    ok(await api.post(M, json={"name": "fraud"}, as_=carl), 201)
    ok(await api.post(f"{M}/fraud/versions", json={"artifacts": [ARTIFACT]}, as_=carl), 201)
    model_id = ok(await api.get(f"{M}/fraud")).json()["model_id"]
    legacy = CommandExecutor(EventStore(api.services.pool, CODEC))  # records names as given
    await legacy.execute(
        model_stream(model_id),
        MODEL,
        RequestPromotion(
            actor="dora",
            now=datetime.now(UTC),
            registry_policy=permissive(
                protected_aliases=(AliasRule(alias="champion", approvals=1),)
            ),
            request_id="legacy-request",
            version=1,
            alias="champion",
            justification="from before subjects",
        ),
        keys=name_keys,
    )
    api.services.executor.forget(model_stream(model_id))
    # when dora, now recorded by subject id, approves it, then it is still her own request
    problem = refused(
        await api.post("/api/v1/promotions/legacy-request/approve", json={}, as_=dora),
        409,
        "separation_of_duties",
    )
    assert "requested the promotion" in problem["detail"]


async def test_two_first_writes_of_one_principal_get_one_subject(db: Database) -> None:
    # given several processes that never saw zed (a directory each, nothing cached)
    directories = [SubjectDirectory(db.pool) for _ in range(8)]
    # when each records zed's first write at once
    ids = await asyncio.gather(*(d.subject_for("zed") for d in directories))
    # then all got the same id, and there is one row
    assert len(set(ids)) == 1 and is_subject_id(ids[0])
    assert await db.pool.fetchval("SELECT count(*) FROM subjects WHERE principal = 'zed'") == 1


async def test_erasure_is_refused_clearly_and_changes_nothing(api: Api) -> None:
    reader = await api.token("rory", Role.READER)
    await api.token("erin", Role.READER)
    recorded = "SELECT count(*) FROM events"  # sealed or not yet
    before = await api.services.pool.fetchval(recorded)
    path = "/api/v1/subjects/erin/erase"
    # a non-admin may read a subject but not erase it
    ok(await api.get("/api/v1/subjects/erin", as_=reader))
    refused(await api.post(path, json={"reason": "x"}, as_=reader), 403, "permission_denied")
    # unknown subjects, bad names and missing reasons are named
    refused(await api.post("/api/v1/subjects/nobody/erase", json={"reason": "x"}), 404, "not_found")
    refused(await api.get("/api/v1/subjects/subj_" + "a" * 26), 404, "not_found")
    refused(await api.get("/api/v1/subjects/-bad-"), 400, "pattern")
    problem = refused(await api.post(path, json={"reason": "  "}), 400, "required")
    assert problem["field"] == "reason"
    problem = refused(await api.post(path, json={"reason": "x" * 1001}), 400, "bad_request")
    assert problem["errors"][0]["field"] == "reason"
    # the last admin cannot be erased (nobody could manage the registry after)
    refused(await api.post("/api/v1/subjects/admin/erase", json={"reason": "x"}), 409, "last_admin")
    assert await api.services.pool.fetchval(recorded) == before
    assert ok(await api.get("/api/v1/subjects/erin")).json()["erased"] is False
    # and a subject is erased once: then its name is unknown, and its id refused
    subject_id = ok(await api.get("/api/v1/subjects/erin")).json()["subject_id"]
    ok(await api.post(path, json={"reason": "asked"}))
    refused(await api.post(path, json={"reason": "again"}), 404, "not_found")
    again = f"/api/v1/subjects/{subject_id}/erase"
    refused(await api.post(again, json={"reason": "again"}), 409, "conflict")


async def test_erasure_counts_the_events_that_name_the_person_from_before_subjects(
    api: Api,
) -> None:
    # given a model registered by fay before subjects existed, and her work since
    legacy = CommandExecutor(EventStore(api.services.pool, CODEC))  # records names as given
    await legacy.execute(
        model_stream("legacy-model"),
        MODEL,
        RegisterModel(
            actor="fay", now=datetime.now(UTC), model_id="legacy-model", name="old", owner="fay"
        ),
    )
    await api.token("fay", Role.READER)
    # when she is erased
    erased = ok(await api.post("/api/v1/subjects/fay/erase", json={"reason": "asked"})).json()
    # then the answer says how many recorded events still name her in clear (actor, owner:
    # one event)
    assert erased["legacy_events"] == 1


async def test_erasable_comments_are_kept_beside_the_log_and_erased_with_their_author(
    db: Database,
) -> None:
    # given a registry that keeps comments beside the log
    settings = load_settings(
        {}, db_schema=db.schema, read_wait_timeout=10.0, erasable_comments=True
    )
    async with running_api(db, settings) as api:
        ok(await api.put("/api/v1/policy", json=POLICY))
        alice, _ = await alice_works(api)
        ivan = await api.token("ivan", Role.APPROVER)
        for _ in range(2):  # v2 and v3, to ask for the champion alias again
            ok(
                await api.post(f"{M}/churn/versions", json={"artifacts": [ARTIFACT]}, as_=alice),
                201,
            )
        # when Ivan rejects a request with a comment that names someone
        made = ok(
            await api.post(f"{M}/churn/promotions", json={**CHAMPION, "version": 2}, as_=alice),
            202,
        )
        rejected = made.json()["request_id"]
        said = "Alice Example's holdout is stale"
        ok(
            await api.post(
                f"/api/v1/promotions/{rejected}/reject", json={"comment": said}, as_=ivan
            )
        )
        # then answers show the comment, but no recorded event holds its text
        position = await settled(api)
        history = ok(await api.get(f"{M}/churn/history", params={"min_position": position}))
        assert said in history.text
        pool = api.services.pool
        recorded = "SELECT count(*) FROM events WHERE position($1::bytea IN envelope) > 0"
        assert await pool.fetchval(recorded, said.encode()) == 0
        # and a blank rejection is still refused, naming the field
        again = ok(
            await api.post(f"{M}/churn/promotions", json={**CHAMPION, "version": 3}, as_=alice),
            202,
        )
        blank = await api.post(
            f"/api/v1/promotions/{again.json()['request_id']}/reject",
            json={"comment": "  "},
            as_=ivan,
        )
        assert blank.status_code in (400, 422) and "comment" in blank.text

        # when Ivan is erased
        ok(await api.post("/api/v1/subjects/ivan/erase", json={"reason": "left"}))
        # then his comment reads as erased, the text is gone, and the log still verifies
        history = ok(await api.get(f"{M}/churn/history", params={"min_position": position}))
        assert said not in history.text and "erased comment" in history.text
        assert (
            await pool.fetchval("SELECT count(*) FROM erasable_comments WHERE body = $1", said) == 0
        )
        assert ok(await api.get("/api/v1/audit/verify")).json()["ok"] is True
