"""Signing in through the identity provider's pages: the UI's authorization code flow with
PKCE over plain HTTP (the happy path and every refusal), and the public configuration
``modelreg login`` starts from. A real provider process (tests/support/oidc_provider.py),
a real registry on a real Postgres; the browser is an httpx client keeping cookies.
The same flows in chromium and the CLI's device flow: tests/e2e/test_signin_browser_cli.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from service.identity.flows import FlowConfig, SignInRefusedError, challenge_of
from service.settings import SettingsError, load_settings
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.oidc_provider import OidcProvider, oidc_provider

CLIENT_ID = "modelreg"
CLIENT_SECRET = "web-client-secret-never-shown"
GROUP_ROLES = "ml-admins=admin; ml-team=contributor:churn*; everyone=reader"
CALLBACK = "/ui/login/oidc/callback"
FLOW_COOKIE = "modelreg_oidc_flow"


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider() as running:
        yield running


@pytest.fixture
async def api(db: Database, provider: OidcProvider, tmp_path: Path) -> AsyncIterator[Api]:
    settings = load_settings(
        {},
        db_schema=db.schema,
        read_wait_timeout=10.0,
        data_dir=tmp_path,
        oidc_issuer=provider.url,
        oidc_audience=CLIENT_ID,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        oidc_provider_name="Test SSO",
        oidc_group_roles=GROUP_ROLES,
    )
    async with running_api(db, settings, ui=True) as running:
        yield running


async def start(browser: httpx.AsyncClient) -> dict[str, str]:
    """The browser clicks "Sign in with ...": the authorization request's parameters."""
    answer = await browser.get("/ui/login/oidc", params={"next_page": "/ui/approvals"})
    assert answer.status_code == 303, answer.text
    assert FLOW_COOKIE in browser.cookies
    return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["location"]).query).items()}


def sign_in_at_provider(
    provider: OidcProvider, request: dict[str, str], user: str, groups: str, *, approve: bool = True
) -> str:
    """The person signs in on the provider's form; the callback URL it redirects to."""
    form = httpx.get(f"{provider.url}/authorize", params=request)
    assert form.status_code == 200, form.text
    fields = dict(re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', form.text))
    person = {"username": user, "groups": groups, "action": "approve" if approve else "deny"}
    answer = httpx.post(f"{provider.url}/authorize", data=fields | person)
    assert answer.status_code == 302, answer.text
    location: str = answer.headers["location"]
    return location


def relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_the_login_page_offers_the_provider_and_its_code_flow_starts_a_session(
    api: Api, provider: OidcProvider
) -> None:
    async with api.browser() as browser:
        # given the login page offers the provider
        page = await browser.get("/ui/login")
        assert "Sign in with Test SSO" in page.text
        # when the browser starts the flow, it is sent to the provider with PKCE S256,
        # state and nonce
        request = await start(browser)
        assert request["response_type"] == "code"
        assert request["client_id"] == CLIENT_ID
        assert request["code_challenge_method"] == "S256"
        assert len(request["code_challenge"]) == 43
        assert request["state"] and request["nonce"]
        assert "openid" in request["scope"].split()
        assert request["redirect_uri"] == str(browser.base_url).rstrip("/") + CALLBACK
        # and the person signs in there as a member of ml-team
        callback = sign_in_at_provider(provider, request, "alice@example.com", "ml-team")
        # then the callback starts the UI's session and moves on to the page asked for
        done = await browser.get(relative(callback))
        assert done.status_code == 200, done.text
        assert 'url=/ui/approvals"' in done.text
        assert "modelreg_session" in browser.cookies
        approvals = await browser.get("/ui/approvals")
        assert approvals.status_code == 200
        assert "alice@example.com" in approvals.text
        assert "contributor" in approvals.text
        # and the flow's cookie is spent
        assert FLOW_COOKIE not in browser.cookies


async def test_a_callback_with_another_state_is_refused(api: Api, provider: OidcProvider) -> None:
    async with api.browser() as browser:
        # given a flow started in this browser and completed at the provider
        request = await start(browser)
        callback = sign_in_at_provider(provider, request, "alice@example.com", "ml-team")
        # when the callback arrives with another state (a login CSRF attempt)
        forged = relative(callback).replace(request["state"], "forged-state")
        answer = await browser.get(forged)
        # then it is refused with a page saying why, and no session is started
        assert answer.status_code == 400
        assert "state: does not match" in answer.text
        assert "modelreg_session" not in browser.cookies


async def test_a_callback_without_the_flow_cookie_is_refused(
    api: Api, provider: OidcProvider
) -> None:
    async with api.browser() as started, api.browser() as other:
        # given a flow started in one browser
        request = await start(started)
        callback = sign_in_at_provider(provider, request, "alice@example.com", "ml-team")
        # when its callback is opened in another browser, which holds no verifier
        answer = await other.get(relative(callback))
        # then it is refused: without the verifier the code is useless
        assert answer.status_code == 400
        assert "not started in this browser" in answer.text
        assert "modelreg_session" not in other.cookies


async def test_a_replayed_code_is_refused(api: Api, provider: OidcProvider) -> None:
    async with api.browser() as browser, api.browser() as replayer:
        # given a completed sign-in, and its flow cookie and callback URL copied
        request = await start(browser)
        flow_cookie = browser.cookies[FLOW_COOKIE]
        callback = relative(sign_in_at_provider(provider, request, "alice@example.com", "ml-team"))
        assert (await browser.get(callback)).status_code == 200
        # when the same callback is replayed with the same cookie
        replayer.cookies.set(
            FLOW_COOKIE, flow_cookie, domain="modelreg.test", path="/ui/login/oidc"
        )
        answer = await replayer.get(callback)
        # then the provider refuses the used code, and no session is started
        assert answer.status_code == 400
        assert "invalid_grant" in answer.text
        assert "modelreg_session" not in replayer.cookies


async def test_the_provider_refuses_a_wrong_or_missing_verifier(
    api: Api, provider: OidcProvider
) -> None:
    async with api.browser() as browser:
        request = await start(browser)
        code = parse_qs(urlsplit(sign_in_at_provider(provider, request, "alice", "ml-team")).query)[
            "code"
        ][0]
    exchange = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": CLIENT_ID,
        "redirect_uri": request["redirect_uri"],
    }
    # when the code is exchanged with a verifier that does not match the challenge
    async with httpx.AsyncClient() as http:
        wrong = await http.post(
            f"{provider.url}/token", data=exchange | {"code_verifier": "x" * 64}
        )
        again = await http.post(f"{provider.url}/token", data=exchange)
    # then it is refused, and the code is spent for good (even with the right verifier
    # nobody holds, it no longer works)
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    assert "code_verifier" in wrong.json()["error_description"]
    assert again.json()["error"] == "invalid_grant"


