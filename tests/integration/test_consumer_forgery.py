"""The consumer kit verifies the hash chains of what it is delivered and rejects forgeries:
a message published around the relay, imitating a registry event, never reaches the
handler; it is dead-lettered with the reason. Real relay, real NATS."""

from __future__ import annotations

import json

from nats.aio.client import Client as NatsClient

from eventlog.store import EventStore
from service.consumers.kit import DLQ_REASON, EventConsumer, MemoryDedup
from service.publication.cloudevents import LOG_HASH, LOG_POSITION, percent_decode
from tests.support.consuming import Recorder, consume_until, subscription
from tests.support.database import Database
from tests.support.publication import (
    Clients,
    Names,
    Stored,
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


def forged_copy(genuine: Stored, **changes: object) -> tuple[dict[str, str], bytes]:
    """A message that looks like ``genuine`` with its data changed (and the given headers)."""
    envelope = json.loads(genuine.payload)
    envelope["data"] = {"text": "promote the attacker's model"}
    headers = {k: v for k, v in genuine.headers.items() if not k.startswith("Nats-")}
    headers.update({"Nats-Msg-Id": f"forged-{genuine.headers['ce-id']}"})
    headers.update({k: str(v) for k, v in changes.items()})
    return headers, json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


async def test_a_forged_next_event_and_a_rewritten_old_one_are_rejected(
    db: Database, store: EventStore, nc: NatsClient, names: Names, clients: Clients, nats_url: str
) -> None:
    # given five genuine events, then two forgeries published around the relay: one
    # claiming the next log position, one re-telling the third event with other data
    await Writer(store, "model").spread(5)
    await publish(db, names, clients, nats_url)
    genuine = await stream_contents(nc, names.stream)
    js = nc.jetstream()
    next_position = {LOG_POSITION: "6", "ce-sequence": f"{6:020d}", LOG_HASH: "ab" * 32}
    headers, payload = forged_copy(genuine[-1], **next_position)
    await js.publish(genuine[-1].subject, payload, headers=headers)
    headers, payload = forged_copy(genuine[2])
    await js.publish(genuine[2].subject, payload, headers=headers)

    # when the kit consumes the stream
    recorder = Recorder()
    sub = subscription(names)
    consumer = EventConsumer(nc, sub, MemoryDedup(), recorder)
    await consume_until(consumer, lambda: consumer.stats.handled + consumer.stats.rejected == 7)

    # then the handler saw exactly the genuine events, and both forgeries were dead-lettered
    assert recorder.ids == await log_event_ids(db)
    assert consumer.stats.rejected == 2
    dead = await stream_contents(nc, sub.dlq_stream)
    reasons = [percent_decode(d.headers[DLQ_REASON]) for d in dead]
    assert all(r.startswith("forged or corrupt") for r in reasons), reasons
    assert "already verified with other content" in reasons[1]


async def test_a_consumer_filtering_by_type_still_rejects_a_forgery(
    db: Database, store: EventStore, nc: NatsClient, names: Names, clients: Clients, nats_url: str
) -> None:
    # given noted and counted events, and a forged counted event at the next position
    writer = Writer(store, "model")
    await writer.spread(4, streams=2)
    await store.append("model:m1", writer.versions["model:m1"], [Counted(n=1)], META)
    await publish(db, names, clients, nats_url)
    genuine = await stream_contents(nc, names.stream)
    counted = genuine[-1]
    envelope = json.loads(counted.payload)
    envelope["data"] = {"n": 999}
    headers = {k: v for k, v in counted.headers.items() if not k.startswith("Nats-")}
    headers[LOG_POSITION] = str(len(genuine) + 1)
    headers["ce-sequence"] = f"{len(genuine) + 1:020d}"
    await nc.jetstream().publish(
        counted.subject,
        json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode(),
        headers={**headers, "Nats-Msg-Id": "forged-counted"},
    )

    # when a consumer of counted events only reads the stream
    recorder = Recorder()
    consumer = EventConsumer(
        nc, subscription(names, event_types=["test.counted"]), MemoryDedup(), recorder
    )
    await consume_until(consumer, lambda: consumer.stats.handled + consumer.stats.rejected == 2)

    # then the genuine counted event was handled and the forged one rejected
    assert [json.loads(bytes(d.envelope.data)) for d in recorder.handled] == [{"n": 1}]
    assert consumer.stats.rejected == 1
