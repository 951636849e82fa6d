"""The relay survives real faults: NATS stopped mid-burst, acks lost on the wire, kill -9.

These tests run their own nats-server (or a proxy in front of one) so they can break it
without disturbing the session's server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path
from urllib.parse import urlsplit

from nats.aio.client import Client as NatsClient

from eventlog.sealer import Sealer
from eventlog.store import EventStore
from service.publication.jetstream import delete_stream_if_exists
from service.publication.relay import Relay, publication_lag
from tests.support.database import Database
from tests.support.nats_servers import NatsNode, TcpProxy
from tests.support.publication import (
    Clients,
    Names,
    Relays,
    Writer,
    assert_log_published_once_in_order,
    clients,
    log_event_ids,
    names,
    nats_factory,
    nc,
    relay_config,
    relays,
    seal_all,
    store,
    stream_contents,
    wait_published,
)
from tests.support.waiting import eventually

__all__ = ["clients", "names", "nc", "relays", "store"]  # fixtures

ROOT = Path(__file__).resolve().parents[2]


async def test_writes_keep_being_accepted_while_nats_is_down_and_publication_catches_up_in_order(
    db: Database, store: EventStore, names: Names, clients: Clients, relays: Relays, tmp_path: Path
) -> None:
    # given our own NATS, a relay and a sealer running as in production
    node = NatsNode(tmp_path).start()
    try:
        relay = relays.start(
            Relay(db.connect, nats_factory(node.url), relay_config(db, names, ack_timeout=1.0))
        )
        sealing = asyncio.create_task(
            Sealer(db.connect, db.schema, max_idle_interval=0.02).run(relays.stop)
        )
        writer = Writer(store)

        async def lag() -> int:
            return await publication_lag(db.pool, names.stream)

        # when writers burst while NATS is stopped half-way through
        await writer.spread(40, streams=4, tag="before")
        await eventually(lambda: _checkpoint_at(db, names, 40), what="first part published")
        node.stop()
        await writer.spread(60, streams=4, tag="during")  # the store does not need NATS
        await eventually(lambda: _at_least_sealed(db, 100), what="sealed while NATS is down")
        await eventually(
            lambda: _true(relay.stats.failures > 0), what="the relay noticed the outage"
        )
        assert await lag() == 60

        node.start()
        await writer.spread(20, streams=4, tag="after")

        # then publication catches up, every event once and in log order
        await eventually(lambda: _checkpoint_at(db, names, 120), what="caught up after the outage")
        client = await clients.connect(node.url)
        stored = await stream_contents(client, names.stream)
        assert_log_published_once_in_order(stored, await log_event_ids(db))
        assert len(stored) == 120
        relays.stop.set()
        await sealing
    finally:
        await relays.close()
        node.stop()


async def test_a_publish_whose_ack_is_lost_is_retried_and_deduplicated(
    db: Database, store: EventStore, nc: NatsClient, names: Names, nats_url: str, relays: Relays
) -> None:
    # given a relay that reaches NATS through a proxy
    proxy = await TcpProxy(urlsplit(nats_url).port or 4222).start()
    try:
        relay = relays.start(
            Relay(
                db.connect,
                nats_factory(proxy.url),
                relay_config(db, names, ack_timeout=0.5, backoff_max=0.2),
            )
        )
        writer = Writer(store)
        await writer.spread(10, tag="first")
        await seal_all(db)
        await eventually(lambda: _is(publication_lag(db.pool, names.stream), 0), what="first batch")

        # when the server's answers stop reaching the relay, after its publishes got through
        proxy.blackhole_replies = True
        await writer.spread(10, tag="second")
        await seal_all(db)
        await eventually(
            lambda: _stream_has(nc, names.stream, 11),
            what="the server stored some of the second batch",
        )
        await eventually(
            lambda: _true(relay.stats.failures > 0), what="the relay timed out waiting for acks"
        )
        unacked = (await nc.jsm().stream_info(names.stream)).state.messages - 10
        assert (
            await publication_lag(db.pool, names.stream) == 10
        )  # nothing unacked was checkpointed

        proxy.blackhole_replies = False
        proxy.reset_connections()

        # then the relay re-sends, JetStream answers "duplicate", and nothing is stored twice
        await eventually(lambda: _is(publication_lag(db.pool, names.stream), 0), what="caught up")
        assert relay.stats.duplicates >= unacked  # stored but unacknowledged, re-sent, deduplicated
        assert_log_published_once_in_order(
            await stream_contents(nc, names.stream), await log_event_ids(db)
        )
    finally:
        await relays.close()
        await proxy.close()


async def test_a_relay_process_killed_with_sigkill_is_replaced_without_loss_or_duplicates(
    db: Database, store: EventStore, nc: NatsClient, names: Names, nats_url: str
) -> None:
    def spawn() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.relay_process",
                db.url,
                db.schema,
                db.app_role,
                nats_url,
                names.stream,
                names.prefix,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    async def published() -> int:
        return int(
            await db.pool.fetchval(
                "SELECT coalesce(max(log_position), 0) FROM publication_checkpoints WHERE publisher = $1",
                f"nats:{names.stream}",
            )
        )

    first = spawn()
    second: subprocess.Popen[str] | None = None
    try:
        # given a relay process publishing in small batches while events keep coming
        writer = Writer(store)
        killed = asyncio.Event()
        writing = asyncio.create_task(
            _write_and_seal(db, writer, killed, rounds_after=10, per_round=10)
        )
        await eventually(lambda: _at_least(published(), 40), what="the first process published")

        # when it is killed -9 in the middle of the stream
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed.set()
        second = spawn()
        await writing

        # then the next process publishes the rest: all of the log, once, in order
        await eventually(lambda: _is(publication_lag(db.pool, names.stream), 0), what="caught up")
        assert_log_published_once_in_order(
            await stream_contents(nc, names.stream), await log_event_ids(db)
        )
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()


async def _write_and_seal(
    db: Database, writer: Writer, killed: asyncio.Event, rounds_after: int, per_round: int
) -> None:
    """Rounds of sealed writes until the relay is killed, then ``rounds_after`` more: the
    kill falls in the middle of the stream however fast either side runs."""
    r = 0
    while not killed.is_set():
        await writer.spread(per_round, streams=3, tag=f"r{r}-")
        await seal_all(db)
        r += 1
    for extra in range(rounds_after):
        await writer.spread(per_round, streams=3, tag=f"after{extra}-")
        await seal_all(db)


async def _true(value: bool) -> bool:
    return value


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _at_least(value: Awaitable[int], expected: int) -> bool:
    return await value >= expected


async def _checkpoint_at(db: Database, names: Names, position: int) -> bool:
    value = await db.pool.fetchval(
        "SELECT log_position FROM publication_checkpoints WHERE publisher = $1",
        f"nats:{names.stream}",
    )
    return bool(value == position)


async def _at_least_sealed(db: Database, count: int) -> bool:
    return int(await db.pool.fetchval("SELECT last_log_position FROM sealer_state")) >= count


async def _stream_has(nc: NatsClient, stream: str, count: int) -> bool:
    return (await nc.jetstream().stream_info(stream)).state.messages >= count


async def test_a_stream_missing_at_resync_is_recreated_and_refilled_from_the_log(
    db: Database, store: EventStore, nc: NatsClient, names: Names, relays: Relays, nats_url: str
) -> None:
    # given a running relay that published the log so far, over connections we can drop
    opened: list[NatsClient] = []
    factory = nats_factory(nats_url)

    async def connect() -> NatsClient:
        client = await factory()
        opened.append(client)
        return client

    relays.start(Relay(db.connect, connect, relay_config(db, names)))
    writer = Writer(store)
    await writer.spread(5)
    await seal_all(db)
    await wait_published(nc, names.stream, 5)

    # when NATS loses its store (the stream is gone) and the relay's connection drops,
    # and more events are sealed meanwhile
    await delete_stream_if_exists(nc, names.stream)
    for client in opened:
        await client.close()
    await writer.spread(5, tag="after")
    await seal_all(db)

    # then the relay creates the stream again and refills it: the whole log, once, in order
    await wait_published(nc, names.stream, 10)
    assert_log_published_once_in_order(
        await stream_contents(nc, names.stream), await log_event_ids(db)
    )
