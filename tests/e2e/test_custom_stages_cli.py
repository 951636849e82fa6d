"""Custom stages from the command line and the Python client, against ``modelreg serve``:
``modelreg policy set`` with the README's lifecycle, then ``modelreg stage`` along it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.client import Client
from service.client.models import ArtifactEntry
from tests.e2e.test_custom_stages_http import GLOSSARY_POLICY
from tests.support.cli import run
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.ui_registry import log_in


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


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
        client.transition("cli-stages", 1, "archived", comment="superseded")
        client.restore_version("cli-stages", 1, reason="needed again")
        assert client.get_version("cli-stages", 1).stage == "training"

    # and a stage the policy does not define is refused with its field and rule
    refused = run(server, "stage", "cli-stages", "1", "development", code=1)
    assert "undefined_stage" in refused.stderr or "undefined_stage" in refused.stdout


def test_the_ui_shows_a_model_s_own_lifecycle(server: RegistryServer) -> None:
    # given a model on the glossary lifecycle with a version in training and one in staging
    with Client(server.url, server.admin_token) as client:
        client.create_model("ui-stages")
        client.set_policy(GLOSSARY_POLICY, model="ui-stages")
        for n in (1, 2):
            client.register_version(
                "ui-stages",
                manifest=[
                    ArtifactEntry(
                        path="model.pkl",
                        external=True,
                        uri=f"s3://m/ui-stages/{n}",
                        sha256=f"{n:064x}",
                        size=n,
                    )
                ],
                code=None,
            )
        client.transition("ui-stages", 2, "staging", comment="eval passed")
        # and a pending request back to training (approvals on that move, for this test)
        back = [
            {**rule, "approvals": 1}
            if (rule["from_stage"], rule["to_stage"]) == ("staging", "training")
            else rule
            for rule in GLOSSARY_POLICY["transitions"]
        ]
        client.set_policy({**GLOSSARY_POLICY, "transitions": back}, model="ui-stages")
        pending = client.transition("ui-stages", 2, "training", comment="retrain first")
        assert pending.request_id is not None
        # a read through the client waits for the views to show its writes
        assert client.get_version("ui-stages", 2).stage == "staging"
    with httpx.Client(base_url=server.url, timeout=30.0) as browser:
        log_in(browser, server.admin_token)
        # when the model page and the search by a custom stage are opened
        page = browser.get("/ui/models/ui-stages")
        found = browser.get("/ui/", params={"stage": "training", "q": "ui-*"})
        inbox = browser.get("/ui/approvals")
    # then the page shows the policy's stages, the versions' custom stages, and the search
    # finds the model by its custom stage
    assert page.status_code == 200, page.text
    assert "training</span> (initial)" in page.text
    assert '<span class="stage training">training</span>' in page.text
    assert "<dt>Staging</dt><dd>v2</dd>" in page.text
    assert "<dt>Production</dt><dd>none</dd>" in page.text
    assert found.status_code == 200 and "ui-stages" in found.text
    # and the approvals inbox weighs the request to the custom stage
    assert inbox.status_code == 200, inbox.text
    assert "v2</a> → training" in inbox.text
