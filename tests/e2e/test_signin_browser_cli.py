"""Signing in through the identity provider against a real ``modelreg serve`` process and
a real provider process: in chromium (the login page's button, the provider's form, back
signed in with the mapped role and scope), and from a terminal (``modelreg login`` as a
subprocess, approved on the provider's verification page; the stored credential serves
later commands, is refreshed when expired, and ``modelreg logout`` forgets it). The polling
rules of RFC 8628 (slow_down, expired_token, access_denied) run in-process with a recorded
sleep, so no test waits on the clock.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from service.client.signin import Credentials, Prompt, SignInError, device_login, load, save
from tests.support.oidc_provider import OidcProvider, oidc_provider
from tests.support.registry_server import REPO, RegistryServer, registry_server
from tests.support.ui_registry import UiRegistry, populate

CHROMIUM = "/usr/bin/chromium"
GROUP_ROLES = "ml-admins=admin; ml-team=contributor; ml-fraud=reader:fraud-*"


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider(interval=1) as running:
        yield running


@pytest.fixture(scope="module")
def server(
    database_url: str, nats_url: str, workdir: Path, provider: OidcProvider
) -> Iterator[RegistryServer]:
    with registry_server(
        database_url,
        nats_url,
        workdir,
        oidc_issuer=provider.url,
        oidc_audience="modelreg",
        oidc_client_id="modelreg",
        oidc_provider_name="Test SSO",
        oidc_group_roles=GROUP_ROLES,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def content(server: RegistryServer) -> UiRegistry:
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        return populate(http, server.admin_token)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


def test_a_person_signs_in_through_the_provider_in_the_browser(
    chromium: Browser, server: RegistryServer, content: UiRegistry
) -> None:
    context = chromium.new_context(base_url=server.url)
    try:
        page = context.new_page()
        # given the login page, which offers the provider
        page.goto("/ui/login")
        # when the person clicks it and signs in there as a member of ml-fraud
        page.get_by_role("link", name="Sign in with Test SSO").click()
        expect(page.get_by_role("heading", name="Sign in to Test SSO")).to_be_visible()
        page.get_by_label("User").fill("fiona@example.com")
        page.get_by_label("Groups").fill("everyone, ml-fraud")
        page.get_by_role("button", name="Sign in").click()
        # then they are back in modelreg, signed in with the role their group maps to
        expect(page.get_by_role("heading", name="Models")).to_be_visible()
        expect(page.get_by_text("Signed in as fiona@example.com (reader)")).to_be_visible()
        # and see the model in their scope, not the one outside it
        expect(page.get_by_role("link", name=content.model)).to_be_visible()
        expect(page.get_by_role("link", name=content.hidden)).to_have_count(0)
    finally:
        context.close()


def cli_env(server: RegistryServer, config: Path) -> dict[str, str]:
    """No MODELREG_TOKEN: the stored credential is all the CLI has."""
    env = server.env(XDG_CONFIG_HOME=str(config))
    del env["MODELREG_TOKEN"]
    return env


def modelreg(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def login_approved_by(
    server: RegistryServer, provider: OidcProvider, env: dict[str, str], *, approve: bool
) -> tuple[int, str, str]:
    """``modelreg login`` in a subprocess; the person answers on the verification page
    once the code is shown. Its exit code, stdout and stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "login", "--url", server.url],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    shown = [process.stdout.readline() for _ in range(2)]
    assert shown[0].startswith(f"To sign in with Test SSO, open {provider.url}/device"), shown
    user_code = shown[1].split()[-1]
    provider.answer_device(user_code, user="carl@example.com", groups="ml-team", approve=approve)
    out, err = process.communicate(timeout=120)
    return process.returncode, "".join(shown) + out, err


