"""``modelreg access``, ``modelreg service-accounts`` and ``modelreg tokens issue`` end to end
against a ``modelreg serve`` process: what they print, their JSON, their exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import as_json, run
from tests.support.registry_server import RegistryServer, registry_server


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def test_service_accounts_and_their_tokens(server: RegistryServer) -> None:
    # given a service account for CI with tokens of at most 30 days
    made = run(
        server, "service-accounts", "create", "ci-bot", "--role", "contributor",
        "--scope", "churn*", "--max-lifetime", "30d",
    )  # fmt: skip
    assert "service account ci-bot: access.service_account_created" in made.stdout
    # then a token for longer is refused naming expires_at, one for 7 days is issued
    refused = run(
        server, "tokens", "issue", "--service-account", "ci-bot", "--expires-in", "31d", code=1
    )
    assert "422" in refused.stderr and "expires_at" in refused.stderr
    issued = as_json(
        run(
            server, "tokens", "issue", "--service-account", "ci-bot", "--expires-in", "7d", "--json"
        )
    )
    assert (issued["principal"], issued["roles"], issued["scopes"]) == (
        "ci-bot",
        ["contributor"],
        ["churn*"],
    )
    assert as_json(run(server, "whoami", "--json", token=issued["secret"]))["name"] == "ci-bot"
    listed = as_json(run(server, "service-accounts", "list", "--json"))
    assert [(a["name"], a["max_lifetime_seconds"]) for a in listed] == [("ci-bot", 30 * 86400)]
    # when the account is disabled, its token is refused
    run(server, "service-accounts", "disable", "ci-bot", "-m", "retired")
    gone = run(server, "whoami", token=issued["secret"], code=1)
    assert "disabled" in gone.stderr


def test_roles_grants_and_checks_now_and_then(server: RegistryServer) -> None:
    # given a custom role granted to alice on fraud*
    run(server, "access", "define-role", "tagger", "-p", "read", "-p", "write")
    roles = as_json(run(server, "access", "roles", "--json"))
    assert {"name": "tagger", "permissions": ["read", "write"], "builtin": False,
            "description": ""} in roles  # fmt: skip
    given = as_json(
        run(
            server,
            "access",
            "grant",
            "tagger",
            "--model",
            "fraud*",
            "--principal",
            "alice",
            "-m",
            "rota",
            "--json",
        )
    )
    grant_id, at_grant = given["request_id"], given["position"]
    # then the check says which grant allowed, and the grants list shows it
    allowed = run(server, "access", "check", "alice", "write", "--model", "fraud-eu").stdout
    assert f"allowed by grant {grant_id} (role tagger on fraud*)" in allowed
    denied = run(server, "access", "check", "alice", "write", "--model", "churn").stdout
    assert denied.startswith("denied:")
    table = run(server, "access", "grants").stdout
    assert grant_id in table and "alice" in table and "fraud*" in table
    # when it is withdrawn, it is gone now but still there as of the position it was given
    run(server, "access", "withdraw", grant_id, "-m", "rota ended")
    now = as_json(run(server, "access", "check", "alice", "write", "--model", "fraud-eu", "--json"))
    assert now["allowed"] is False
    then = as_json(
        run(
            server,
            "access",
            "check",
            "alice",
            "write",
            "--model",
            "fraud-eu",
            "--as-of",
            str(at_grant),
            "--json",
        )
    )
    assert then["allowed"] is True and then["position"] == at_grant
    assert as_json(run(server, "access", "grants", "--json"))["grants"] == []
    # and bad input is refused before anything is sent
    both = run(server, "access", "grant", "reader", "--model", "x", code=2)
    assert "exactly one of --principal and --group" in both.stderr
