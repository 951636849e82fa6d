"""The webhooks API: bad input answered 4xx naming field and rule, receivers inside the
registry's network refused by default, scoped tokens see only their own subscriptions, and
no secret ever reaches an event."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from events.access import Role
from service.settings import load_settings
from service.webhooks.secrets import SecretBox, load_secret
from tests.support.api import Api, running_api
from tests.support.database import Database

HOOKS = "/api/v1/webhooks"


@pytest.fixture
async def api(db: Database, tmp_path: Path) -> AsyncIterator[Api]:
    # MODELREG_WEBHOOKS_ALLOW_PRIVATE unset: the default an operator gets.
    settings = load_settings({}, db_schema=db.schema, read_wait_timeout=10.0, data_dir=tmp_path)
    async with running_api(db, settings) as running:
        yield running


@pytest.mark.parametrize(
    ("body", "status", "field", "rule"),
    [
        ({"url": "ftp://hooks.example.invalid/x"}, 422, "url", "scheme"),
        ({"url": "https://u:p@hooks.example.invalid/x"}, 422, "url", "credentials"),
        ({"url": "http://127.0.0.1:8080/x"}, 422, "url", "private_address"),
        ({"url": "http://[::1]/x"}, 422, "url", "private_address"),
        ({"url": "http://169.254.169.254/latest"}, 422, "url", "private_address"),
        ({"url": "https://h.example.invalid/", "event_types": ["token.*"]}, 422, None, "unknown"),
        ({"url": "https://h.example.invalid/", "payload_format": "svix"}, 400, None, None),
        ({"url": "https://h.example.invalid/", "secret": "whsec_short"}, 422, "secret", "pattern"),
        ({"url": "https://h.example.invalid/", "colour": "red"}, 400, None, None),
    ],
)
async def test_a_bad_subscription_is_answered_4xx_naming_field_and_rule(
    api: Api, body: dict[str, object], status: int, field: str | None, rule: str | None
) -> None:
    # when a subscription is asked for with a bad value
    response = await api.post(HOOKS, json=body)
    # then it is refused with a problem naming what is wrong, and nothing is recorded
    assert response.status_code == status, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    if field is not None:
        assert problem["field"] == field
    if rule is not None:
        assert problem["rule"] == rule
    assert (await api.get(HOOKS)).json() == []


async def test_a_scoped_token_manages_only_subscriptions_inside_its_scope(api: Api) -> None:
    # given a contributor narrowed to fraud* and an admin's subscription to churn
    mallory = await api.token("mallory", Role.CONTRIBUTOR, scopes=("fraud*",))
    churn = await api.post(HOOKS, json={"url": "https://h.example.invalid/c", "models": ["churn"]})
    churn_id = churn.json()["subscription_id"]
    # when mallory subscribes to fraud models, and to everything
    own = await api.post(
        HOOKS, json={"url": "https://h.example.invalid/f", "models": ["fraud-*"]}, as_=mallory
    )
    wide = await api.post(HOOKS, json={"url": "https://h.example.invalid/all"}, as_=mallory)
    # then only the first is hers to make, and she sees only it
    assert own.status_code == 201, own.text
    assert wide.status_code == 403
    assert wide.json()["details"] == {"permission": "write", "scope": "the whole registry"}
    listed = (await api.get(HOOKS, as_=mallory)).json()
    assert [w["subscription_id"] for w in listed] == [own.json()["subscription_id"]]
    # and the churn subscription does not exist as far as she can tell
    for method, path in [
        ("GET", f"{HOOKS}/{churn_id}"),
        ("GET", f"{HOOKS}/{churn_id}/deliveries"),
        ("DELETE", f"{HOOKS}/{churn_id}"),
    ]:
        hidden = await api.request(method, path, as_=mallory)
        unknown = await api.request(method, f"{HOOKS}/no-such-hook", as_=mallory)
        assert hidden.status_code == unknown.status_code == 404
    # and a reader may not manage webhooks at all
    reader = await api.token("rob", Role.READER)
    refused = await api.get(HOOKS, as_=reader)
    assert refused.status_code == 403 and refused.json()["details"]["permission"] == "write"


async def test_the_secret_is_shown_once_kept_encrypted_and_never_in_an_event(api: Api) -> None:
    # when a subscription is created, and its request retried with the same key
    headers = {"Idempotency-Key": "hook-1"}
    first = await api.post(HOOKS, json={"url": "https://h.example.invalid/x"}, headers=headers)
    again = await api.post(HOOKS, json={"url": "https://h.example.invalid/x"}, headers=headers)
    # then the secret is in the first answer only, and both name one subscription
    created = first.json()
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert again.json()["secret"] is None
    assert again.json()["subscription_id"] == created["subscription_id"]
    # and no event, nor the stored ciphertext, holds it or its key
    key = base64.b64decode(secret[6:])
    pool = api.services.pool
    for (envelope,) in await pool.fetch("SELECT envelope FROM events"):
        assert secret.encode() not in bytes(envelope) and secret[6:].encode() not in bytes(envelope)
    ciphertext = bytes(await pool.fetchval("SELECT ciphertext FROM webhook_secrets"))
    assert secret.encode() not in ciphertext and key not in ciphertext
    # and the registry gets it back to sign, with its pepper only
    box = SecretBox(api.services.pepper)
    assert await load_secret(pool, box, created["subscription_id"]) == secret