def test_modelreg_login_stores_a_credential_later_commands_use(
    server: RegistryServer, provider: OidcProvider, tmp_path: Path
) -> None:
    env = cli_env(server, tmp_path)
    # given no credential, a command cannot run
    assert modelreg(env, "whoami").returncode == 2
    # when the person runs modelreg login and approves on the provider's page
    code, out, err = login_approved_by(server, provider, env, approve=True)
    # then it is signed in, having shown its progress while it waited
    assert code == 0, err
    stored = tmp_path / "modelreg" / "credentials.json"
    assert f"Signed in to {server.url}" in out
    assert "Waiting for approval" in err
    # and the credential is readable by its owner only
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    credential = json.loads(stored.read_text())
    assert credential["url"] == server.url
    assert credential["refresh_token"]
    # and a command without a token runs as the person, with their group's role
    me = modelreg(env, "whoami", "--json")
    assert me.returncode == 0, me.stderr
    assert (json.loads(me.stdout)["name"], json.loads(me.stdout)["roles"]) == (
        "carl@example.com",
        ["contributor"],
    )

    # when the access token has expired
    credential["expires_at"] = 0
    stored.write_text(json.dumps(credential))
    again = modelreg(env, "whoami", "--json")
    # then the next command refreshes it and stores the new pair, still 0600
    assert again.returncode == 0, again.stderr
    renewed = json.loads(stored.read_text())
    assert renewed["access_token"] != credential["access_token"]
    assert renewed["refresh_token"] != credential["refresh_token"]
    assert renewed["expires_at"] > 0
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600

    # when the person logs out
    out_ = modelreg(env, "logout")
    # then the credential is gone, and commands need a token again
    assert out_.returncode == 0, out_.stderr
    assert not stored.exists()
    refused = modelreg(env, "whoami")
    assert refused.returncode == 2
    assert "modelreg login" in refused.stderr


def test_modelreg_login_denied_at_the_provider_stores_nothing(
    server: RegistryServer, provider: OidcProvider, tmp_path: Path
) -> None:
    env = cli_env(server, tmp_path)
    # when the person denies the request on the verification page
    code, _, err = login_approved_by(server, provider, env, approve=False)
    # then login fails saying so, and nothing is stored
    assert code == 1
    assert "denied" in err
    assert not (tmp_path / "modelreg").exists()


def test_the_device_flow_slows_down_when_asked_and_waits_while_pending(
    server: RegistryServer, provider: OidcProvider
) -> None:
    # given a provider that answers slow_down to the first poll
    sleeps: list[float] = []
    codes: list[str] = []

    def prompt(shown: Prompt) -> None:
        codes.append(shown.user_code)
        provider.script_device(shown.user_code, "slow_down")

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:  # the person approves after two unanswered polls
            provider.answer_device(codes[0], user="dora", groups="ml-admins")

    # when the CLI signs in
    credentials = device_login(server.url, prompt=prompt, sleep=sleep)
    # then it waited the interval, then five seconds more from slow_down on (RFC 8628 3.5),
    # kept polling while authorization was pending, and got the tokens
    assert sleeps == [1.0, 6.0, 6.0]
    assert credentials.url == server.url
    me = httpx.get(
        f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {credentials.access_token}"}
    )
    assert (me.json()["name"], me.json()["roles"]) == ("dora", ["admin"])


def test_an_expired_device_code_ends_the_sign_in(
    server: RegistryServer, provider: OidcProvider
) -> None:
    # given a device code that expires before anyone approves it
    def prompt(shown: Prompt) -> None:
        provider.script_device(shown.user_code, expire=True)

    # when the CLI polls, then it stops with the reason
    with pytest.raises(SignInError, match="expired"):
        device_login(server.url, prompt=prompt, sleep=lambda _: None)


def test_a_credentials_file_is_written_0600_even_under_a_lax_umask(tmp_path: Path) -> None:
    # given a process whose umask would make files world-readable
    previous = os.umask(0)
    try:
        # when a credential is stored
        path = save(
            Credentials(url="http://r", access_token="t", token_endpoint="http://p", client_id="c"),
            tmp_path / "fresh" / "credentials.json",
        )
    finally:
        os.umask(previous)
    # then only its owner may read it, and its folder only its owner may list
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load(path) is not None


def test_modelreg_login_says_when_the_registry_cannot_be_reached(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    # when login is pointed at a port nobody listens on
    done = modelreg(env, "login", "--url", "http://127.0.0.1:9")
    # then it fails with one line saying so (3: unreachable), and stores nothing
    assert done.returncode == 3
    assert "cannot reach the registry or its identity provider" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "modelreg").exists()
