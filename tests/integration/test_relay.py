"""The relay publishes the sealed log to JetStream in order, with nothing lost or doubled.

Crashes are injected through ``RelayHooks`` at each point of the publish cycle: the hook
raises, the relay instance and its NATS connection are abandoned as a dead process's would
be, and a fresh relay takes over from what Postgres and the stream hold.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from eventlog.sealer import sealed_channel
from eventlog.store import EventStore, Metadata
from service.publication.cloudevents import decode_headers
from service.publication.jetstream import ensure_stream
from service.publication.relay import (
    CheckpointMovedError,
    Outgoing,
    Relay,
    RelayHooks,
    StreamMismatchError,
    publication_lag,
    relay_for,
)
from service.settings import load_settings
from tests.support.database import Database, create_database, drop_schema
from tests.support.publication import (
    Clients,
    Names,
    Relays,
    SimulatedCrashError,
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
)
from tests.support.sample_events import CODEC, Noted
from tests.support.waiting import eventually

# A poll interval longer than any wait in these tests: publication in time means a NOTIFY woke it.
NO_POLL = 3600.0

__all__ = ["clients", "names", "nc", "relays", "store"]  # fixtures


async def fresh_relay(
    db: Database, names: Names, clients: Clients, nats_url: str, **overrides: object
) -> tuple[Relay, NatsClient]:
    relay = Relay(db.connect, nats_factory(nats_url), relay_config(db, names, **overrides))
    client = await clients.connect(nats_url)
    await ensure_stream(client, relay.config.stream)
    return relay, client


async def test_the_log_is_published_in_order_as_cloudevents_with_the_stored_bytes(
    db: Database, store: EventStore, nc: NatsClient, names: Names, clients: Clients, nats_url: str
) -> None:
    # given events on several streams, one with a non-ASCII id and metadata, sealed
    writer = Writer(store)
    await writer.spread(12, streams=3)
    await store.append(
        "s:modèle ünï “quoted” 100%",
        0,
        [Noted(text="é")],
        Metadata(
            actor="zoë",
            occurred_at=datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC),
            correlation_id=CORRELATION,
        ),
    )
    await seal_all(db)
    relay, client = await fresh_relay(db, names, clients, nats_url, source="/régistre de modèles")

    # when the relay publishes
    conn = await db.connect()
    assert await relay.publish_all(conn, client) == 13

    # then the stream holds the log in order, each event once, as binary-mode CloudEvents
    stored = await stream_contents(nc, names.stream)
    assert_log_published_once_in_order(stored, await log_event_ids(db))
    rows = await db.pool.fetch(
        "SELECT l.log_position, l.log_hash, e.envelope, e.event_type FROM event_log l JOIN events e USING (seq) ORDER BY 1"
    )
    for message, row in zip(stored, rows, strict=True):
        event = decode_headers(message.headers)
        assert message.payload == bytes(row["envelope"])  # the hashed bytes, verbatim
        assert message.subject == f"{names.prefix}.{row['event_type']}"
        assert str(event.id) == message.headers["Nats-Msg-Id"] == message.headers["ce-id"]
        assert event.type == row["event_type"] and event.source == "/régistre de modèles"
        assert (
            event.log_hash == bytes(row["log_hash"]) and event.log_position == row["log_position"]
        )
        assert message.headers["ce-datacontenttype"] == "application/json"
        envelope = msgspec.json.decode(message.payload)
        assert (
            event.subject == envelope["stream_id"]
            and event.stream_position == envelope["stream_position"]
        )
    last = decode_headers(stored[-1].headers)
    assert last.subject == "s:modèle ünï “quoted” 100%" and last.correlation_id == CORRELATION
    assert all(
        ord(c) < 128 for c in stored[-1].headers["ce-subject"]
    )  # percent-encoded on the wire
    sequences = [m.headers["ce-sequence"] for m in stored]
    assert sorted(sequences) == sequences and len(set(map(len, sequences))) == 1
    assert await publication_lag(db.pool, names.stream) == 0
    assert relay.stats.published == 13 and relay.stats.duplicates == 0


CRASH_POINTS = [
    "before_publish",
    "after_publish_before_ack",
    "after_ack_before_checkpoint",
    "after_checkpoint",
]
# Re-sent on restart and suppressed by JetStream's de-duplication (PubAck.duplicate).
RESENT = {
    "before_publish": 0,
    "after_publish_before_ack": 10,
    "after_ack_before_checkpoint": 10,
    "after_checkpoint": 0,
}


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_a_crash_at_any_point_of_the_cycle_loses_nothing_and_stores_nothing_twice(
    db: Database,
    store: EventStore,
    nc: NatsClient,
    names: Names,
    clients: Clients,
    nats_url: str,
    point: str,
) -> None:
    # given 30 sealed events, published in batches of 10; the first batch goes through
    await Writer(store).spread(30, streams=4)
    await seal_all(db)
    first, first_client = await fresh_relay(db, names, clients, nats_url, batch_size=10)
    conn = await db.connect()
    assert await first.publish_once(conn, first_client) == 10

    # when the relay dies at `point` while publishing the second batch
    async def crash(batch: Sequence[Outgoing]) -> None:
        if point == "after_publish_before_ack":
            # the server has stored the batch; the process dies before reading the acks
            await eventually(lambda: _stored_at_least(nc, names.stream, 20), what="batch stored")
        raise SimulatedCrashError(point)

    first.hooks = RelayHooks(**{point: crash})
    with pytest.raises(SimulatedCrashError):
        await first.publish_once(conn, first_client)
    await conn.close()

    # then a new relay publishes everything; what the dead one sent is de-duplicated
    second, second_client = await fresh_relay(db, names, clients, nats_url, batch_size=10)
    conn = await db.connect()
    await second.publish_all(conn, second_client)

    stored = await stream_contents(nc, names.stream)
    assert_log_published_once_in_order(stored, await log_event_ids(db))
    assert second.stats.duplicates == RESENT[point]
    assert second.stats.published == 30 - 10 - RESENT[point] - (
        10 if point == "after_checkpoint" else 0
    )
    assert await publication_lag(db.pool, names.stream) == 0


async def test_beyond_the_duplicate_window_a_resend_is_refused_and_the_relay_skips_ahead(
    db: Database, store: EventStore, nc: NatsClient, names: Names, clients: Clients, nats_url: str
) -> None:
    # given a stream with a tiny duplicate window and a relay that died after the acks
    # of a batch but before its checkpoint
    spec = names.spec(duplicate_window=0.3)
    await Writer(store).spread(20, streams=3)
    await seal_all(db)
    first, client = await fresh_relay(db, names, clients, nats_url, batch_size=10, stream=spec)
    conn = await db.connect()

    async def crash(batch: Sequence[Outgoing]) -> None:
        raise SimulatedCrashError

    first.hooks = RelayHooks(after_ack_before_checkpoint=crash)
    with pytest.raises(SimulatedCrashError):
        await first.publish_once(conn, client)

    # when the window has passed (the server no longer remembers those ids) and a new relay runs;
    # the passing of time is the scenario here (nothing to poll without publishing): twice the
    # window, and any longer a loaded machine takes only makes it more certain
    await asyncio.sleep(0.6)
    second, client2 = await fresh_relay(db, names, clients, nats_url, batch_size=10, stream=spec)
    await second.publish_all(conn, client2)

    # then the fence refused the re-send and the relay skipped over what the stream holds
    stored = await stream_contents(nc, names.stream)
    assert_log_published_once_in_order(stored, await log_event_ids(db))
    assert second.stats.fast_forwards == 1 and second.stats.duplicates == 0
    assert second.stats.published == 10


async def test_two_relays_publishing_at_once_never_interleave_or_duplicate(
    db: Database, store: EventStore, nc: NatsClient, names: Names, clients: Clients, nats_url: str
) -> None:
    # given two relays that both believe they lead (no lock), while writers append
    pair = [
        await fresh_relay(db, names, clients, nats_url, batch_size=7, window=3) for _ in range(2)
    ]
    conns = [await db.connect() for _ in pair]
    writing = True
    moved = 0

    async def write() -> None:
        nonlocal writing
        writer = Writer(store)
        for i in range(8):
            await writer.spread(15, streams=4, tag=f"w{i}-")
            await seal_all(db)
        writing = False

    async def publish(relay: Relay, client: NatsClient, conn: object) -> None:
        nonlocal moved
        while writing or await publication_lag(db.pool, names.stream):
            try:
                await relay.publish_once(conn, client)  # type: ignore[arg-type]
            except CheckpointMovedError:
                moved += 1
            await asyncio.sleep(0)

    await asyncio.gather(
        write(), *(publish(r, c, k) for (r, c), k in zip(pair, conns, strict=True))
    )

    # then the stream is the log, once and in order, although both published
    stored = await stream_contents(nc, names.stream)
    assert_log_published_once_in_order(stored, await log_event_ids(db))
    assert len(stored) == 120
    assert moved > 0, "the relays never raced; the test proved nothing"


async def test_one_relay_leads_and_a_standby_takes_over_when_its_session_dies(
    db: Database,
    store: EventStore,
    nc: NatsClient,
    names: Names,
    clients: Clients,
    nats_url: str,
    relays: Relays,
) -> None:
    first = relays.start(Relay(db.connect, nats_factory(nats_url), relay_config(db, names)))
    await eventually(lambda: _true(first.is_leader), what="first leads")
    second = relays.start(Relay(db.connect, nats_factory(nats_url), relay_config(db, names)))
    writer = Writer(store)
    await writer.spread(5)
    await seal_all(db)
    await eventually(lambda: _lag_is_zero(db, names), what="published")
    assert first.is_leader and not second.is_leader

    # when the leader's database session is killed
    admin = await db.admin()
    killed = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND objid = (hashtextextended($1, 0) & 4294967295)::oid"
        " AND classid = ((hashtextextended($1, 0) >> 32) & 4294967295)::oid",
        f"modelreg:{db.schema}:relay:{names.stream}",
    )
    assert killed == 1
    await writer.spread(5, tag="after")
    await seal_all(db)

    # then some relay leads again and publishes the rest, once and in order
    await eventually(lambda: _lag_is_zero(db, names), what="published after failover")
    stored = await stream_contents(nc, names.stream)
    assert_log_published_once_in_order(stored, await log_event_ids(db))


async def test_a_killed_listen_connection_is_replaced_and_notifications_keep_waking_the_relay(
    db: Database,
    store: EventStore,
    nc: NatsClient,
    names: Names,
    clients: Clients,
    nats_url: str,
    relays: Relays,
) -> None:
    # given a relay that would poll only once an hour, so publication in time means NOTIFY
    relay = relays.start(
        Relay(db.connect, nats_factory(nats_url), relay_config(db, names, poll_interval=NO_POLL))
    )
    await eventually(lambda: _true(relay.listening), what="listening")
    writer = Writer(store)
    await writer.spread(3)
    await seal_all(db)
    await eventually(lambda: _lag_is_zero(db, names), what="woken by NOTIFY")

    # when its LISTEN connection is killed
    admin = await db.admin()
    assert await _kill_listeners(admin, db) == 1

    # then it listens again on a new connection and is still woken promptly
    await eventually(lambda: _listener_count(admin, db, 1), what="listening again")
    await writer.spread(3, tag="later")
    await seal_all(db)
    await eventually(lambda: _lag_is_zero(db, names), what="woken after reconnecting")
    stored = await stream_contents(nc, names.stream)
    assert_log_published_once_in_order(stored, await log_event_ids(db))


async def test_with_no_notification_ever_arriving_polling_still_publishes(
    db: Database,
    store: EventStore,
    nc: NatsClient,
    names: Names,
    clients: Clients,
    nats_url: str,
    relays: Relays,
) -> None:
    # given every LISTEN connection of the relay killed as soon as it appears
    admin = await db.admin()
    stop_killing = asyncio.Event()

    async def killer() -> None:
        while not stop_killing.is_set():
            await _kill_listeners(admin, db)
            await asyncio.sleep(0.005)  # pacing the killer, not waiting for anything

    killing = asyncio.create_task(killer())
    relays.start(
        Relay(db.connect, nats_factory(nats_url), relay_config(db, names, poll_interval=0.2))
    )

    # when events are sealed
    await Writer(store).spread(10)
    await seal_all(db)

    # then polling publishes them anyway
    await eventually(lambda: _lag_is_zero(db, names), what="published by polling")
    stop_killing.set()
    await killing
    assert_log_published_once_in_order(
        await stream_contents(nc, names.stream), await log_event_ids(db)
    )


async def test_a_stream_that_lost_its_messages_is_refilled_from_where_it_ends(
    db: Database, store: EventStore, nc: NatsClient, names: Names, clients: Clients, nats_url: str
) -> None:
    await Writer(store).spread(8)
    await seal_all(db)
    relay, client = await fresh_relay(db, names, clients, nats_url)
    conn = await db.connect()
    await relay.publish_all(conn, client)

    # when the stream is deleted and recreated empty (an operator, or a lost R1 store)
    await nc.jetstream().delete_stream(names.stream)
    await ensure_stream(nc, relay.config.stream)
    relay, client2 = await fresh_relay(db, names, clients, nats_url)
    await relay.publish_all(conn, client2)

    # then the relay republishes the whole log into it
    assert relay.stats.rewinds == 1
    assert_log_published_once_in_order(
        await stream_contents(nc, names.stream), await log_event_ids(db)
    )


async def test_a_stream_holding_another_registrys_log_is_refused(
    db: Database,
    store: EventStore,
    nc: NatsClient,
    names: Names,
    clients: Clients,
    nats_url: str,
    database_url: str,
) -> None:
    # given a stream already fed by another registry
    other = await create_database(database_url)
    try:
        await Writer(EventStore(other.pool, CODEC)).spread(3)
        await seal_all(other)
        relay, client = await fresh_relay(other, names, clients, nats_url)
        await relay.publish_all(await other.connect(), client)
    finally:
        await other.close()
        await drop_schema(database_url, other.schema)

    # when this registry's relay is pointed at the same stream
    await Writer(store).spread(5)
    await seal_all(db)
    relay, client = await fresh_relay(db, names, clients, nats_url)

    # then it refuses to publish rather than mixing two logs
    with pytest.raises(StreamMismatchError, match="another registry"):
        await relay.publish_all(await db.connect(), client)
    assert len(await stream_contents(nc, names.stream)) == 3


async def test_the_relay_a_registry_process_runs_is_configured_from_settings(
    db: Database, store: EventStore, nc: NatsClient, names: Names, nats_url: str, relays: Relays
) -> None:
    settings = load_settings(
        {},
        db_schema=db.schema,
        db_app_role=db.app_role,
        nats_stream=names.stream,
        nats_subject_prefix=names.prefix,
        event_source="/modelreg/test",
    )
    relay = relays.start(relay_for(settings, db.url, f"{nats_url}, {nats_url}"))
    assert (
        relay.config.stream.duplicate_window == 6 * 3600
        and relay.config.publisher == f"nats:{names.stream}"
    )
    await Writer(store).spread(4)
    await seal_all(db)
    await eventually(lambda: _lag_is_zero(db, names), what="published")
    stored = await stream_contents(nc, names.stream)
    assert_log_published_once_in_order(stored, await log_event_ids(db))
    assert {m.headers["ce-source"] for m in stored} == {"/modelreg/test"}


# ---------------------------------------------------------------- helpers

CORRELATION = uuid.UUID("0193e0a4-0000-7000-8000-000000000001")


async def _true(value: bool) -> bool:
    return value


async def _stored_at_least(nc: NatsClient, stream: str, count: int) -> bool:
    return (await nc.jetstream().stream_info(stream)).state.messages >= count


async def _lag_is_zero(db: Database, names: Names) -> bool:
    return (
        await publication_lag(db.pool, names.stream) == 0
        and await db.pool.fetchval("SELECT count(*) FROM publication_checkpoints") > 0
    )


_LISTENERS = "FROM pg_stat_activity WHERE query LIKE 'LISTEN %' AND query LIKE $1 AND backend_type = 'client backend'"


async def _kill_listeners(admin: object, db: Database) -> int:
    return int(
        await admin.fetchval(  # type: ignore[attr-defined]
            f"SELECT count(pg_terminate_backend(pid)) {_LISTENERS}",
            f"%{sealed_channel(db.schema)}%",
        )
    )


async def _listener_count(admin: object, db: Database, expected: int) -> bool:
    count = await admin.fetchval(f"SELECT count(*) {_LISTENERS}", f"%{sealed_channel(db.schema)}%")  # type: ignore[attr-defined]
    return int(count) == expected
