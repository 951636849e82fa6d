"""The NATS authorization of deploy/nats/values.yaml, on a real nats-server: no anonymous
clients; the service's user provisions the stream and the relay publishes through it; the
reader's user consumes and dead-letters with the consumer kit, but cannot publish an
event nor purge or delete the stream."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import yaml
from nats.aio.client import Client as NatsClient

from eventlog.store import EventStore
from service.consumers.kit import EventConsumer, MemoryDedup
from service.publication.jetstream import ensure_stream
from service.publication.relay import Relay
from tests.support.consuming import Recorder, consume_until, subscription
from tests.support.database import Database
from tests.support.nats_servers import NatsNode, connect
from tests.support.publication import (
    Clients,
    Names,
    Writer,
    clients,
    nats_factory,
    relay_config,
    seal_all,
    stream_contents,
)
from tests.support.sample_events import CODEC

VALUES = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "values.yaml"
PRODUCTION = Names("MODELREG_EVENTS", "modelreg.events")  # the names the permissions speak of
__all__ = ["clients"]  # fixtures

PASSWORDS = {
    "NATS_MODELREG_PASSWORD": "service-pw-0123456789",
    "NATS_READER_PASSWORD": "reader-pw-0123456789",
}


def server_config(values: dict[str, Any]) -> str:
    """``config.merge`` as the chart renders it: each key as NATS config (a JSON superset),
    with ``<< $X >>`` unquoted so the server reads X from its environment."""
    unquote = re.compile(r'"<< (\$\w+) >>"')
    lines = []
    for key, value in values["config"]["merge"].items():
        text = unquote.sub(lambda m: m.group(1), json.dumps(value))
        lines.append(f"{key}: {text}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsNode]:
    workdir = tmp_path_factory.mktemp("nats-auth")
    config = workdir / "auth.conf"
    config.write_text(server_config(yaml.safe_load(VALUES.read_text())))
    node = NatsNode(workdir, "guarded", config=config, env=PASSWORDS).start()
    yield node
    node.stop()


def as_user(node: NatsNode, user: str, password: str) -> str:
    return node.url.replace("nats://", f"nats://{user}:{password}@")


@pytest.fixture
async def reader(guarded: NatsNode) -> AsyncIterator[NatsClient]:
    client = await connect(as_user(guarded, "modelreg-reader", PASSWORDS["NATS_READER_PASSWORD"]))
    yield client
    await client.close()


async def test_a_client_without_credentials_or_with_a_wrong_password_is_refused(
    guarded: NatsNode,
) -> None:
    for url in (guarded.url, as_user(guarded, "modelreg", "not-the-password")):
        client = NatsClient()
        try:
            with pytest.raises(nats.errors.Error, match=r"[Aa]uthorization"):
                await client.connect(
                    url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0
                )
        finally:
            await client.close()


async def test_the_service_publishes_and_a_reader_consumes_but_cannot_forge_or_destroy(
    db: Database, guarded: NatsNode, reader: NatsClient, clients: Clients
) -> None:
    # given the relay, connected as the service's user, publishing five sealed events
    service_url = as_user(guarded, "modelreg", PASSWORDS["NATS_MODELREG_PASSWORD"])
    service = await clients.connect(service_url)
    await ensure_stream(service, PRODUCTION.spec())
    await Writer(EventStore(db.pool, CODEC), "model").spread(5)
    await seal_all(db)
    relay = Relay(db.connect, nats_factory(service_url), relay_config(db, PRODUCTION))
    await relay.publish_all(await db.connect(), service)
    published = await stream_contents(service, PRODUCTION.stream)
    assert len(published) >= 5

    # when a reader consumes with the kit, failing once on the third event
    third = published[2].headers["ce-id"]
    recorder = Recorder(fail=lambda d: str(d.event.id) == third)
    consumer = EventConsumer(
        reader, subscription(PRODUCTION, name="agent", max_attempts=1), MemoryDedup(), recorder
    )
    await consume_until(
        consumer, lambda: consumer.stats.handled + consumer.stats.dead_lettered == len(published)
    )

    # then it handled the rest and dead-lettered the third
    assert consumer.stats.dead_lettered == 1
    assert len(recorder.handled) == len(published) - 1

    # and its attempts to forge an event, or purge or delete the stream, all fail
    with pytest.raises((nats.errors.Error, nats.js.errors.Error)):
        await reader.jetstream(timeout=2).publish(
            f"{PRODUCTION.prefix}.model.stage_transitioned", b"{}"
        )
    jsm = reader.jsm(timeout=2)
    with pytest.raises((nats.errors.Error, nats.js.errors.Error)):
        await jsm.purge_stream(PRODUCTION.stream)
    with pytest.raises((nats.errors.Error, nats.js.errors.Error)):
        await jsm.delete_stream(PRODUCTION.stream)
    assert len(await stream_contents(service, PRODUCTION.stream)) == len(published)
