"""The consumer kit hands each event to the handler once, in per-model order, through
crashes, restarts, handler failures and re-sent copies; what keeps failing is dead-lettered.

Events reach the stream through the real relay; "crashes" cancel a consumer mid-handler
and drop its NATS connection, leaving its deliveries unacknowledged on the server.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from pathlib import Path
from uuid import UUID

import pytest
from nats.aio.client import Client as NatsClient

from eventlog.store import EventStore
from service.consumers.kit import (
    DLQ_ATTEMPTS,
    DLQ_REASON,
    DedupStore,
    Delivery,
    EventConsumer,
    FileDedup,
    MemoryDedup,
    PostgresDedup,
)
from service.publication.cloudevents import percent_decode
from tests.support.consuming import Recorder, consume_until, subscription
from tests.support.database import Database
from tests.support.publication import (
    Clients,
    Names,
    Writer,
    clients,
    log_event_ids,
    names,
    nc,
    publish,
    store,
    stream_contents,
)
from tests.support.sample_events import META, Counted

__all__ = ["clients", "names", "nc", "store"]  # fixtures


async def crash_while_consuming(
    consumer: EventConsumer, recorder: Recorder, client: NatsClient
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(recorder.hanging.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.close()


def assert_per_model_order(handled: list[Delivery]) -> None:
    per_stream: dict[str, list[int]] = defaultdict(list)
    for delivery in handled:
        per_stream[delivery.event.subject].append(delivery.event.stream_position)
    for positions in per_stream.values():
        assert positions == sorted(positions) and len(positions) == len(set(positions))


@pytest.mark.parametrize("store_kind", ["file", "postgres"])
async def test_each_event_is_handled_once_and_in_order_across_a_crash_and_a_restart(
    db: Database,
    store: EventStore,
    names: Names,
    clients: Clients,
    nats_url: str,
    tmp_path: Path,
    store_kind: str,
) -> None:
    # given 60 published events of four models
    await Writer(store, "model").spread(60, streams=4)
    await publish(db, names, clients, nats_url)

    opened: list[DedupStore] = []

    def dedup() -> DedupStore:
        opened.append(
            FileDedup(tmp_path / "seen") if store_kind == "file" else PostgresDedup(db.pool)
        )
        return opened[-1]

    # when a consumer dies in the middle of its third batch
    first = Recorder()
    first.hang_at = 24
    doomed = await clients.connect(nats_url)
    await crash_while_consuming(
        EventConsumer(doomed, subscription(names), dedup(), first), first, doomed
    )

    # and a new process takes over with the same durable name and store
    second = Recorder()
    consumer = EventConsumer(await clients.connect(nats_url), subscription(names), dedup(), second)
    await consume_until(consumer, lambda: len(first.handled) + len(second.handled) >= 60)

    # then together they handled every event exactly once, in stream (= log) order
    assert first.ids + second.ids == await log_event_ids(db)
    assert consumer.stats.recoveries == 1  # it waited for the crashed batch to come back
    assert consumer.stats.duplicates == 4  # handled before the crash, redelivered after it
    assert_per_model_order(first.handled + second.handled)
    for each in opened:
        if isinstance(each, FileDedup):
            each.close()


async def test_a_copy_re_sent_beyond_the_duplicate_window_is_not_handled_again(
    db: Database, store: EventStore, nc: NatsClient, names: Names, clients: Clients, nats_url: str
) -> None:
    # given five published events, and then a copy of the third with a fresh Nats-Msg-Id,
    # as JetStream would store it once its duplicate window has passed
    await Writer(store, "model").spread(5)
    await publish(db, names, clients, nats_url)
    third = (await stream_contents(nc, names.stream))[2]
    headers = {k: v for k, v in third.headers.items() if not k.startswith("Nats-Expected")}
    await nc.jetstream().publish(
        third.subject, third.payload, headers={**headers, "Nats-Msg-Id": "copy-of-the-third"}
    )
    assert len(await stream_contents(nc, names.stream)) == 6

    # when the consumer reads the stream
    recorder = Recorder()
    consumer = EventConsumer(nc, subscription(names), MemoryDedup(), recorder)
    await consume_until(consumer, lambda: consumer.stats.duplicates == 1)

    # then the copy is recognised by ce-id and skipped
    assert recorder.ids == await log_event_ids(db)
    assert consumer.stats.handled == 5


async def test_failing_handlers_are_retried_in_place_so_per_model_order_holds(
    db: Database, store: EventStore, nc: NatsClient, names: Names, clients: Clients, nats_url: str
) -> None:
    # given a handler that fails the first one or two attempts on a third of the events
    await Writer(store, "model").spread(80, streams=5)
    await publish(db, names, clients, nats_url)
    rng = random.Random(7)
    failures: dict[UUID, int] = {}

    def flaky(delivery: Delivery) -> bool:
        if delivery.event.id not in failures:
            failures[delivery.event.id] = rng.choice([0, 0, 1, 2])
        return delivery.attempt <= failures[delivery.event.id]

    recorder = Recorder(flaky)
    consumer = EventConsumer(nc, subscription(names, max_attempts=3), MemoryDedup(), recorder)
    await consume_until(consumer, lambda: len(recorder.handled) >= 80)

    # then each event was handled once, and every model saw its events in order
    assert recorder.ids == await log_event_ids(db)
    assert_per_model_order(recorder.handled)
    assert consumer.stats.retries == sum(failures.values()) > 0
    assert consumer.stats.dead_lettered == 0


async def test_an_event_that_keeps_failing_is_dead_lettered_and_the_rest_go_on(
    db: Database, store: EventStore, nc: NatsClient, names: Names, clients: Clients, nats_url: str
) -> None:
    # given a poison event among ten, and a message that is no CloudEvent at all
    await Writer(store, "model").spread(10, streams=2)
    await publish(db, names, clients, nats_url)
    await nc.jetstream().publish(
        f"{names.prefix}.test.noted", b"{}", headers={"Nats-Msg-Id": "junk"}
    )
    ids = await log_event_ids(db)
    poison = ids[4]
    recorder = Recorder(lambda d: str(d.event.id) == poison)
    sub = subscription(names, max_attempts=3)
    consumer = EventConsumer(nc, sub, MemoryDedup(), recorder)

    # when it is consumed
    await consume_until(
        consumer, lambda: consumer.stats.dead_lettered == 2 and len(recorder.handled) == 9
    )

    # then the poison event went to the dead-letter stream after three attempts, with why
    dead = await stream_contents(nc, sub.dlq_stream)
    assert [d.subject for d in dead] == [sub.dlq_subject] * 2
    assert dead[0].headers["ce-id"] == poison and dead[0].headers[DLQ_ATTEMPTS] == "3"
    assert f"handler failed on {poison}" in percent_decode(dead[0].headers[DLQ_REASON])
    assert dead[0].payload == (await stream_contents(nc, names.stream))[4].payload
    assert "not a modelreg CloudEvent" in percent_decode(dead[1].headers[DLQ_REASON])
    # and everything else was handled, in order, and nothing is left to redeliver
    assert recorder.ids == [i for i in ids if i != poison]
    info = await nc.jsm().consumer_info(names.stream, sub.name)
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_filters_select_event_types_on_the_server_and_models_on_the_client(
    db: Database, store: EventStore, nc: NatsClient, names: Names, clients: Clients, nats_url: str
) -> None:
    # given noted and counted events on two models and on a non-model stream
    writer = Writer(store, "model")
    await writer.spread(6, streams=2)  # noted events on model:m0 and model:m1
    for stream_id in ("model:m1", "model:m2", "other:x"):
        version = writer.versions.get(stream_id, 0)
        await store.append(stream_id, version, [Counted(n=1), Counted(n=2)], META)
    await publish(db, names, clients, nats_url)

    # when a consumer asks for counted events of model m1
    recorder = Recorder()
    sub = subscription(names, event_types=["test.counted"], models=["m1"])
    consumer = EventConsumer(nc, sub, MemoryDedup(), recorder)
    await consume_until(consumer, lambda: consumer.stats.handled + consumer.stats.filtered == 6)

    # then it handles exactly those; other types never left the server
    assert [(d.event.subject, d.event.type, d.model_id) for d in recorder.handled] == [
        ("model:m1", "test.counted", "m1")
    ] * 2
    assert consumer.stats.filtered == 4
    assert [d.envelope.stream_position for d in recorder.handled] == [4, 5]


async def test_with_postgres_dedup_a_crash_after_the_effect_leaves_no_double_effect(
    db: Database, store: EventStore, names: Names, clients: Clients, nats_url: str
) -> None:
    # given a handler whose effect is a row written in the transaction the kit provides
    admin = await db.admin()
    await admin.execute("CREATE TABLE effects (event_id uuid NOT NULL, n serial)")
    await admin.execute(
        f"GRANT INSERT, SELECT ON effects TO {db.app_role}; "
        f"GRANT USAGE ON SEQUENCE effects_n_seq TO {db.app_role}"
    )
    await Writer(store, "model").spread(12, streams=3)
    await publish(db, names, clients, nats_url)
    written = 0
    reached = asyncio.Event()

    async def write_effect(delivery: Delivery) -> None:
        nonlocal written
        assert delivery.conn is not None
        await delivery.conn.execute("INSERT INTO effects (event_id) VALUES ($1)", delivery.event.id)
        written += 1
        if written == 7:
            reached.set()
            await asyncio.Event().wait()  # dies after the effect, before the commit

    doomed = await clients.connect(nats_url)
    task = asyncio.create_task(
        EventConsumer(doomed, subscription(names), PostgresDedup(db.pool), write_effect).run(
            asyncio.Event()
        )
    )
    await asyncio.wait_for(reached.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await doomed.close()

    # when another process takes over
    consumer = EventConsumer(
        await clients.connect(nats_url), subscription(names), PostgresDedup(db.pool), write_effect
    )
    await consume_until(consumer, lambda: consumer.stats.handled == 6)

    # then every event has exactly one effect, in log order
    rows = await db.pool.fetch("SELECT event_id FROM effects ORDER BY n")
    assert [str(r["event_id"]) for r in rows] == await log_event_ids(db)
    inbox = await db.pool.fetchval("SELECT count(*) FROM consumer_inbox WHERE consumer = 'c1'")
    assert inbox == 12


async def test_the_file_store_remembers_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "seen"
    path.write_text(
        "c1 00000000-0000-0000-0000-000000000001\nc1 00000000-0000-0000-00"
    )  # torn tail
    first = FileDedup(path)
    assert await first.begin("c1", UUID(int=1)) is None
    claim = await first.begin("c1", UUID(int=2))
    assert claim is not None
    await claim.commit()
    first.close()
    again = FileDedup(path)
    assert await again.begin("c1", UUID(int=2)) is None
    assert await again.begin("c2", UUID(int=2)) is not None
    again.close()
