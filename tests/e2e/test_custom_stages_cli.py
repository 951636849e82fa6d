"""Custom stages from the command line and the Python client, against ``modelreg serve``:
``modelreg policy set`` with the README's lifecycle, then ``modelreg stage`` along it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from service.cli.main import build
from service.client import Client
from tests.e2e.test_custom_stages_http import GLOSSARY_POLICY
from tests.support.registry_server import RegistryServer, registry_server

APP = build()


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def run(server: RegistryServer, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(APP, list(args), env=server.env(COLUMNS="200"))
    assert result.exit_code == code, (
        f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def test_a_model_on_the_glossary_lifecycle_from_the_cli_and_the_client(
    server: RegistryServer, tmp_path: Path
) -> None:
    # given a model whose own policy is the README's training -> staging -> production
    lifecycle = tmp_path / "lifecycle.json"
    lifecycle.write_text(json.dumps(GLOSSARY_POLICY))
    run(server, "models", "create", "cli-stages")
    run(server, "policy", "set", str(lifecycle), "--model", "cli-stages", "-m", "glossary")
    shown = run(server, "policy", "show", "--model", "cli-stages").stdout
    assert "training (initial) -> staging -> production (one at a time) -> archived (final)" in (
        shown
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pkl").write_bytes(b"w" * 100)

    # when a version is registered and moved with `modelreg stage`
    run(server, "versions", "register", "cli-stages", str(out), "--no-code")
    run(server, "stage", "cli-stages", "1", "staging", "-m", "offline eval passed")
    promoted = run(server, "stage", "cli-stages", "1", "production", "-m", "beats v0")

    # then production waits for an approval, as the policy says
    assert "needs approval; opened promotion request" in promoted.stdout
    listed = json.loads(
        run(server, "versions", "list", "cli-stages", "--stage", "staging", "--json").stdout
    )
    assert [v["version"] for v in listed["items"]] == [1]

    # and the Python client takes the custom names too
    with Client(server.url, server.admin_token) as client:
        view = client.get_policy("cli-stages")
        assert view.initial_stage == "training"
        assert client.transition("cli-stages", 1, "training", comment="back").request_id is None
        assert client.get_version("cli-stages", 1).stage == "training"
        page = client.list_versions("cli-stages", stages=["training"])
        assert [v.version for v in page.items] == [1]

    # and a stage the policy does not define is refused with its field and rule
    refused = run(server, "stage", "cli-stages", "1", "development", code=1)
    assert "undefined_stage" in refused.stderr or "undefined_stage" in refused.stdout
