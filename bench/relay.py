"""Benchmark publication to JetStream against raw JetStream publishing, in one run.

    python -m bench.relay [--database-url URL] [--nats-url URL] [--seconds 5] [--events 100000]

Prints a table: raw ``js.publish`` awaiting each ack and raw ``publish_async`` with 1,000 in
flight (same stream settings, payload size and headers as the relay) as the baseline; the
relay draining a backlog of 100,000 sealed events, compared with raw pipelined publishing of
as many messages measured right before and right after it (the mean, so that a machine
shared with other work affects both alike); and commit -> JetStream ack latency while
writers offer 500 events/s with the sealer and the relay running as in production, split
into commit -> the relay reads the event (sealing, NOTIFY) and read -> ack.
Targets: relay >= 50% of the raw pipelined rate; latency p99 <= 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import PubAck

from bench.common import Row, Table, fresh_database, parser, percentile, postgres
from eventlog.sealer import Sealer
from eventlog.store import EventStore
from events.envelope import decode_envelope
from service.publication.cloudevents import encode_headers, subject_for
from service.publication.jetstream import StreamSpec, delete_stream_if_exists, ensure_stream
from service.publication.relay import (
    Outgoing,
    Relay,
    RelayConfig,
    RelayHooks,
    nats_connector,
    publication_lag,
)
from tests.support.database import Database
from tests.support.sample_events import CODEC, META, Noted

PAYLOAD = "x" * 200  # an event of roughly registry size once enveloped
WINDOW = 1000


@contextlib.contextmanager
def nats_server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from service.runtime.embedded import EmbeddedNats

    with tempfile.TemporaryDirectory(prefix="modelreg-bench-nats-") as tmp:
        server = EmbeddedNats(Path(tmp), port=None)
        try:
            yield server.start()
        finally:
            server.stop()


def fresh_spec() -> StreamSpec:
    tag = secrets.token_hex(3)
    return StreamSpec(name=f"BENCH_{tag}", subject_prefix=f"bench{tag}.events")


Sample = tuple[str, bytes, dict[str, str]]  # event type, payload, headers


async def sample_message(db: Database) -> Sample:
    """A message exactly as the relay would publish it, for the raw baseline."""
    store = EventStore(db.pool, CODEC)
    await store.append(f"b:sample:{uuid.uuid4().hex[:6]}", 0, [Noted(text=PAYLOAD)], META)
    raw = await db.pool.fetchval("SELECT envelope FROM events ORDER BY seq DESC LIMIT 1")
    envelope = decode_envelope(raw)
    headers = encode_headers(envelope, source="/modelreg", log_position=1, log_hash=bytes(32))
    return envelope.event_type, bytes(raw), headers


async def raw_pipelined(nc: NatsClient, sample: Sample, count: int) -> float:
    """msgs/s of ``count`` relay-shaped publishes with WINDOW in flight, on a fresh stream."""
    spec = fresh_spec()
    await ensure_stream(nc, spec)
    event_type, payload, headers = sample
    subject = subject_for(spec.subject_prefix, event_type)
    js = nc.jetstream(publish_async_max_pending=WINDOW + 1)
    try:
        pending: list[asyncio.Future[PubAck]] = []
        start = time.perf_counter()
        for _ in range(count):
            pending.append(
                await js.publish_async(
                    subject, payload, headers={**headers, "Nats-Msg-Id": uuid.uuid4().hex}
                )
            )
            if len(pending) >= WINDOW:
                await pending.pop(0)
        for future in pending:
            await future
        return count / (time.perf_counter() - start)
    finally:
        await delete_stream_if_exists(nc, spec.name)


async def raw_baseline(nc: NatsClient, sample: Sample, seconds: float, table: Table) -> None:
    spec = fresh_spec()
    await ensure_stream(nc, spec)
    event_type, payload, headers = sample
    subject = subject_for(spec.subject_prefix, event_type)
    js = nc.jetstream(publish_async_max_pending=WINDOW + 1)
    try:
        latencies: list[float] = []
        count = 0
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await js.publish(subject, payload, headers={**headers, "Nats-Msg-Id": uuid.uuid4().hex})
            latencies.append((time.perf_counter() - t0) * 1000)
            count += 1
        sequential = count / (time.perf_counter() - start)
        table.add(
            Row(
                "raw js.publish, awaiting each ack",
                sequential,
                "msgs/s",
                percentile(latencies, 0.5),
                percentile(latencies, 0.99),
            )
        )

        count = 0
        pending: list[asyncio.Future[PubAck]] = []
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            for _ in range(WINDOW):
                pending.append(
                    await js.publish_async(
                        subject, payload, headers={**headers, "Nats-Msg-Id": uuid.uuid4().hex}
                    )
                )
                if len(pending) >= WINDOW:
                    await pending.pop(0)
                    count += 1
        for future in pending:
            await future
            count += 1
        pipelined = count / (time.perf_counter() - start)
        table.add(
            Row(f"raw js.publish_async, {WINDOW} in flight, {seconds:.0f} s", pipelined, "msgs/s")
        )
    finally:
        await delete_stream_if_exists(nc, spec.name)


async def relay_drain(
    nc: NatsClient, nats_url: str, db: Database, events: int, table: Table, sample: Sample
) -> None:
    spec = fresh_spec()
    store = EventStore(db.pool, CODEC)
    sealer = Sealer(db.connect, db.schema)
    conn = await db.connect()
    await sealer.seal_all(conn)
    config = RelayConfig(schema=db.schema, stream=spec, batch_size=1000, window=WINDOW)
    relay = Relay(db.connect, nats_connector(nats_url), config)
    client = await nats.connect(nats_url)
    try:
        await ensure_stream(client, spec)
        # Catch the checkpoint up with what earlier workloads left in the log.
        await relay.publish_all(conn, client)
        print(f"  filling a {events:,}-event sealed backlog ...", flush=True)
        batch = [Noted(text=PAYLOAD)] * 500
        for i in range(events // 500):
            await store.append(f"b:backlog:{i % 50}", (i // 50) * 500, batch, META)
        await sealer.seal_all(conn)
        # The machine may be shared: measure the raw rate right before and right after the
        # drain, on the same number of messages, and compare with their mean.
        raw_before = await raw_pipelined(nc, sample, events)
        before = relay.stats.published
        t0 = time.perf_counter()
        await relay.publish_all(conn, client)
        elapsed = time.perf_counter() - t0
        raw_after = await raw_pipelined(nc, sample, events)
        published = relay.stats.published - before
        assert published == events, published
        rate = published / elapsed
        baseline = (raw_before + raw_after) / 2
        table.add(
            Row(
                f"raw js.publish_async, {events:,} msgs, before / after",
                baseline,
                "msgs/s",
                note=f"{raw_before:,.0f} / {raw_after:,.0f}",
            )
        )
        table.add(
            Row(
                f"relay, draining {events:,} sealed events",
                rate,
                "events/s",
                baseline=f"{baseline:,.0f} msgs/s",
                ratio=f"{rate / baseline:.0%}",
                note="target >= 50%",
            )
        )
    finally:
        await client.close()
        await delete_stream_if_exists(nc, spec.name)


async def latency(
    nc: NatsClient, nats_url: str, db: Database, seconds: float, table: Table
) -> None:
    """Commit (append returned) -> the relay holds JetStream's ack, at 500 events/s offered."""
    spec = fresh_spec()
    committed_at: dict[uuid.UUID, float] = {}
    read_at: dict[uuid.UUID, float] = {}
    acked_at: dict[uuid.UUID, float] = {}

    async def on_read(batch: Sequence[Outgoing]) -> None:
        now = time.perf_counter()
        for out in batch:
            read_at.setdefault(out.event_id, now)

    async def on_acks(batch: Sequence[Outgoing]) -> None:
        now = time.perf_counter()
        for out in batch:
            acked_at.setdefault(out.event_id, now)

    sealer = Sealer(db.connect, db.schema)
    relay = Relay(
        db.connect,
        nats_connector(nats_url),
        RelayConfig(schema=db.schema, stream=spec, batch_size=1000, window=WINDOW),
        hooks=RelayHooks(before_publish=on_read, after_ack_before_checkpoint=on_acks),
    )
    store = EventStore(db.pool, CODEC, on_append=lambda _: sealer.wake())
    stop = asyncio.Event()
    tasks = [asyncio.create_task(sealer.run(stop)), asyncio.create_task(relay.run(stop))]
    try:

        async def ready() -> bool:
            return relay.is_leader and not await publication_lag(db.pool, spec.name)

        await _poll(ready, 30)
        offered, writers = 500, 10
        interval = writers / offered

        async def writer(w: int) -> None:
            version = 0
            next_at = time.perf_counter()
            deadline = next_at + seconds
            while next_at < deadline:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += interval
                event_id = uuid.uuid4()
                result = await store.append(
                    f"b:lat:{w}", version, [Noted(text=PAYLOAD)], META, event_ids=[event_id]
                )
                committed_at[event_id] = time.perf_counter()
                version = result.stream_version

        await asyncio.gather(*(writer(w) for w in range(writers)))

        async def all_acked() -> bool:
            return all(e in acked_at for e in committed_at)

        await _poll(all_acked, 30)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await delete_stream_if_exists(nc, spec.name)
    lags = [(acked_at[e] - t) * 1000 for e, t in committed_at.items() if e in acked_at]
    assert len(lags) == len(committed_at), "some events were not acknowledged"
    table.add(
        Row(
            f"commit -> JetStream ack, {offered} events/s offered",
            len(lags) / seconds,
            "events/s",
            percentile(lags, 0.5),
            percentile(lags, 0.99),
            note="target p99 <= 100 ms",
        )
    )
    # Where the time goes: sealing + NOTIFY + the relay's read, then publish -> ack.
    sealed = [(read_at[e] - t) * 1000 for e, t in committed_at.items() if e in read_at]
    publish = [
        (acked_at[e] - read_at[e]) * 1000 for e in committed_at if e in read_at and e in acked_at
    ]
    table.add(
        Row(
            "  of which commit -> relay reads it (seal, NOTIFY)",
            len(sealed) / seconds,
            "events/s",
            percentile(sealed, 0.5),
            percentile(sealed, 0.99),
        )
    )
    table.add(
        Row(
            "  of which relay read -> JetStream ack",
            len(publish) / seconds,
            "events/s",
            percentile(publish, 0.5),
            percentile(publish, 0.99),
        )
    )


async def _poll(condition: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while True:
        if await condition() or time.perf_counter() > deadline:
            return
        await asyncio.sleep(0.01)


async def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument(
        "--nats-url",
        default=None,
        help="NATS to measure (default: our own nats-server in a temp dir)",
    )
    p.add_argument(
        "--events", type=int, default=100_000, help="size of the sealed backlog the relay drains"
    )
    args = p.parse_args()
    table = Table("Relay vs raw JetStream publishing (same servers, same run)")
    with postgres(args.database_url) as url, nats_server(args.nats_url) as nats_url:
        nc = await nats.connect(nats_url)
        try:
            # A fresh schema per workload: a relay publishes a whole log to a new stream.
            async with fresh_database(url) as db:
                sample = await sample_message(db)
                await raw_baseline(nc, sample, args.seconds, table)
            async with fresh_database(url) as db:
                await relay_drain(nc, nats_url, db, args.events, table, sample)
            async with fresh_database(url) as db:
                await latency(nc, nats_url, db, args.seconds, table)
        finally:
            await nc.close()
    table.print(args.json)


if __name__ == "__main__":
    asyncio.run(main())
