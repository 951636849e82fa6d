"""The embedded NATS admits no anonymous client: the service publishes with its own
credentials, and a reader (with the credentials the CLI finds in the data dir) consumes
but can neither forge an event or a checkpoint nor purge or delete their streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient

from service.cli.nats_connection import running_embedded_nats_url
from service.publication.jetstream import StreamSpec, ensure_stream
from service.runtime.embedded import EmbeddedNats

EVENTS = StreamSpec()
CHECKPOINTS = StreamSpec(name="MODELREG_CHECKPOINTS", subject_prefix="modelreg.checkpoints")
REFUSED = (nats.errors.Error, nats.js.errors.Error)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    embedded = EmbeddedNats(tmp_path_factory.mktemp("embedded-auth"), port=0)
    embedded.start()
    yield embedded
    embedded.stop()


@pytest.fixture
async def service(server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    client = await nats.connect(server.service_url, allow_reconnect=False)
    await ensure_stream(client, EVENTS)
    await ensure_stream(client, CHECKPOINTS)
    yield client
    await client.close()


@pytest.fixture
async def reader(server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    # The way every CLI command finds the embedded server: through the data dir.
    url = running_embedded_nats_url(server.data_dir)
    assert url is not None and "modelreg-reader" in url
    client = await nats.connect(url, allow_reconnect=False)
    yield client
    await client.close()


async def test_a_client_without_credentials_is_refused(server: EmbeddedNats) -> None:
    client = NatsClient()
    try:
        with pytest.raises(nats.errors.Error):
            await client.connect(
                server.url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0
            )
    finally:
        await client.close()


def test_the_credentials_are_private_files_in_the_data_dir(server: EmbeddedNats) -> None:
    for name in ("service-credentials", "reader-credentials", "auth.conf"):
        assert (server.store_dir / name).stat().st_mode & 0o777 == 0o600


async def test_a_reader_consumes_but_cannot_forge_or_destroy(
    service: NatsClient, reader: NatsClient
) -> None:
    # given an event the service published
    ack = await service.jetstream().publish("modelreg.events.model.registered", b"{}")
    assert ack.stream == EVENTS.name

    # when a reader reads it back, it may
    msg = await reader.jsm(timeout=5).get_msg(EVENTS.name, seq=ack.seq)
    assert msg.data == b"{}"

    # then its forged event and checkpoint are refused, and so is destroying either stream
    with pytest.raises(REFUSED):
        await reader.jetstream(timeout=2).publish("modelreg.events.model.registered", b"forged")
    with pytest.raises(REFUSED):
        await reader.jetstream(timeout=2).publish("modelreg.checkpoints.signed", b"forged")
    jsm = reader.jsm(timeout=2)
    for stream in (EVENTS.name, CHECKPOINTS.name):
        with pytest.raises(REFUSED):
            await jsm.purge_stream(stream)
        with pytest.raises(REFUSED):
            await jsm.delete_msg(stream, 1)
        with pytest.raises(REFUSED):
            await jsm.delete_stream(stream)
    info = await service.jsm(timeout=5).stream_info(EVENTS.name)
    assert info.state.last_seq == ack.seq
