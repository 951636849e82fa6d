"""Reading the sealed global log: the one source every downstream reader tails. I/O: Postgres.

``event_log`` positions are contiguous and a batch becomes visible only after every earlier
one committed (a single sealer writes it), so ``log_position > last`` never skips.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from events.envelope import Envelope, decode_envelope
from events.streams import model_streams_bounds


class LoggedEvent(msgspec.Struct, frozen=True):
    log_position: int
    seq: int
    sealed_at: datetime
    envelope: Envelope

    @property
    def event_type(self) -> str:
        return self.envelope.event_type

    @property
    def stream_id(self) -> str:
        return self.envelope.stream_id


_READ = """
SELECT l.log_position, l.seq, l.sealed_at, e.envelope
  FROM event_log l JOIN events e ON e.seq = l.seq
 WHERE l.log_position > $1 AND l.log_position <= $2
 ORDER BY l.log_position
 LIMIT $3
"""

_READ_TYPES = """
SELECT l.log_position, l.seq, l.sealed_at, e.envelope
  FROM event_log l JOIN events e ON e.seq = l.seq
 WHERE l.log_position > $1 AND l.log_position <= $2 AND l.event_type = ANY ($4::text[])
 ORDER BY l.log_position
 LIMIT $3
"""

# One model's streams: the model stream itself and its metrics streams (``metrics:{id}:{n}``).
# The C collation makes the prefix a plain byte range the stream index can serve.
_READ_MODEL = """
SELECT l.log_position, l.seq, l.sealed_at, e.envelope
  FROM event_log l JOIN events e ON e.seq = l.seq
 WHERE l.log_position > $1 AND l.log_position <= $2
   AND ((l.stream_id COLLATE "C") = $4
        OR ((l.stream_id COLLATE "C") >= $5 AND (l.stream_id COLLATE "C") < $6))
 ORDER BY l.log_position
 LIMIT $3
"""

# One stream, through the stream index: a registry-wide stream's few events among millions.
_READ_STREAM = """
SELECT l.log_position, l.seq, l.sealed_at, e.envelope
  FROM event_log l JOIN events e ON e.seq = l.seq
 WHERE (l.stream_id COLLATE "C") = $4 AND l.log_position > $1 AND l.log_position <= $2
 ORDER BY l.log_position
 LIMIT $3
"""

_MAX = 2**63 - 1


async def read_log(
    conn: asyncpg.Connection | asyncpg.Pool,
    after: int,
    limit: int = 1000,
    *,
    up_to: int | None = None,
    types: frozenset[str] | None = None,
    model_id: str | None = None,
    stream_id: str | None = None,
) -> list[LoggedEvent]:
    """Up to ``limit`` sealed events after position ``after`` (and at most ``up_to``),
    optionally only of ``types``, of one model's streams or of one stream."""
    rows = await _fetch(
        conn, after, limit, up_to=up_to, types=types, model_id=model_id, stream_id=stream_id
    )
    return [_logged(r) for r in rows]


async def read_log_as_stored(
    conn: asyncpg.Connection | asyncpg.Pool,
    after: int,
    limit: int = 1000,
    *,
    types: frozenset[str] | None = None,
    model_id: str | None = None,
) -> list[tuple[LoggedEvent, bytes]]:
    """As ``read_log``, each event with its envelope's exact stored bytes (the bytes its
    hash covers), for readers that hand the log on unchanged: auditors, replays."""
    rows = await _fetch(conn, after, limit, up_to=None, types=types, model_id=model_id)
    return [(_logged(r), bytes(r["envelope"])) for r in rows]


async def _fetch(
    conn: asyncpg.Connection | asyncpg.Pool,
    after: int,
    limit: int,
    *,
    up_to: int | None,
    types: frozenset[str] | None,
    model_id: str | None,
    stream_id: str | None = None,
) -> list[asyncpg.Record]:
    bound = _MAX if up_to is None else up_to
    if sum(f is not None for f in (types, model_id, stream_id)) > 1:
        raise ValueError("filter by types, by model or by stream: one of them")
    if stream_id is not None:
        return await _custom_planned(conn, _READ_STREAM, after, bound, limit, stream_id)
    if model_id is not None:
        return await _custom_planned(
            conn, _READ_MODEL, after, bound, limit, *model_streams_bounds(model_id)
        )
    if types is not None:
        return await conn.fetch(_READ_TYPES, after, bound, limit, list(types))
    # Positions are contiguous, so the batch lies in (after, after + limit]: saying so
    # keeps the plan an index range scan even when the table has no statistics yet.
    return await conn.fetch(_READ, after, min(bound, after + limit), limit)


async def _custom_planned(
    conn: asyncpg.Connection | asyncpg.Pool, query: str, *args: object
) -> list[asyncpg.Record]:
    """The rows of ``query`` planned for these arguments. A prepared statement run often
    gets Postgres's generic plan, and for one model's streams that plan walked the
    position index from ``after`` to ``up_to`` and filtered every event of every model
    on the way: a model's time travel cost grew with the log (718 ms at 10,000,000 events,
    140 ms at 1,000,000). Planned for the actual stream bounds, it reads the model's own
    entries of the stream index."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as held:
            return await _in_custom_plan(held, query, args)
    return await _in_custom_plan(conn, query, args)


async def _in_custom_plan(
    conn: asyncpg.Connection | PoolConnectionProxy[Any], query: str, args: tuple[object, ...]
) -> list[asyncpg.Record]:
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows


def _logged(row: asyncpg.Record) -> LoggedEvent:
    return LoggedEvent(
        row["log_position"], row["seq"], row["sealed_at"], decode_envelope(row["envelope"])
    )


async def iter_log(
    pool: asyncpg.Pool,
    after: int = 0,
    *,
    batch: int = 1000,
    up_to: int | None = None,
) -> AsyncIterator[list[LoggedEvent]]:
    """Stream the log in batches, holding at most one batch in memory."""
    position = after
    while True:
        events = await read_log(pool, position, batch, up_to=up_to)
        if not events:
            return
        yield events
        position = events[-1].log_position
        if len(events) < batch:
            return


async def head_position(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """The last sealed position (0 for an empty log)."""
    value: int = await conn.fetchval("SELECT last_log_position FROM sealer_state WHERE id = 1")
    return value


async def position_at(conn: asyncpg.Connection | asyncpg.Pool, moment: datetime) -> int:
    """The last position sealed at or before ``moment``: the log as it stood then."""
    value: int | None = await conn.fetchval(
        "SELECT log_position FROM event_log WHERE sealed_at <= $1 ORDER BY sealed_at DESC, log_position DESC LIMIT 1",
        moment,
    )
    return value or 0
