"""Custom roles, grants and service accounts over HTTP, against real Postgres: a grant
widens exactly its pattern, takes effect (and stops) at once, is answerable as of a past
position or time; a service account's tokens are bounded by its lifetime and die with it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from events.access import Role
from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models"
G = "/api/v1/access/grants"
CHECK = "/api/v1/access/check"
SA = "/api/v1/service-accounts"


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


async def ok(response: httpx.Response, status: int | None = None) -> httpx.Response:
    good = response.status_code == status if status else 200 <= response.status_code < 300
    assert good, f"{response.request.method} {response.request.url}: {response.text}"
    return response


def problem(response: httpx.Response) -> tuple[int, str, str]:
    body: dict[str, Any] = response.json()
    return response.status_code, body.get("field", ""), body.get("rule", "")


async def models(api: Api, *names: str) -> None:
    for name in names:
        await ok(await api.post(M, json={"name": name}), 201)


async def describe(api: Api, model: str, secret: str) -> httpx.Response:
    return await api.patch(f"{M}/{model}", json={"description": "touched"}, as_=secret)


async def test_a_grant_widens_exactly_its_own_pattern(api: Api) -> None:
    # given alice, a contributor on churn* only, and a grant of approver on fraud*
    await models(api, "churn", "fraud-eu")
    alice = await api.token("alice", Role.CONTRIBUTOR, scopes=("churn*",))
    given = await ok(
        await api.post(G, json={"principal": "alice", "role": "approver", "model": "fraud*"}),
        201,
    )
    assert given.json()["events"] == ["access.grant_given"]
    # then she may approve on fraud* but her write does not spread there
    refused = await describe(api, "fraud-eu", alice)
    assert (refused.status_code, refused.json()["details"]) == (
        403,
        {"permission": "write", "scope": "model 'fraud-eu'"},
    )
    await ok(await describe(api, "churn", alice))
    me = (await ok(await api.get("/api/v1/me", as_=alice))).json()
    assert {(r["permission"], r["pattern"]) for r in me["grants"]} == {
        ("approve", "fraud*"),
        ("read", "fraud*"),
    }
    approve = await ok(
        await api.get(
            CHECK, params={"principal": "alice", "permission": "approve", "model": "fraud-eu"}
        )
    )
    assert approve.json()["allowed"]
    assert approve.json()["decided_by"].startswith(f"grant {given.json()['request_id']}")
    elsewhere = await ok(
        await api.get(
            CHECK, params={"principal": "alice", "permission": "approve", "model": "churn"}
        )
    )
    assert (elsewhere.json()["allowed"], elsewhere.json()["decided_by"]) == (False, None)


async def test_a_withdrawn_grant_is_refused_on_the_next_request(api: Api) -> None:
    # given bob, a reader, granted contributor on fraud-eu
    await models(api, "fraud-eu")
    bob = await api.token("bob", Role.READER)
    given = await ok(
        await api.post(G, json={"principal": "bob", "role": "contributor", "model": "fraud-eu"}),
        201,
    )
    await ok(await describe(api, "fraud-eu", bob))
    # when the grant is withdrawn
    withdrawn = await ok(
        await api.delete(f"{G}/{given.json()['request_id']}", params={"reason": "rota ended"})
    )
    assert withdrawn.json()["events"] == ["access.grant_withdrawn"]
    # then bob's very next write is refused
    assert (await describe(api, "fraud-eu", bob)).status_code == 403
    again = await api.delete(f"{G}/{given.json()['request_id']}")
    assert again.status_code == 404


async def test_a_custom_role_gives_its_permissions_and_a_redefinition_applies_at_once(
    api: Api,
) -> None:
    # given a custom role "tagger" (read, write) granted to bob on fraud*
    await models(api, "fraud-eu", "churn")
    bob = await api.token("bob", Role.READER)
    defined = await ok(
        await api.put(
            "/api/v1/access/roles/tagger",
            json={"permissions": ["read", "write"], "description": "tags models"},
        )
    )
    assert defined.json()["events"] == ["access.role_defined"]
    await ok(await api.post(G, json={"principal": "bob", "role": "tagger", "model": "fraud*"}), 201)
    await ok(await describe(api, "fraud-eu", bob))
    assert (await describe(api, "churn", bob)).status_code == 403
    roles = (await ok(await api.get("/api/v1/access/roles"))).json()
    assert {r["name"]: r["builtin"] for r in roles} == {
        "reader": True,
        "contributor": True,
        "approver": True,
        "admin": True,
        "tagger": False,
    }
    # when the role loses write, bob's next write is refused; it cannot be removed in use
    await ok(await api.put("/api/v1/access/roles/tagger", json={"permissions": ["read"]}))
    assert (await describe(api, "fraud-eu", bob)).status_code == 403
    in_use = await api.delete("/api/v1/access/roles/tagger")
    assert in_use.status_code == 409


async def test_as_of_answers_the_past(api: Api) -> None:
    # given a moment and a position before a grant, and the grant given after both
    await models(api, "churn")
    # (through the API, which answers once the token's issue is sealed in the log)
    await ok(await api.post("/api/v1/tokens", json={"principal": "carol", "roles": ["reader"]}))
    before_time = datetime.now(UTC)
    before = (await ok(await api.get(G))).json()["position"]
    given = await ok(
        await api.post(G, json={"principal": "carol", "role": "contributor", "model": "churn"}),
        201,
    )
    at_grant = int(given.headers["Modelreg-Position"])
    assert at_grant > before
    withdrawn = await ok(await api.delete(f"{G}/{given.json()['request_id']}"))
    at_withdrawal = int(withdrawn.headers["Modelreg-Position"])
    query = {"principal": "carol", "permission": "write", "model": "churn"}

    async def allowed(as_of: str | None) -> bool:
        params = query if as_of is None else {**query, "as_of": as_of}
        answer: bool = (await ok(await api.get(CHECK, params=params))).json()["allowed"]
        return answer

    # then the grant is not visible before it was given, visible while it stood, gone after
    assert not await allowed(str(before))
    assert not await allowed(before_time.isoformat())
    assert await allowed(str(at_grant))
    assert not await allowed(str(at_withdrawal))
    assert not await allowed(None)
    then = (await ok(await api.get(G, params={"as_of": str(at_grant)}))).json()
    assert [(g["principal"], g["model"], g["given_by"]) for g in then["grants"]] == [
        ("carol", "churn", "admin")
    ]
    assert then["position"] == at_grant
    assert (await ok(await api.get(G, params={"as_of": str(before)}))).json()["grants"] == []
    # and carol's reader token counts as of then too (read was always allowed)
    read = await ok(
        await api.get(CHECK, params={**query, "permission": "read", "as_of": str(before)})
    )
    assert read.json()["allowed"] and read.json()["decided_by"].startswith("token ")


async def test_a_service_accounts_tokens_are_bounded_by_its_lifetime(api: Api) -> None:
    # given a service account for CI: contributor on churn*, tokens for at most 30 days
    await models(api, "churn", "fraud-eu")
    created = await ok(
        await api.post(
            SA,
            json={
                "name": "ci-bot",
                "roles": ["contributor"],
                "scopes": ["churn*"],
                "max_lifetime_seconds": 30 * 86400,
            },
        ),
        201,
    )
    assert created.json()["events"] == ["access.service_account_created"]
    now = datetime.now(UTC)
    # then a token living longer, or forever, is refused naming expires_at
    for body in (
        {"service_account": "ci-bot", "expires_at": (now + timedelta(days=31)).isoformat()},
        {"service_account": "ci-bot"},
        {"principal": "ci-bot", "roles": ["contributor"], "scopes": ["churn*"]},
    ):
        refused = await api.post("/api/v1/tokens", json=body)
        assert problem(refused) == (422, "expires_at", "max_lifetime"), refused.text
    wider = await api.post(
        "/api/v1/tokens",
        json={
            "service_account": "ci-bot",
            "roles": ["admin"],
            "expires_at": (now + timedelta(days=7)).isoformat(),
        },
    )
    assert problem(wider) == (422, "roles", "service_account")
    # and one within it carries the account's roles and scopes
    issued = await ok(
        await api.post(
            "/api/v1/tokens",
            json={"service_account": "ci-bot", "expires_at": (now + timedelta(days=7)).isoformat()},
        ),
        201,
    )
    token = issued.json()
    assert (token["principal"], token["roles"], token["scopes"]) == (
        "ci-bot",
        ["contributor"],
        ["churn*"],
    )
    secret = token["secret"]
    await ok(await describe(api, "churn", secret))
    assert (await describe(api, "fraud-eu", secret)).status_code == 403
    # when the account is disabled, its token is refused at once (401)
    disabled = await ok(await api.post(f"{SA}/ci-bot/disable", params={"reason": "retired"}))
    assert disabled.json()["events"] == ["access.service_account_disabled"]
    after = await api.get("/api/v1/me", as_=secret)
    assert (after.status_code, after.json()["detail"]) == (
        401,
        "service account 'ci-bot' is disabled",
    )
    listed = (await ok(await api.get(SA))).json()
    assert [(a["name"], a["disabled"], a["disabled_reason"]) for a in listed] == [
        ("ci-bot", True, "retired")
    ]
    late = await api.post(
        "/api/v1/tokens",
        json={"service_account": "ci-bot", "expires_at": (now + timedelta(days=1)).isoformat()},
    )
    assert late.status_code == 409


@pytest.mark.parametrize(
    ("method", "path", "body", "params", "expected"),
    [
        ("POST", G, {"role": "reader", "model": "churn"}, None, (422, "principal", "one_of")),
        (
            "POST",
            G,
            {"principal": "a", "group": "g", "role": "reader", "model": "x"},
            None,
            (422, "principal", "one_of"),
        ),
        (
            "POST",
            G,
            {"principal": "a", "role": "nope", "model": "x"},
            None,
            (422, "role", "unknown"),
        ),
        (
            "POST",
            G,
            {"principal": "a", "role": "reader", "model": "fr*ud"},
            None,
            (422, "pattern", "pattern"),
        ),
        ("POST", G, {"principal": "a", "role": "reader"}, None, (400, "model", "required")),
        (
            "PUT",
            "/api/v1/access/roles/admin",
            {"permissions": ["read"]},
            None,
            (422, "role", "builtin"),
        ),
        (
            "PUT",
            "/api/v1/access/roles/x",
            {"permissions": ["fly"]},
            None,
            (400, "permissions[0]", "enum"),
        ),
        ("GET", G, None, {"as_of": "yesterday"}, (400, "as_of", "pattern")),
        (
            "GET",
            CHECK,
            None,
            {"principal": "a", "permission": "read", "group": "a;b"},
            (400, "group", "pattern"),
        ),
        (
            "POST",
            SA,
            {"name": "ci", "roles": ["reader"], "max_lifetime_seconds": 10**9},
            None,
            (422, "max_lifetime_seconds", "range"),
        ),
        ("POST", f"{SA}/nobody/disable", None, None, (404, "", "")),
        (
            "POST",
            "/api/v1/tokens",
            {"service_account": "nobody", "expires_at": "2999-01-01T00:00:00Z"},
            None,
            (404, "", ""),
        ),
    ],
)
async def test_bad_input_is_refused_naming_the_field(
    api: Api,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    params: dict[str, str] | None,
    expected: tuple[int, str, str],
) -> None:
    before = await api.services.pool.fetchval("SELECT count(*) FROM events")
    response = await api.request(method, path, json=body, params=params)
    assert response.headers["content-type"] == "application/problem+json"
    assert problem(response) == expected, response.text
    assert await api.services.pool.fetchval("SELECT count(*) FROM events") == before


async def test_only_admins_manage_or_read_access(api: Api) -> None:
    approver = await api.token("dave", Role.APPROVER)
    scoped_admin = await api.token("erin", Role.ADMIN, scopes=("churn*",))
    for secret in (approver, scoped_admin):
        for method, path in (("GET", G), ("GET", SA), ("GET", "/api/v1/access/roles")):
            refused = await api.request(method, path, as_=secret)
            assert (refused.status_code, refused.json()["details"]["permission"]) == (403, "admin")
        refused = await api.post(
            G, json={"principal": "dave", "role": "admin", "model": "*"}, as_=secret
        )
        assert refused.status_code == 403


async def test_as_of_counts_a_token_only_while_it_was_live(api: Api) -> None:
    # given dan's token issued, then revoked
    await models(api, "churn")
    issued = await ok(
        await api.post("/api/v1/tokens", json={"principal": "dan", "roles": ["contributor"]}),
        201,
    )
    live_at = (await ok(await api.get(G))).json()["position"]
    revoked = await ok(await api.delete(f"/api/v1/tokens/{issued.json()['token_id']}"))
    query = {"principal": "dan", "permission": "write", "model": "churn"}
    # then it decides while live, and counts for nothing after its revocation
    then = (await ok(await api.get(CHECK, params={**query, "as_of": str(live_at)}))).json()
    assert then["allowed"] and then["decided_by"] == (
        f"token {issued.json()['token_id']} (roles contributor)"
    )
    after = revoked.headers["Modelreg-Position"]
    now = (await ok(await api.get(CHECK, params={**query, "as_of": after}))).json()
    assert (now["allowed"], now["reason"]) == (False, "no write permission")


async def test_the_ui_access_page_shows_the_grants_now_and_then(db: Database) -> None:
    async with running_api(db, ui=True) as ui:
        # given a grant given after position `before`, and an admin and a reader logged in
        before = (await ok(await ui.get(G))).json()["position"]
        await ok(
            await ui.post(
                G, json={"group": "risk", "role": "approver", "model": "fraud*", "reason": "rota"}
            ),
            201,
        )
        reader = await ui.token("rob", Role.READER)
        async with ui.browser() as admin, ui.browser() as rob:
            for browser, secret in ((admin, ui.admin), (rob, reader)):
                form = await browser.get("/ui/login")
                csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
                assert csrf is not None
                logged = await browser.post(
                    "/ui/login", data={"token": secret, "_csrf_token": csrf.group(1)}
                )
                assert logged.status_code == 303
            # then the admin sees it now, not as of before it, and the reader is refused
            now = await admin.get("/ui/access")
            assert now.status_code == 200 and "group risk" in now.text and "fraud*" in now.text
            then = await admin.get("/ui/access", params={"as_of": str(before)})
            assert then.status_code == 200 and "group risk" not in then.text
            assert (await rob.get("/ui/access")).status_code == 403
            assert 'href="/ui/access"' in now.text
            assert 'href="/ui/access"' not in (await rob.get("/ui/")).text


async def test_a_grant_to_a_person_records_her_subject_id_and_erasure_reaches_it(
    api: Api,
) -> None:
    # given a grant of approver on fraud* to gina, who holds a reader token
    await models(api, "fraud")
    gina = await api.token("gina", Role.READER)
    await ok(
        await api.post(G, json={"principal": "gina", "role": "approver", "model": "fraud*"}), 201
    )
    # then the recorded event names her subject id, not her name, and the grant applies
    stored = await api.services.pool.fetchval(
        "SELECT convert_from(envelope, 'UTF8') FROM events WHERE event_type = 'access.grant_given'"
    )
    assert "gina" not in stored
    assert re.search(r'"subject":"subj_[a-z2-7]{26}"', stored), stored
    me = (await ok(await api.get("/api/v1/me", as_=gina))).json()
    assert "approve" in str(me)
    listed = (await ok(await api.get(G))).json()["grants"]
    assert [g["principal"] for g in listed] == ["gina"]  # answers show the name

    # when gina is erased
    await ok(await api.post("/api/v1/subjects/gina/erase", json={"reason": "asked"}))

    # then the grant shows an erased subject and a new gina does not inherit it
    listed = (await ok(await api.get(G))).json()["grants"]
    assert [g["principal"] for g in listed] == ["erased subject"]
    check = await ok(
        await api.get(
            CHECK, params={"principal": "gina", "permission": "approve", "model": "fraud"}
        )
    )
    assert check.json()["allowed"] is False
