"""Webhooks end to end: ``modelreg serve`` delivering to real receivers, killed (SIGKILL) and
restarted mid-delivery, the MLflow payload shape, and the ``modelreg webhooks`` commands."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from service.cli.main import build
from service.client import Client
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.waiting import eventually
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import per_model

APP = build()


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    settings = {
        "webhooks_allow_private": "true",
        "webhooks_backoff_initial": "0.05",
        "webhooks_backoff_max": "0.2",
    }
    with registry_server(database_url, nats_url, workdir, **settings) as running:
        yield running


def cli(server: RegistryServer, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(APP, list(args), env=server.env(COLUMNS="200"))
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result


async def cli_json(server: RegistryServer, *args: str) -> Any:
    # Off the event loop: the receivers in this loop must keep answering meanwhile.
    result = await asyncio.to_thread(cli, server, *args, "--json")
    return json.loads(result.stdout)


async def write(server: RegistryServer, *steps: tuple[str, str]) -> None:
    """("create" | "describe", model name) steps, through the client; each description is
    new, so each records an event."""

    def run() -> None:
        with Client(server.url, server.admin_token) as client:
            for action, name in steps:
                if action == "create":
                    client.create_model(name)
                else:
                    client.update_model(name, description=f"about {name}: {uuid.uuid4()}")

    await asyncio.to_thread(run)


async def test_a_registry_killed_mid_delivery_delivers_everything_after_its_restart(
    server: RegistryServer,
) -> None:
    # given a subscription whose receiver fails everything, with deliveries being retried
    failing = True
    receiver = await Receiver(answer=lambda _: 500 if failing else 204).start()
    created = await cli_json(server, "webhooks", "create", receiver.url, "--model", "rs-*")
    receiver.secret = created["secret"]
    await write(server, ("create", "rs-a"), ("create", "rs-b"), ("describe", "rs-a"))
    await eventually(lambda: len(receiver.received) >= 6, what="retries under way")
    # when the registry is killed and restarted, and more events come
    await asyncio.to_thread(server.crash_and_restart)
    await write(server, ("describe", "rs-b"), ("describe", "rs-a"))
    failing = False
    # then every event arrives, in order per model, signed
    await eventually(
        lambda: per_model(receiver.delivered) == {"rs-a": [1, 2, 3], "rs-b": [1, 2]},
        what="everything delivered after the restart",
    )
    assert all(r.verified for r in receiver.delivered)
    # and the delivery log says how many attempts each took
    log = await cli_json(server, "webhooks", "deliveries", created["subscription_id"])
    assert {d["status"] for d in log} == {"delivered"} and len(log) == 5
    assert max(d["attempts"] for d in log) > 1
    await receiver.stop()


async def test_an_mlflow_subscription_gets_mlflow_payloads_and_signatures(
    server: RegistryServer,
) -> None:
    # given a receiver written for MLflow webhooks
    receiver = await Receiver().start()
    created = await cli_json(
        server, "webhooks", "create", receiver.url, "--payload", "mlflow", "--model", "ml-*"
    )
    secret = created["secret"]
    # when a model is registered and described (MLflow has no event for the latter)
    await write(server, ("create", "ml-churn"), ("describe", "ml-churn"), ("create", "ml-next"))
    await eventually(lambda: len(receiver.delivered) == 2, what="the two MLflow events")
    # then it gets one MLflow registered_model.created per model, signed as MLflow signs
    # (in any order across the two: webhooks keep order per model, and each model has a
    # lane of its own)
    assert sorted(r.json["data"]["name"] for r in receiver.delivered) == ["ml-churn", "ml-next"]
    for delivered in receiver.delivered:
        assert delivered.json["entity"] == "registered_model"
        assert delivered.json["action"] == "created"
        headers = delivered.headers
        signed = f"{headers['x-mlflow-delivery-id']}.{headers['x-mlflow-timestamp']}.".encode()
        digest = hmac.new(secret.encode(), signed + delivered.body, hashlib.sha256).digest()
        assert headers["x-mlflow-signature"] == "v1," + base64.b64encode(digest).decode()
    await receiver.stop()


def test_the_webhooks_commands_list_show_and_delete(server: RegistryServer) -> None:
    # given a subscription made from the command line
    made = json.loads(
        cli(
            server, "webhooks", "create", "https://hooks.example.invalid/x", "-e", "model.*",
            "--model", "cmd-*", "-d", "for the commands", "--json",
        ).stdout
    )  # fmt: skip
    subscription = made["subscription_id"]
    assert made["secret"].startswith("whsec_")
    # when it is listed and shown
    listed = cli(server, "webhooks", "list").stdout
    shown = json.loads(cli(server, "webhooks", "show", subscription, "--json").stdout)
    # then both describe it, without its secret
    assert subscription in listed and "https://hooks.example.invalid/x" in listed
    assert shown["models"] == ["cmd-*"] and "secret" not in shown
    # when it is deleted, it is gone from the list and refuses a redelivery
    assert "deleted" in cli(server, "webhooks", "delete", subscription, "-m", "done").stdout
    assert subscription not in cli(server, "webhooks", "list").stdout
    refused = cli(server, "webhooks", "redeliver", subscription, "1", code=1)
    assert "409" in refused.stderr or "404" in refused.stderr
    # and a bad URL is refused with the field and rule named
    bad = cli(server, "webhooks", "create", "ftp://hooks.example.invalid/x", code=1)
    assert "field: url" in bad.stderr and "rule: scheme" in bad.stderr
