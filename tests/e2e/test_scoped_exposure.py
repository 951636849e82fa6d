"""What callers can observe, over real HTTP against ``modelreg serve`` (issue 13): the audit
feed by actor, token secrets on the log and on NATS, search cursors, the last admin token.

One registry for the module; each test makes the models and tokens it needs under names
of its own, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.support.nats_servers import connect
from tests.support.publication import stream_contents
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.waiting import eventually

API = "/api/v1"


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


@pytest.fixture
def http(server: RegistryServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + API, timeout=30.0) as client:
        yield client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, f"{response.status_code}: {response.text}"
    return response.json()


def new_token(
    http: httpx.Client, admin: str, principal: str, *roles: str, scopes: tuple[str, ...] = ()
) -> dict[str, Any]:
    issued: dict[str, Any] = ok(
        http.post(
            "/tokens",
            headers=bearer(admin),
            json={"principal": principal, "roles": list(roles), "scopes": list(scopes)},
        )
    )
    return issued


def register(http: httpx.Client, who: str, name: str, params: dict[str, Any] | None = None) -> int:
    """A model with one version; the log position of the last write."""
    ok(http.post("/models", headers=bearer(who), json={"name": name}))
    written = ok(
        http.post(
            f"/models/{name}/versions",
            headers=bearer(who),
            json={
                "artifacts": [
                    {
                        "path": "m.pkl",
                        "external": True,
                        "uri": f"s3://m/{name}",
                        "sha256": "ab" * 32,
                        "size": 1,
                    }
                ],
                "params": params or {},
            },
        )
    )
    position: int = written["position"]
    return position


def test_a_scoped_reader_sees_only_its_models_in_an_actors_audit_feed(
    server: RegistryServer, http: httpx.Client
) -> None:
    # given an operator who worked on a model in and a model out of the reader's scope,
    # and who issued a token (whose event names a principal and its roles)
    tag = secrets.token_hex(3)
    operator = new_token(http, server.admin_token, f"op-{tag}", "admin")
    register(http, operator["secret"], f"fraud-{tag}", {"depth": 6})
    position = register(http, operator["secret"], f"churn-{tag}", {"secret_lr": 0.123})
    new_token(http, operator["secret"], f"someone-{tag}", "reader")
    reader = new_token(http, server.admin_token, f"r-{tag}", "reader", scopes=(f"fraud-{tag}*",))
    unscoped = new_token(http, server.admin_token, f"u-{tag}", "reader")

    # when the scoped reader, an unscoped reader and an admin read the operator's feed
    def feed(secret: str) -> list[dict[str, Any]]:
        page = ok(
            http.get(
                f"/audit/actors/op-{tag}",
                params={"min_position": position, "limit": 1000},
                headers=bearer(secret),
            )
        )
        items: list[dict[str, Any]] = page["items"]
        return items

    scoped_feed, reader_feed, admin_feed = (
        feed(reader["secret"]),
        feed(unscoped["secret"]),
        feed(server.admin_token),
    )

    # then the scoped reader sees the events of its model only: no other model's params,
    # no token event
    fraud = ok(http.get(f"/models/fraud-{tag}", headers=bearer(server.admin_token)))
    assert {e["model_id"] for e in scoped_feed} == {fraud["model_id"]}
    assert {e["event_type"] for e in scoped_feed} == {
        "model.registered",
        "model.version_registered",
    }
    assert "secret_lr" not in str(scoped_feed)
    # an unscoped reader sees both models but no token event; an admin sees it all
    assert "secret_lr" in str(reader_feed)
    assert not [e for e in reader_feed if e["event_type"].startswith("token.")]
    assert [e for e in admin_feed if e["event_type"] == "token.issued"]
    assert len(admin_feed) == len(reader_feed) + 1


async def published(nats_url: str, stream: str) -> list[bytes]:
    nc = await connect(nats_url)
    try:
        return [m.payload for m in await stream_contents(nc, stream)]
    finally:
        await nc.close()


async def test_no_event_on_the_log_or_on_nats_carries_a_tokens_secret_or_its_hash(
    server: RegistryServer, nats_url: str
) -> None:
    admin = bearer(server.admin_token)
    async with httpx.AsyncClient(base_url=server.url + API, timeout=30.0) as http:
        # given a token issued over HTTP (and the bootstrap token, whose secret a person chose)
        issued = ok(
            await http.post(
                "/tokens", headers=admin, json={"principal": "nats-check", "roles": ["reader"]}
            )
        )
        token_id = issued["token_id"].encode()
        needles = [
            s.encode()
            for secret in (issued["secret"], server.admin_token)
            for s in (secret, hashlib.sha256(secret.encode()).hexdigest())
        ]
        # when the whole log is read back, and everything published to NATS
        log = await http.get("/events", params={"limit": 5000}, headers=admin)
        ok(log)
        stream = f"T_{server.schema.upper()}"
        payloads: list[bytes] = []

        async def token_published() -> bool:  # the relay publishes behind the API
            payloads[:] = await published(nats_url, stream)
            return any(token_id in p for p in payloads)

        await eventually(token_published, timeout=30.0, what="the token's event on NATS")
        # then the token events are there, and neither secret nor its SHA-256 is in any of them
        assert token_id in log.content
        assert any(token_id in p for p in payloads)
        for needle in needles:
            assert needle not in log.content
            assert not [p for p in payloads if needle in p]
        # and the secret still authenticates
        me = ok(await http.get("/me", headers=bearer(issued["secret"])))
        assert me["name"] == "nats-check"


def test_the_last_active_admin_token_cannot_revoke_itself(
    server: RegistryServer, http: httpx.Client
) -> None:
    # given the bootstrap token is the only active admin left (other admins revoked)
    admin = bearer(server.admin_token)
    for token in ok(http.get("/tokens", headers=admin)):
        if "admin" in token["roles"] and not token["revoked"] and token["token_id"] != "bootstrap":
            ok(http.delete(f"/tokens/{token['token_id']}", headers=admin))
    # when it revokes itself
    refused = http.delete("/tokens/bootstrap", params={"reason": "oops"}, headers=admin)
    # then it is refused with a 409 problem that says why and what to do, and still works
    assert refused.status_code == 409
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["type"] == "urn:modelreg:last_admin"
    assert "last active admin" in problem["detail"]
    assert "modelreg tokens create --admin" in problem["detail"]
    assert ok(http.get("/me", headers=admin))["token_id"] == "bootstrap"
    # and with a second admin, revoking the first is allowed again
    second = new_token(http, server.admin_token, "second-admin", "admin")
    ok(http.delete(f"/tokens/{second['token_id']}", headers=admin))


def models_page(http: httpx.Client, secret: str, **params: Any) -> dict[str, Any]:
    page: dict[str, Any] = ok(http.get("/models", params=params, headers=bearer(secret)))
    return page


def unsealed(cursor: str) -> bytes:
    """What a client can read of a cursor by decoding it (base64url)."""
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


def test_search_pages_and_cursors_of_a_scoped_token_hold_only_its_models(
    server: RegistryServer, http: httpx.Client
) -> None:
    # given models out of a reader's scope that sort before and between the ones in it,
    # one of them with a metric the reader must not learn anything about
    tag = secrets.token_hex(3)
    admin = server.admin_token
    for name in (f"a{tag}-hidden", f"f{tag}-one", f"g{tag}-hidden", f"f{tag}-two"):
        position = register(http, admin, name)
    hidden = ok(
        http.post(
            f"/models/a{tag}-hidden/versions/1/metrics",
            headers=bearer(admin),
            json={"metrics": [{"key": "auc", "value": 0.97}]},
        )
    )
    position = max(position, hidden["position"])
    reader = new_token(http, admin, f"r{tag}", "reader", scopes=(f"f{tag}*",))["secret"]
    # when the reader pages through the models matching the tag, one per page
    seen, cursors = [], []
    page = models_page(http, reader, q=tag, limit=1, min_position=position)
    while True:
        seen += [m["name"] for m in page["items"]]
        assert len(page["items"]) == 1 or page["next_cursor"] is None, "pages are full"
        if page["next_cursor"] is None:
            break
        cursors.append(page["next_cursor"])
        page = models_page(http, reader, q=tag, limit=1, cursor=page["next_cursor"])
    # then it sees its models only, and no cursor reveals a hidden one
    assert seen == [f"f{tag}-one", f"f{tag}-two"]
    assert len(cursors) == 1
    assert not [c for c in cursors if b"hidden" in unsealed(c)]
    # and a metric filter that only a hidden model satisfies answers nothing: no item, no cursor
    probe = models_page(http, reader, q=tag, metric="auc>0.9", limit=1)
    assert probe == {"items": [], "next_cursor": None}


def test_a_changed_or_forged_cursor_is_refused_with_a_problem_naming_the_cursor(
    server: RegistryServer, http: httpx.Client
) -> None:
    # given a real cursor, and the same bytes with one character changed
    tag = secrets.token_hex(3)
    for name in (f"c{tag}-1", f"c{tag}-2"):
        position = register(http, server.admin_token, name)
    page = models_page(http, server.admin_token, q=tag, limit=1, min_position=position)
    cursor = page["next_cursor"]
    changed = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    # a cursor in the unsigned form this service used to hand out, naming any model
    forged = (
        base64.urlsafe_b64encode(msgspec.msgpack.encode(("models:name", ("zzz", "model-id"))))
        .decode()
        .rstrip("=")
    )
    for bad in (changed, forged, "not-a-cursor"):
        # when it is sent back
        refused = http.get(
            "/models", params={"q": tag, "cursor": bad}, headers=bearer(server.admin_token)
        )
        # then it is a 400 problem naming the parameter and the rule
        assert refused.status_code == 400, bad
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert (refused.json()["field"], refused.json()["rule"]) == ("cursor", "invalid")
    # while the real cursor still gives the next page
    follow = models_page(http, server.admin_token, q=tag, limit=1, cursor=cursor)
    assert [m["name"] for m in follow["items"]] == [f"c{tag}-2"]
