"""A small projection over the sample events, for testing the projection machinery."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from eventlog.log import LoggedEvent
from events.envelope import Envelope
from projections.base import Names, Projection, Table
from tests.support.sample_events import CODEC, Counted, Noted

TABLES = [
    Table(
        "note_counts",
        "stream_id text PRIMARY KEY, notes int NOT NULL, total bigint NOT NULL, last_text text, last_position bigint NOT NULL",
    ),
    Table(
        "note_log",
        "log_position bigint PRIMARY KEY, stream_id text NOT NULL, text text NOT NULL",
        indexes=["CREATE INDEX {name}_stream ON {table} (stream_id)"],
    ),
]


def _decode(envelope: Envelope) -> Noted | Counted:
    event = CODEC.decode(envelope)
    assert isinstance(event, Noted | Counted)
    return event


async def apply(conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]) -> None:
    log_rows = []
    for logged in events:
        event = _decode(logged.envelope)
        text = event.text if isinstance(event, Noted) else ""
        amount = event.n if isinstance(event, Counted) else 0
        await conn.execute(
            f"INSERT INTO {names.note_counts} (stream_id, notes, total, last_text, last_position)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (stream_id) DO UPDATE SET"
            f" notes = {names.note_counts}.notes + excluded.notes, total = {names.note_counts}.total + excluded.total,"
            f" last_text = coalesce(excluded.last_text, {names.note_counts}.last_text), last_position = excluded.last_position",
            logged.stream_id,
            1 if isinstance(event, Noted) else 0,
            amount,
            text or None,
            logged.log_position,
        )
        if text:
            log_rows.append((logged.log_position, logged.stream_id, text))
    if log_rows:
        await conn.executemany(
            f"INSERT INTO {names.note_log} (log_position, stream_id, text) VALUES ($1, $2, $3)",
            log_rows,
        )


NOTES = Projection(
    name="notes",
    version=1,
    tables=TABLES,
    handles=frozenset({Noted.event_type, Counted.event_type}),
    apply=apply,
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
