"""``modelreg subjects`` and the client's subject calls against a served registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from service.client import Client
from tests.support.cli import APP, run
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.ui_registry import log_in


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def test_an_admin_erases_a_person_from_the_command_line(server: RegistryServer) -> None:
    # given a person who registered a model with a token of her own
    issued = json.loads(
        run(server, "tokens", "create", "gwen", "-r", "contributor", "--json").stdout
    )
    run(server, "models", "create", "gwens-model", token=issued["secret"])
    shown = json.loads(run(server, "subjects", "show", "gwen", "--json").stdout)
    assert (shown["name"], shown["erased"]) == ("gwen", False)
    assert "gwen" in run(server, "subjects", "show", shown["subject_id"]).stdout
    # when the admin erases her
    erased = run(server, "subjects", "erase", "gwen", "--reason", "asked", "--yes").stdout
    # then the command says what it did, and the subject reads as erased from then on
    assert erased.startswith(f"erased {shown['subject_id']}: subject.erased")
    assert f"tokens revoked: {issued['token_id']}" in erased
    after = run(server, "subjects", "show", shown["subject_id"]).stdout
    assert "erased subject" in after and "gwen" not in after
    # and her token is refused; the model lists its owner as erased
    assert "401" in run(server, "whoami", token=issued["secret"], code=1).stderr
    with Client(server.url, token=server.admin_token) as client:
        assert client.subject(shown["subject_id"]).display == "erased subject"
        assert client.get_model("gwens-model").owner == "erased subject"
    # and the web UI shows her as erased too, on the model's page and in the audit feed
    with httpx.Client(base_url=server.url, timeout=30.0) as browser:
        log_in(browser, server.admin_token)
        for page in ("/ui/models/gwens-model", f"/ui/audit?actor={shown['subject_id']}"):
            html = browser.get(page)
            assert html.status_code == 200, page
            assert "erased subject" in html.text and "gwen<" not in html.text, page
    # and the log, as people read it from the command line, names her as erased
    tail = run(server, "events", "tail", "-n", "50").stdout
    actors = [line.rstrip() for line in tail.splitlines()]
    assert any(line.endswith("erased subject") for line in actors)
    assert not [line for line in actors if line.endswith(shown["subject_id"])]
    # and a second erasure by name finds nobody (the name is gone)
    missing = run(server, "subjects", "erase", "gwen", "--reason", "again", "--yes", code=1)
    assert "404" in missing.stderr


def test_erasure_asks_before_it_acts(server: RegistryServer) -> None:
    run(server, "tokens", "create", "hank", "-r", "reader")
    # when the admin does not confirm, nothing is erased
    kept = CliRunner().invoke(
        APP,
        ["subjects", "erase", "hank", "--reason", "asked"],
        env=server.env(COLUMNS="200"),
        input="n\n",
    )
    assert kept.exit_code == 1 and "Aborted" in kept.stderr
    assert json.loads(run(server, "subjects", "show", "hank", "--json").stdout)["erased"] is False
