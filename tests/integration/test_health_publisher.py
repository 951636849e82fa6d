"""Readiness reports a stalled publisher: a sealed event that waited too long for the relay
(whichever replica leads it) to publish it makes /health/ready fail, naming the publisher."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from eventlog.store import EventStore
from service.api.health import check
from tests.support.database import Database
from tests.support.publication import Names, Writer, names, nc, seal_all, store
from tests.support.waiting import eventually

__all__ = ["names", "nc", "store"]  # fixtures


async def test_an_event_left_unpublished_too_long_makes_readiness_report_a_stalled_publisher(
    db: Database, store: EventStore, nc: NatsClient, names: Names
) -> None:
    # given sealed events that no relay publishes (its stream is gone, NATS lost, ...)
    publisher = f"nats:{names.stream}"
    await Writer(store).spread(3)
    await seal_all(db)

    async def stalled() -> bool:
        checks, _ = await check(db.pool, nc, publisher=publisher, stall_after=0.2)
        return checks.publisher == "stalled"

    # when readiness is checked after the stall window
    await eventually(stalled, what="a stalled publisher reported")
    checks, reasons = await check(db.pool, nc, publisher=publisher, stall_after=0.2)

    # then the process is not ready, and says which publisher is stuck
    assert (checks.database, checks.nats, checks.publisher) == ("ok", "ok", "stalled")
    assert not checks.ready
    assert any(publisher in reason and "stalled" in reason for reason in reasons)


async def test_a_publisher_that_caught_up_is_ready(
    db: Database, store: EventStore, nc: NatsClient, names: Names
) -> None:
    # given sealed events that the relay has all published (its checkpoint is the head)
    publisher = f"nats:{names.stream}"
    await Writer(store).spread(3)
    head = await seal_all(db)
    await db.pool.execute(
        "INSERT INTO publication_checkpoints (publisher, log_position) VALUES ($1, $2)",
        publisher,
        head,
    )

    # when readiness is checked long after the events were sealed
    checks, reasons = await check(db.pool, nc, publisher=publisher, stall_after=0.0)

    # then the publisher is fine
    assert checks.publisher == "ok" and checks.ready, reasons
