"""A small projection over the sample events, for testing the projection machinery."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from eventlog.log import LoggedEvent
from events.envelope import Envelope
from projections.base import Fold, Names, Projection, Table, changed, upsert
from tests.support.sample_events import CODEC, Counted, Noted

TABLES = [
    Table(
        "note_counts",
        "stream_id text PRIMARY KEY, notes int NOT NULL, total bigint NOT NULL, last_text text, last_position bigint NOT NULL",
        key=("stream_id",),
    ),
    Table(
        "note_log",
        "log_position bigint PRIMARY KEY, stream_id text NOT NULL, text text NOT NULL",
        key=("log_position",),
        indexes=["CREATE INDEX {name}_stream ON {table} (stream_id)"],
    ),
]

# stream_id -> (notes, total, last_text, last_position)
Count = tuple[int, int, str | None, int]


@dataclass(frozen=True, slots=True)
class NoteRows:
    counts: dict[str, Count] = field(default_factory=dict)
    log: dict[int, tuple[str, str]] = field(default_factory=dict)  # position -> (stream, text)


def _decode(envelope: Envelope) -> Noted | Counted:
    event = CODEC.decode(envelope)
    assert isinstance(event, Noted | Counted)
    return event


def evolve(rows: NoteRows, events: Sequence[LoggedEvent]) -> NoteRows:
    counts, log = dict(rows.counts), dict(rows.log)
    for logged in events:
        event = _decode(logged.envelope)
        notes, total, last_text, _ = counts.get(logged.stream_id, (0, 0, None, 0))
        if isinstance(event, Noted):
            counts[logged.stream_id] = (
                notes + 1,
                total,
                event.text or last_text,
                logged.log_position,
            )
            if event.text:
                log[logged.log_position] = (logged.stream_id, event.text)
        else:
            counts[logged.stream_id] = (notes, total + event.n, last_text, logged.log_position)
    return NoteRows(counts=counts, log=log)


async def load(conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]) -> NoteRows:
    rows = NoteRows()
    for r in await conn.fetch(
        f"SELECT stream_id, notes, total, last_text, last_position FROM {names.note_counts}"
        " WHERE stream_id = ANY ($1::text[])",
        sorted({e.stream_id for e in events}),
    ):
        rows.counts[r["stream_id"]] = (r["notes"], r["total"], r["last_text"], r["last_position"])
    return rows


async def write(
    conn: asyncpg.Connection, names: Names, loaded: NoteRows, evolved: NoteRows
) -> None:
    await upsert(
        conn,
        names.note_counts,
        (
            ("stream_id", "text"),
            ("notes", "int"),
            ("total", "bigint"),
            ("last_text", "text"),
            ("last_position", "bigint"),
        ),
        1,
        [(stream, *count) for stream, count in changed(loaded.counts, evolved.counts).items()],
    )
    log = changed(loaded.log, evolved.log)
    if log:
        await conn.executemany(
            f"INSERT INTO {names.note_log} (log_position, stream_id, text) VALUES ($1, $2, $3)",
            [(position, *row) for position, row in log.items()],
        )


NOTES = Projection(
    name="notes",
    version=1,
    tables=TABLES,
    handles=frozenset({Noted.event_type, Counted.event_type}),
    fold=Fold(load=load, evolve=evolve, write=write),
)


async def note_counts(
    conn: asyncpg.Connection | asyncpg.Pool, names: Names
) -> list[tuple[str, int, int, str | None]]:
    rows = await conn.fetch(
        f"SELECT stream_id, notes, total, last_text FROM {names.note_counts} ORDER BY stream_id"
    )
    return [tuple(r) for r in rows]


async def checksum(conn: asyncpg.Connection | asyncpg.Pool, names: Names) -> str:
    value: str = await conn.fetchval(
        f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.stream_id), '')) FROM {names.note_counts} t"
    ) + await conn.fetchval(
        f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.log_position), '')) FROM {names.note_log} t"
    )
    return value
