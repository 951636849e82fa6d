"""Publication to a replicated (R3) stream on a real 3-node NATS cluster on loopback.

Killing the stream's leader mid-burst must lose nothing and reorder nothing: the relay
retries through the election and the fence keeps the stream in log order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from eventlog.store import EventStore
from service.publication.jetstream import StreamSpec, ensure_stream
from service.publication.relay import Relay, publication_lag
from tests.support.database import Database
from tests.support.nats_servers import NatsCluster, TcpProxy, connect
from tests.support.publication import (
    Names,
    Relays,
    Stored,
    Writer,
    assert_log_published_once_in_order,
    log_event_ids,
    names,
    nats_factory,
    relay_config,
    relays,
    seal_all,
    store,
    stream_contents,
)
from tests.support.waiting import eventually

__all__ = ["names", "relays", "store"]  # fixtures


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsCluster]:
    nodes = NatsCluster(Path(tmp_path_factory.mktemp("cluster"))).start()
    try:
        await nodes.wait_ready()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
async def cnc(cluster: NatsCluster, names: Names) -> AsyncIterator[NatsClient]:
    client = await connect([n.url for n in cluster.nodes if n.running])
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.jsm(timeout=10).delete_stream(names.stream)
        await client.close()


async def test_provisioning_moves_an_r1_stream_to_three_replicas(
    cnc: NatsClient, names: Names
) -> None:
    created = await ensure_stream(cnc, names.spec(replicas=1))
    assert created.action == "created"
    updated = await ensure_stream(cnc, names.spec(replicas=3))
    assert updated.action == "updated" and updated.changes == ["replicas 1 -> 3"]
    assert updated.info.config.num_replicas == 3
    assert (await ensure_stream(cnc, names.spec(replicas=3))).action == "unchanged"


async def test_killing_the_stream_leader_mid_burst_loses_and_reorders_nothing(
    db: Database,
    store: EventStore,
    cluster: NatsCluster,
    cnc: NatsClient,
    names: Names,
    relays: Relays,
) -> None:
    # given an R3 stream and a relay publishing while writers burst
    spec: StreamSpec = names.spec(replicas=3)
    await ensure_stream(cnc, spec, timeout=20)
    relay = relays.start(
        Relay(
            db.connect,
            nats_factory(cluster.urls),
            relay_config(db, names, stream=spec, batch_size=20, window=20, ack_timeout=1.0),
        )
    )
    writer = Writer(store)

    killed = asyncio.Event()

    async def burst(tag: str, rounds: int, *, until: asyncio.Event | None = None) -> None:
        """``rounds`` rounds of writes; with ``until``, writing first until it is set, so
        the kill lands mid-burst however fast the writers or the relay run."""
        r = 0
        while until is not None and not until.is_set():
            await writer.spread(10, streams=5, tag=f"{tag}{r}-")
            await seal_all(db)
            r += 1
        for extra in range(rounds):
            await writer.spread(10, streams=5, tag=f"{tag}after{extra}-")
            await seal_all(db)

    await burst("a", 5)
    await eventually(lambda: _lag(db, names, 0), what="published before the kill")

    # when the stream leader is killed -9 while the burst goes on
    burst_task = asyncio.create_task(burst("b", 20, until=killed))
    await eventually(lambda: _published_at_least(db, names, 120), what="publishing under way")
    leader = (await cnc.jsm(timeout=10).stream_info(names.stream)).cluster.leader  # type: ignore[union-attr]
    assert leader is not None
    cluster.node(leader).kill()
    killed.set()
    written_at_kill = await db.pool.fetchval("SELECT count(*) FROM events")
    await burst_task

    # then the relay rides out the election and the stream holds the log once, in order
    await eventually(lambda: _lag(db, names, 0), timeout=120, what="caught up after failover")
    survivors = [n.url for n in cluster.nodes if n.running]
    reader = await connect(survivors)
    try:
        new_leader = (await reader.jsm(timeout=10).stream_info(names.stream)).cluster.leader  # type: ignore[union-attr]
        assert new_leader not in (None, leader)
        stored = await _read_after_failover(reader, names.stream)
    finally:
        await reader.close()
        cluster.node(leader).start()
    log_ids = await log_event_ids(db)
    assert_log_published_once_in_order(stored, log_ids)
    # the kill landed mid-burst: at least 120 events were published before it, and the
    # 20 rounds of 10 that follow it were all written after it
    written = await db.pool.fetchval("SELECT count(*) FROM events")
    assert len(stored) == written
    assert written_at_kill >= 120 and written >= written_at_kill + 20 * 10
    per_stream: dict[str, list[int]] = defaultdict(list)
    for message in stored:
        per_stream[message.event.subject].append(message.event.stream_position)
    for positions in per_stream.values():
        assert positions == list(range(1, len(positions) + 1))
    assert relay.stats.failures > 0, "the kill went unnoticed; the test proved nothing"


async def test_a_lost_ack_on_a_replicated_stream_is_retried_as_a_duplicate(
    db: Database,
    store: EventStore,
    cluster: NatsCluster,
    cnc: NatsClient,
    names: Names,
    relays: Relays,
) -> None:
    # On clustered streams JetStream checks Nats-Msg-Id before any expected-last check; the
    # relay's fence must not turn a retried publish into an error there either.
    await eventually(lambda: _all_running(cluster), what="cluster whole")
    spec = names.spec(replicas=3)
    await ensure_stream(cnc, spec, timeout=20)
    proxy = await TcpProxy(cluster.nodes[0].port).start()
    try:
        relay = relays.start(
            Relay(
                db.connect,
                nats_factory(proxy.url),
                relay_config(db, names, stream=spec, ack_timeout=0.5, backoff_max=0.2),
            )
        )
        writer = Writer(store)
        await writer.spread(10, tag="first")
        await seal_all(db)
        await eventually(lambda: _lag(db, names, 0), what="first batch")

        proxy.blackhole_replies = True
        await writer.spread(10, tag="second")
        await seal_all(db)
        await eventually(
            lambda: _stream_has(cnc, names.stream, 11),
            what="the server stored some of the second batch",
        )
        await eventually(
            lambda: relay.stats.failures > 0, what="the relay timed out waiting for acks"
        )
        # nothing unacknowledged was checkpointed
        assert await publication_lag(db.pool, names.stream) == 10

        # when the replies flow again and the relay re-sends from its checkpoint
        proxy.blackhole_replies = False
        proxy.reset_connections()
        await eventually(lambda: _lag(db, names, 0), what="caught up")

        # then the server answered the re-send of what it stored (at least log position 11)
        # as a duplicate, rather than the fence refusing it and the relay skipping ahead, and
        # the stream holds every event once, in log order. How many re-sends there were
        # depends on how far the server got before the replies stopped: not asserted.
        assert relay.stats.duplicates >= 1
        assert relay.stats.fast_forwards == 0
        assert_log_published_once_in_order(
            await stream_contents(cnc, names.stream), await log_event_ids(db)
        )
    finally:
        await relays.close()
        await proxy.close()


async def _lag(db: Database, names: Names, expected: int) -> bool:
    return await publication_lag(db.pool, names.stream) == expected and bool(
        await db.pool.fetchval("SELECT count(*) FROM publication_checkpoints")
    )


async def _published_at_least(db: Database, names: Names, position: int) -> bool:
    value = await db.pool.fetchval(
        "SELECT log_position FROM publication_checkpoints WHERE publisher = $1",
        f"nats:{names.stream}",
    )
    return value is not None and value >= position


async def _all_running(cluster: NatsCluster) -> bool:
    if not all(n.running for n in cluster.nodes):
        return False
    await cluster.wait_ready()
    return True


async def _stream_has(nc: NatsClient, stream: str, count: int) -> bool:
    return (await nc.jsm(timeout=5).stream_info(stream)).state.messages >= count


async def _read_after_failover(reader: NatsClient, stream: str) -> list[Stored]:
    """The stream's contents, asked again while the cluster that just lost a node cannot yet
    create the reading consumer (its API answers time out): a reader's wait, not the relay's."""
    for _ in range(5):
        try:
            return await stream_contents(reader, stream)
        except nats.errors.TimeoutError:
            continue
    return await stream_contents(reader, stream)
