"""Environments from the command line, the Python client and the UI, against ``modelreg
serve``: production in eu and us with ``--env``, listed, checked and shown per environment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.client import Client
from tests.e2e.test_environments_http import REGIONAL_POLICY
from tests.support.cli import run
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.ui_registry import log_in

# The README's policy without its approvals: one admin token drives this test.
DIRECT: dict[str, Any] = {
    **REGIONAL_POLICY,
    "transitions": [{**rule, "approvals": 0} for rule in REGIONAL_POLICY["transitions"]],
}


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def test_production_in_two_environments_from_the_cli_the_client_and_the_ui(
    server: RegistryServer, tmp_path: Path
) -> None:
    # given a model whose production is per environment, with two versions in staging
    policy = tmp_path / "regional.json"
    policy.write_text(json.dumps(DIRECT))
    run(server, "models", "create", "cli-envs")
    run(server, "policy", "set", str(policy), "--model", "cli-envs", "-m", "eu and us")
    shown = run(server, "policy", "show", "--model", "cli-envs").stdout
    assert "production (one at a time in each of eu, us)" in shown
    out = tmp_path / "out"
    out.mkdir()
    for n in (1, 2):
        (out / "model.pkl").write_bytes(b"w" * (100 + n))
        run(server, "versions", "register", "cli-envs", str(out), "--no-code")
        run(server, "versions", "transition", "cli-envs", str(n), "staging")

    # when v1 goes to production in eu and us, and v2 to production in eu
    moved = run(server, "versions", "transition", "cli-envs", "1", "production", "--env", "eu")
    assert "cli-envs v1 -> production@eu: done" in moved.stdout
    run(server, "stage", "cli-envs", "1", "production", "--env", "us", "-m", "us too")
    assert run(server, "gate", "check", "cli-envs", "2", "--to", "production", "--env", "eu")
    promoted = run(
        server, "promote", "cli-envs", "2", "--to", "production", "--env", "eu", "-m", "better"
    )
    assert "also moved" in promoted.stdout

    # then each environment has its own holder
    listed = json.loads(
        run(
            server, "versions", "list", "cli-envs", "--stage", "production", "--env", "us", "--json"
        ).stdout
    )
    assert [v["version"] for v in listed["items"]] == [1]
    table = run(server, "versions", "list", "cli-envs").stdout
    assert "production@us" in table and "production@eu" in table
    with Client(server.url, server.admin_token) as client:
        assert client.get_version("cli-envs", 1).environments == ("us",)
        assert client.get_version("cli-envs", 2).environments == ("eu",)
        model = client.get_model("cli-envs")
        assert (model.stages["production@eu"], model.stages["production@us"]) == (2, 1)

    # and a move into production without an environment is refused, naming it
    refused = run(server, "stage", "cli-envs", "2", "production", "--env", "apac", code=1)
    assert "undefined_environment" in refused.stderr + refused.stdout
    missing = run(server, "versions", "transition", "cli-envs", "2", "production", code=1)
    assert "environment" in missing.stderr + missing.stdout

    # and the model page shows the holder in each environment
    with httpx.Client(base_url=server.url, timeout=30.0) as browser:
        log_in(browser, server.admin_token)
        page = browser.get("/ui/models/cli-envs")
    assert page.status_code == 200, page.text
    assert "<dt>Production in eu</dt><dd>v2</dd>" in page.text
    assert "<dt>Production in us</dt><dd>v1</dd>" in page.text
    assert '<span class="stage production@eu">production@eu</span>' in page.text
