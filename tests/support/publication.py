"""Fixtures and helpers for publication tests: per-test stream names, writing and sealing
events, reading back what a JetStream stream holds. Real servers only."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventlog.sealer import Sealer
from eventlog.store import EventStore
from service.publication.cloudevents import EventHeaders, decode_headers
from service.publication.jetstream import StreamSpec, delete_stream_if_exists, ensure_stream
from service.publication.relay import Relay, RelayConfig
from tests.support.database import Database
from tests.support.nats_servers import connect
from tests.support.sample_events import CODEC, META, Noted
from tests.support.waiting import eventually


@dataclass(frozen=True)
class Names:
    """A JetStream stream and subject prefix used by one test only."""

    stream: str
    prefix: str

    @classmethod
    def fresh(cls) -> Names:
        tag = secrets.token_hex(4)
        return cls(f"T_{tag}", f"t{tag}.events")

    def spec(self, **overrides: object) -> StreamSpec:
        return StreamSpec(name=self.stream, subject_prefix=self.prefix, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def names() -> Names:
    return Names.fresh()


@pytest.fixture
async def nc(nats_url: str, names: Names) -> AsyncIterator[NatsClient]:
    client = await connect(nats_url)
    try:
        yield client
    finally:
        for stream in (names.stream, f"{names.stream}_DLQ"):
            await delete_stream_if_exists(client, stream)
        await client.close()


class Clients:
    """NATS connections opened by a test, all closed at its end (dead or alive)."""

    def __init__(self) -> None:
        self.open: list[NatsClient] = []

    async def connect(self, servers: str | list[str], **kwargs: object) -> NatsClient:
        client = await connect(servers, **kwargs)
        self.open.append(client)
        return client

    async def close(self) -> None:
        for client in self.open:
            if not client.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5)


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    opened = Clients()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def store(db: Database) -> EventStore:
    return EventStore(db.pool, CODEC)


def relay_config(db: Database, names: Names, **overrides: object) -> RelayConfig:
    stream = overrides.pop("stream", names.spec())
    options: dict[str, object] = {
        "ack_timeout": 2.0,
        "poll_interval": 0.2,
        "standby_interval": 0.05,
        "backoff_initial": 0.05,
        "backoff_max": 0.3,
    }
    options.update(overrides)
    return RelayConfig(schema=db.schema, stream=stream, **options)  # type: ignore[arg-type]


def nats_factory(servers: str | list[str]) -> Callable[[], Awaitable[NatsClient]]:
    async def factory() -> NatsClient:
        return await connect(servers, max_reconnect_attempts=2)

    return factory


class Writer:
    """Appends one-event batches to several streams and remembers each stream's version."""

    def __init__(self, store: EventStore, prefix: str = "s") -> None:
        self.store = store
        self.prefix = prefix
        self.versions: dict[str, int] = {}

    async def write(self, stream: str, *texts: str) -> None:
        stream_id = f"{self.prefix}:{stream}"
        version = self.versions.get(stream_id, 0)
        await self.store.append(stream_id, version, [Noted(text=t) for t in texts], META)
        self.versions[stream_id] = version + len(texts)

    async def spread(self, count: int, streams: int = 5, tag: str = "e") -> None:
        for i in range(count):
            await self.write(f"m{i % streams}", f"{tag}{i}")


async def seal_all(db: Database, timeout: float = 60.0) -> int:
    """Seal every committed event. The Postgres cluster is shared: another session's open
    transaction holds the sealing horizon back for a while (delays, never loses), so this
    repeats until the log holds every event."""
    conn = await db.connect()
    sealer = Sealer(db.connect, db.schema)
    deadline = asyncio.get_running_loop().time() + timeout
    total = 0
    try:
        while True:
            total += await sealer.seal_all(conn)
            written = await conn.fetchval("SELECT count(*) FROM events")
            if await conn.fetchval("SELECT last_log_position FROM sealer_state") >= written:
                return total
            assert asyncio.get_running_loop().time() < deadline, "events not sealed in time"
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


@dataclass(frozen=True)
class Stored:
    seq: int
    subject: str
    headers: dict[str, str]
    payload: bytes

    @property
    def event(self) -> EventHeaders:
        return decode_headers(self.headers)


async def stream_contents(nc: NatsClient, stream: str) -> list[Stored]:
    """Every message the stream holds, in stream order (an ephemeral consumer, no acks)."""
    js = nc.jetstream(timeout=10)
    info = await js.stream_info(stream)
    if not info.state.messages:
        return []
    name = f"read_{secrets.token_hex(4)}"
    await js.add_consumer(
        stream,
        ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30,
            mem_storage=True,
            num_replicas=1,
        ),
    )
    sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    out: list[Stored] = []
    # A replicated stream whose leader was just killed may answer 503 (no consumer leader
    # yet) for a while: the reader waits until a fetch is answered; what it reads is
    # asserted as is.
    fetched: list[list[Msg]] = []

    async def answered() -> bool:
        try:
            fetched.append(await sub.fetch(1000, timeout=2))
        except nats.js.errors.ServiceUnavailableError:
            return False
        return True

    try:
        while len(out) < info.state.messages:
            try:
                await eventually(answered, timeout=60, what="JetStream answering the reader")
            except nats.errors.TimeoutError:
                break
            msgs = fetched.pop()
            out += [
                Stored(m.metadata.sequence.stream, m.subject, dict(m.headers or {}), m.data)
                for m in msgs
            ]
    finally:
        await sub.unsubscribe()
        await js.delete_consumer(stream, name)
    return out


async def log_event_ids(db: Database) -> list[str]:
    rows = await db.pool.fetch(
        "SELECT e.event_id FROM event_log l JOIN events e ON e.seq = l.seq ORDER BY l.log_position"
    )
    return [str(r["event_id"]) for r in rows]


async def wait_published(nc: NatsClient, stream: str, count: int, timeout: float = 60.0) -> None:
    async def enough() -> bool:
        try:
            info = await nc.jetstream(timeout=2).stream_info(stream)
        except Exception:
            return False
        return info.state.messages >= count

    await eventually(enough, timeout=timeout, what=f"{count} messages in {stream}")


def assert_log_published_once_in_order(stored: list[Stored], log_ids: list[str]) -> None:
    ids = [s.headers["Nats-Msg-Id"] for s in stored]
    assert len(ids) == len(set(ids)), "a duplicate reached the stream"
    assert ids == log_ids, "the stream differs from the log (missing events or out of order)"
    assert [s.event.log_position for s in stored] == list(range(1, len(log_ids) + 1))


class SimulatedCrashError(Exception):
    """Raised by a relay hook: the process "dies" at that point."""


class Relays:
    """Runs relays as tasks and stops them all at the end of a test."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, relay: Relay) -> Relay:
        self.tasks.append(asyncio.create_task(relay.run(self.stop)))
        return relay

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 60)


@pytest.fixture
async def relays() -> AsyncIterator[Relays]:
    running = Relays()
    try:
        yield running
    finally:
        await running.close()


async def publish(db: Database, names: Names, clients: Clients, nats_url: str) -> None:
    """Seal what was written and let a relay publish all of it to the run's stream."""
    await seal_all(db)
    relay = Relay(db.connect, nats_factory(nats_url), relay_config(db, names))
    client = await clients.connect(nats_url)
    await ensure_stream(client, relay.config.stream)
    await relay.publish_all(await db.connect(), client)
