"""What a scoped token can observe, over real HTTP against ``modelreg serve`` (issue 13):
the audit feed by actor, search cursors, and the last admin token.

One registry for the module; each test makes the models and tokens it needs under names
of its own, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.registry_server import RegistryServer, registry_server

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
                    {"path": "m.pkl", "uri": f"s3://m/{name}", "sha256": "ab" * 32, "size": 1}
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
