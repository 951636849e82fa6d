"""Sign-in with an identity provider: bearer JWTs from a real OpenID provider process (the
discovery document and JWKS over HTTP), validated by a real registry on a real Postgres."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from service.runtime.composition import build_services
from service.settings import SettingsError, load_settings
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.oidc_provider import OidcProvider, oidc_provider

M = "/api/v1/models"
AUDIENCE = "modelreg"
GROUP_ROLES = "ml-admins=admin; ml-team=contributor:churn*; everyone=reader"


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider() as running:
        yield running


def settings_for(db: Database, tmp_path: Path, **oidc: Any) -> Any:
    return load_settings(
        {},
        db_schema=db.schema,
        read_wait_timeout=10.0,
        data_dir=tmp_path,
        oidc_audience=AUDIENCE,
        oidc_group_roles=GROUP_ROLES,
        **oidc,
    )


@pytest.fixture
async def api(db: Database, provider: OidcProvider, tmp_path: Path) -> AsyncIterator[Api]:
    # A zero cache: every sign-in reads the provider's keys as they are now.
    settings = settings_for(db, tmp_path, oidc_issuer=provider.url, oidc_jwks_cache_seconds=0)
    async with running_api(db, settings) as running:
        yield running


def claims(provider: OidcProvider, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": provider.url,
        "aud": AUDIENCE,
        "sub": "u-123",
        "preferred_username": "alice@example.com",
        "groups": ["ml-team"],
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    return {**base, **overrides}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ME = "/api/v1/me"


async def signs_in(api: Api, token: str) -> bool:
    answer = await api.client.get(ME, headers=bearer(token))
    assert answer.status_code in (200, 401), answer.text
    return answer.status_code == 200


async def refused(api: Api, token: str) -> str:
    answer = await api.client.get(ME, headers=bearer(token))
    assert answer.status_code == 401, answer.text
    detail: str = answer.json()["detail"]
    return detail


async def test_a_provider_token_signs_in_with_the_roles_and_scopes_of_its_group(
    api: Api, provider: OidcProvider
) -> None:
    # given a token of the ml-team group (contributor on churn*)
    token = provider.mint(**claims(provider))
    # when it creates a model in its scope and one outside it
    inside = await api.client.post(M, json={"name": "churn-eu"}, headers=bearer(token))
    outside = await api.client.post(M, json={"name": "fraud"}, headers=bearer(token))
    # then the first is recorded as done by the person the token names, the second refused
    assert inside.status_code == 201, inside.text
    assert outside.status_code == 403 and outside.json()["details"]["scope"] == "model 'fraud'"
    model = (await api.get(f"{M}/churn-eu")).json()
    assert model["owner"] == "alice@example.com"
    me = (await api.client.get("/api/v1/me", headers=bearer(token))).json()
    assert (me["name"], me["roles"], me["scopes"]) == (
        "alice@example.com",
        ["contributor"],
        ["churn*"],
    )
    # and an ES256 token of the admins group is an admin
    admin = provider.mint("ES256", **claims(provider, groups=["ml-admins", "ml-team"]))
    assert (
        await api.client.post(M, json={"name": "fraud"}, headers=bearer(admin))
    ).status_code == 201


async def test_the_first_mapped_group_decides_and_no_mapped_group_may_do_nothing(
    api: Api, provider: OidcProvider
) -> None:
    # given a reader-only group listed after ml-team, and a group nobody mapped
    both = provider.mint(**claims(provider, groups=["everyone", "ml-team"]))
    unmapped = provider.mint(**claims(provider, groups=["interns"]))
    # then ml-team, listed first, decides (not a merge of reader-everywhere and contributor)
    me = (await api.client.get("/api/v1/me", headers=bearer(both))).json()
    assert (me["roles"], me["scopes"]) == (["contributor"], ["churn*"])
    # and a caller with no mapped group is signed in but refused, told what it lacks
    answer = await api.client.get(M, headers=bearer(unmapped))
    assert answer.status_code == 403 and answer.json()["details"]["permission"] == "read"


async def test_a_grant_to_a_group_widens_its_members_on_its_pattern_only(
    api: Api, provider: OidcProvider
) -> None:
    # given an ml-team member (contributor on churn*) and a grant to the risk group
    await api.post(M, json={"name": "fraud-eu"})
    member = provider.mint(**claims(provider, groups=["ml-team", "risk"]))
    other = provider.mint(**claims(provider, groups=["ml-team"]))
    given = await api.post(
        "/api/v1/access/grants", json={"group": "risk", "role": "contributor", "model": "fraud*"}
    )
    assert given.status_code == 201, given.text
    # then a member of risk may write to fraud models, a non-member may not
    touched = {"description": "by the risk team"}
    allowed = await api.client.patch(f"{M}/fraud-eu", json=touched, headers=bearer(member))
    assert allowed.status_code == 200, allowed.text
    refused = await api.client.patch(f"{M}/fraud-eu", json=touched, headers=bearer(other))
    assert refused.status_code == 403
    me = (await api.client.get(ME, headers=bearer(member))).json()
    assert me["groups"] == ["ml-team", "risk"] and me["scopes"] == ["churn*"]
    # and once withdrawn, the member's next write is refused
    await api.delete(f"/api/v1/access/grants/{given.json()['request_id']}")
    again = await api.client.patch(f"{M}/fraud-eu", json=touched, headers=bearer(member))
    assert again.status_code == 403


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "someone-else"}, "aud"),
        ({"iss": "https://evil.example"}, "iss"),
        ({"nbf": int(time.time()) + 3600}, "not yet valid"),
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "not-yet-valid"],
)
async def test_claims_that_do_not_hold_are_refused(
    api: Api, provider: OidcProvider, change: dict[str, Any], reason: str
) -> None:
    token = provider.mint(**claims(provider, **change))
    assert reason in await refused(api, token)


async def test_unknown_keys_none_and_a_public_key_used_as_an_hmac_secret_are_refused(
    api: Api, provider: OidcProvider
) -> None:
    payload = claims(provider)
    # a key the provider never published
    assert "kid" in await refused(api, provider.mint(kid="made-up", **payload))
    # alg none: no signature at all
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = base64.urlsafe_b64encode(json.dumps(payload).encode())
    unsigned = f"{header.rstrip(b'=').decode()}.{body.rstrip(b'=').decode()}."
    assert "none" in await refused(api, unsigned)
    # HS256 "signed" with the provider's public RSA key as the shared secret
    rsa = next(k for k in provider.jwks()["keys"] if k["kty"] == "RSA")
    secret = OctKey.import_key(json.dumps(rsa).encode())
    confused = jwt.encode(
        {"alg": "HS256", "kid": rsa["kid"]}, payload, secret, algorithms=["HS256"]
    )
    assert "HS256" in await refused(api, confused)
    # a tampered payload under a valid signature
    good = provider.mint(**payload).split(".")
    forged_body = base64.urlsafe_b64encode(
        json.dumps({**payload, "groups": ["ml-admins"]}).encode()
    )
    forged = f"{good[0]}.{forged_body.rstrip(b'=').decode()}.{good[2]}"
    assert "signature" in await refused(api, forged)


async def test_rotated_keys_are_fetched_and_dropped_keys_stop_working(
    api: Api, provider: OidcProvider
) -> None:
    # given a token signed with the current key
    old = provider.mint(**claims(provider))
    assert await signs_in(api, old)
    # when the provider rotates, keeping the old key published for a while
    provider.rotate(keep_old=True)
    new = provider.mint(**claims(provider))
    # then tokens of both keys sign in
    assert await signs_in(api, new)
    assert await signs_in(api, old)
    # and once the old key is withdrawn, its tokens are refused and the new ones still work
    provider.rotate(keep_old=False)
    assert "kid" in await refused(api, old)
    assert await signs_in(api, provider.mint(**claims(provider)))


async def test_a_jwks_file_serves_without_discovery_and_modelreg_tokens_still_work(
    db: Database, provider: OidcProvider, tmp_path: Path
) -> None:
    # given the provider's keys in a file and an issuer that has no discovery document
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(provider.jwks()))
    settings = settings_for(
        db, tmp_path, oidc_issuer="https://login.example.com/", oidc_jwks_file=keys
    )
    async with running_api(db, settings) as api:
        token = provider.mint(**claims(provider, iss="https://login.example.com/"))
        # then a token of that issuer signs in with the file's keys
        assert await signs_in(api, token)
        # and modelreg's own tokens keep working beside it
        assert await signs_in(api, api.admin)


async def test_an_unreachable_provider_is_a_503_to_retry_not_a_401(
    db: Database, provider: OidcProvider, tmp_path: Path
) -> None:
    # given an issuer whose discovery URL nothing answers
    settings = settings_for(
        db, tmp_path, oidc_issuer="http://127.0.0.1:9", oidc_jwks_cache_seconds=0
    )
    async with running_api(db, settings) as api:
        token = provider.mint(**claims(provider, iss="http://127.0.0.1:9"))
        answer = await api.client.get(ME, headers=bearer(token))
        # then the caller is told to retry, not that its credentials are bad
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"]


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("oidc_algorithms", "HS256", "MODELREG_OIDC_ALGORITHMS"),
        ("oidc_algorithms", "none", "MODELREG_OIDC_ALGORITHMS"),
        ("oidc_group_roles", "ml-team=superuser", "MODELREG_OIDC_GROUP_ROLES"),
        ("oidc_audience", "", "MODELREG_OIDC_AUDIENCE"),
    ],
)
async def test_an_unsafe_or_incomplete_configuration_refuses_to_start(
    db: Database, tmp_path: Path, setting: str, value: str, named: str
) -> None:
    oidc = {"oidc_issuer": "https://login.example.com", "oidc_audience": AUDIENCE}
    settings = load_settings({}, db_schema=db.schema, data_dir=tmp_path, **{**oidc, setting: value})
    with pytest.raises(SettingsError, match=named):
        build_services(settings, db.pool, pepper=_pepper())


def _pepper() -> Any:
    from service.commands.token_secrets import Pepper

    return Pepper(b"p" * 32)


async def test_mlflow_clients_sign_in_with_the_same_provider_tokens(
    api: Api, provider: OidcProvider
) -> None:
    # given a provider token of the ml-team group, sent as MLflow sends MLFLOW_TRACKING_TOKEN
    token = provider.mint(**claims(provider))
    expired = provider.mint(**claims(provider, exp=int(time.time()) - 3600))
    create = "/api/2.0/mlflow/registered-models/create"
    # when it creates a registered model through MLflow's API
    created = await api.client.post(create, json={"name": "churn-ml"}, headers=bearer(token))
    # then it is created, and an expired token answers MLflow's UNAUTHENTICATED
    assert created.status_code == 200, created.text
    late = await api.client.post(create, json={"name": "churn-ml2"}, headers=bearer(expired))
    assert (late.status_code, late.json()["error_code"]) == (401, "UNAUTHENTICATED")