async def test_a_code_without_its_verifier_is_refused(api: Api, provider: OidcProvider) -> None:
    async with api.browser() as browser:
        request = await start(browser)
        code = parse_qs(urlsplit(sign_in_at_provider(provider, request, "alice", "ml-team")).query)[
            "code"
        ][0]
    async with httpx.AsyncClient() as http:
        missing = await http.post(
            f"{provider.url}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "client_id": CLIENT_ID,
                "redirect_uri": request["redirect_uri"],
            },
        )
    assert missing.status_code == 400
    assert missing.json() == {
        "error": "invalid_grant",
        "error_description": "code_verifier is required (PKCE)",
    }


async def test_access_denied_at_the_provider_shows_a_clear_page(
    api: Api, provider: OidcProvider
) -> None:
    async with api.browser() as browser:
        # given a flow started, and the person denies it at the provider
        request = await start(browser)
        callback = sign_in_at_provider(provider, request, "", "", approve=False)
        assert "error=access_denied" in callback
        # when the browser comes back
        answer = await browser.get(relative(callback))
        # then a page says the provider did not sign them in, with a 403 and no session
        assert answer.status_code == 403
        assert "Test SSO did not sign you in (access_denied)" in answer.text
        assert "modelreg_session" not in browser.cookies


async def test_the_providers_error_description_is_shown_as_text_not_markup(
    api: Api, provider: OidcProvider
) -> None:
    async with api.browser() as browser:
        # given a flow started, and a callback whose error description carries markup
        request = await start(browser)
        answer = await browser.get(
            CALLBACK,
            params={
                "state": request["state"],
                "error": "server_error",
                "error_description": "<script>alert(1)</script>",
            },
        )
        # then the page says the provider failed (400), escaping what the provider sent
        assert answer.status_code == 400
        assert "<script>alert(1)</script>" not in answer.text
        assert "&lt;script&gt;" in answer.text


async def test_an_id_token_minted_for_another_sign_in_is_refused(
    api: Api, provider: OidcProvider
) -> None:
    # given an ID token with another nonce, and one for another client
    flows = api.services.auth.flows
    assert flows is not None
    now = int(time.time())
    base: dict[str, Any] = {"iss": provider.url, "sub": "u-1", "iat": now, "exp": now + 300}
    other_nonce = provider.mint(**base, aud=CLIENT_ID, nonce="someone-elses")
    other_client = provider.mint(**base, aud="another-app", nonce="mine")
    checked_at = datetime.now(UTC)
    # then each is refused, naming the claim
    for token, claim in ((other_nonce, "nonce"), (other_client, "aud")):
        with pytest.raises(SignInRefusedError, match=claim) as refused:
            await flows.check_id_token(token, "mine", checked_at)
        assert refused.value.status == 401
    # and the PKCE challenge is S256 of the verifier (RFC 7636 appendix B)
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert challenge_of(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


async def test_the_cli_configuration_is_public_and_holds_no_secret(
    api: Api, provider: OidcProvider
) -> None:
    # when anyone asks, without a token
    answer = await api.client.get("/api/v1/auth/config")
    # then it names the issuer, the client and the provider's device endpoints
    assert answer.status_code == 200
    assert answer.json() == {
        "issuer": provider.url,
        "client_id": CLIENT_ID,
        "audience": CLIENT_ID,
        "scope": "openid profile offline_access",
        "provider_name": "Test SSO",
        "device_authorization_endpoint": f"{provider.url}/device_authorization",
        "token_endpoint": f"{provider.url}/token",
    }
    # and never the web client's secret
    assert CLIENT_SECRET not in answer.text


async def test_without_a_client_id_there_is_no_provider_sign_in(db: Database) -> None:
    async with running_api(db, ui=True) as plain, plain.browser() as browser:
        assert "Sign in with" not in (await browser.get("/ui/login")).text
        assert (await browser.get("/ui/login/oidc")).status_code == 404
        missing = await plain.client.get("/api/v1/auth/config")
        assert missing.status_code == 404
        assert "MODELREG_OIDC_CLIENT_ID" in missing.json()["detail"]


def test_a_redirect_url_that_is_not_absolute_http_is_refused_at_start_up() -> None:
    # given a redirect URL a provider could never send a browser back to
    settings = load_settings(
        {},
        oidc_issuer="https://sso.example.com",
        oidc_audience=CLIENT_ID,
        oidc_client_id=CLIENT_ID,
        oidc_redirect_url="/ui/login/oidc/callback",
    )
    # then the configuration is refused, naming the variable
    with pytest.raises(SettingsError, match="MODELREG_OIDC_REDIRECT_URL"):
        FlowConfig.from_settings(settings)
