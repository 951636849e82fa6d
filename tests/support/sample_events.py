"""A couple of events for storage tests that need no registry rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from eventlog.store import EventStore, Metadata
from events.base import Event
from events.codec import EventCodec


class Noted(Event, frozen=True):
    event_type: ClassVar[str] = "test.noted"
    text: str


class Counted(Event, frozen=True):
    event_type: ClassVar[str] = "test.counted"
    n: int


CODEC = EventCodec([Noted, Counted])
META = Metadata(actor="alice", occurred_at=datetime(2026, 1, 1, tzinfo=UTC))


def notes(*texts: str) -> list[Event]:
    return [Noted(text=t) for t in texts]


async def append_notes(store: EventStore, stream_id: str, expected: int, *texts: str) -> int:
    result = await store.append(stream_id, expected, notes(*texts), META)
    return result.stream_version
