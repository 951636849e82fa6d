"""Read-your-writes: wait, bounded, until projections have applied a log position; and the
one-round-trip probe that tells a read whether it must wait at all. I/O: Postgres.

A write answers with the log position of its last event; a read that passes it as
``min_position`` waits here until every projection it reads has a live checkpoint at or
past it, or fails with ``NotYetVisibleError`` after the timeout: never silently stale.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg

from eventlog.listener import Listener
from eventlog.waiting import Bell
from events.streams import METRICS_TYPE


class NotYetVisibleError(TimeoutError):
    def __init__(self, position: int, reached: int, timeout: float) -> None:
        super().__init__(f"views reached position {reached}, not {position}, within {timeout:g}s")
        self.position = position
        self.reached = reached
        self.timeout = timeout


@dataclass(frozen=True, slots=True)
class Freshness:
    """Where the log and the views stand, as one statement saw them."""

    head: int  # the last sealed position
    reached: int  # the position every one of the asked-for views has reached
    latest: int  # the latest sealed event's position among the asked-for streams (0: none)


# Each stream's latest sealed event is one backward step on the stream index; the latest
# of them is what a read of those streams' views must wait for.
_FRESHNESS = """
SELECT (SELECT max(newest.log_position) FROM unnest($1::text[]) AS wanted(stream_id)
         CROSS JOIN LATERAL (
           SELECT l.log_position FROM events e JOIN event_log l USING (seq)
            WHERE e.stream_id = wanted.stream_id ORDER BY e.stream_position DESC LIMIT 1
         ) newest) AS latest,
       (SELECT min(log_position) FROM projection_checkpoints
         WHERE status = 'live' AND projection = ANY ($2::text[])) AS reached,
       (SELECT last_log_position FROM sealer_state WHERE id = 1) AS head
"""


# ``latest`` covers the key's stream and, when $3 names a version, that version's metrics
# stream (``events.streams.metrics_stream`` of the key's model; NULL otherwise).
_LOCATED = f"""
SELECT k.stream_id, s.version,
       (SELECT max(newest.log_position)
          FROM unnest(ARRAY[k.stream_id, '{METRICS_TYPE}:'
                 || substr(k.stream_id, strpos(k.stream_id, ':') + 1) || ':' || $3::int])
            AS wanted(stream_id)
          CROSS JOIN LATERAL (
            SELECT l.log_position FROM events e JOIN event_log l USING (seq)
             WHERE e.stream_id = wanted.stream_id ORDER BY e.stream_position DESC LIMIT 1
          ) newest) AS latest,
       (SELECT min(log_position) FROM projection_checkpoints
         WHERE status = 'live' AND projection = ANY ($2::text[])) AS reached,
       (SELECT last_log_position FROM sealer_state WHERE id = 1) AS head
FROM (SELECT $1::text AS key) wanted
LEFT JOIN unique_keys k ON k.key = wanted.key AND k.stream_id IS NOT NULL
LEFT JOIN streams s ON s.stream_id = k.stream_id
"""

# The model id of the key's stream (``model:<id>``), as ``events.streams.model_id_of`` reads it.
_MODEL_ID = "substr(located.stream_id, strpos(located.stream_id, ':') + 1)"

# ``_LOCATED`` and one row of a view query, in one statement: one snapshot, one round trip.
_LOCATED_WITH = """
WITH located AS ({located})
SELECT located.stream_id AS located_stream_id, located.version AS located_version,
       located.latest AS located_latest, located.reached AS located_reached,
       located.head AS located_head, found.*
FROM located
LEFT JOIN LATERAL (SELECT true AS located_found, q.* FROM ({view}) q LIMIT 1) found
  ON located.stream_id IS NOT NULL
"""

# A view query, rendered with the model's id as the SQL expression ``model`` and its own
# parameters numbered from ``$first`` on.
ViewQuery: TypeAlias = Callable[[str, int], str]


@dataclass(frozen=True, slots=True)
class Located:
    """The stream holding a unique key (``None``: no stream does), its version, and where
    the log and the views stand, as one statement saw them; ``first``: the row the view
    query asked with them found, as the same statement saw the views (None: no row)."""

    stream_id: str | None
    stream_version: int
    freshness: Freshness
    first: asyncpg.Record | None = None


async def locate_fresh(
    conn: asyncpg.Connection | asyncpg.Pool,
    key: str,
    projections: Sequence[str],
    first: ViewQuery | None = None,
    args: Sequence[Any] = (),
    *,
    metrics_of: int | None = None,
) -> Located:
    """``freshness`` for the stream that holds ``key``, found in the same round trip: a read
    by name needs no separate lookup of the id before it can tell whether to wait.

    ``first`` (with ``args``): a view query about that model, run in the same statement, so
    a read whose views need no wait is answered in this one round trip too.

    ``metrics_of``: a version of the key's model whose metrics the read shows; the latest
    sealed event of its metrics stream counts too."""
    if first is None:
        row = await conn.fetchrow(_LOCATED, key, list(projections), metrics_of)
        assert row is not None  # one row from the one-row ``wanted``, whatever joins
        return Located(
            stream_id=row["stream_id"],
            stream_version=row["version"] or 0,
            freshness=Freshness(
                head=row["head"], reached=row["reached"] or 0, latest=row["latest"] or 0
            ),
        )
    statement = _LOCATED_WITH.format(located=_LOCATED, view=first(_MODEL_ID, 4))
    row = await conn.fetchrow(statement, key, list(projections), metrics_of, *args)
    assert row is not None
    return Located(
        stream_id=row["located_stream_id"],
        stream_version=row["located_version"] or 0,
        freshness=Freshness(
            head=row["located_head"],
            reached=row["located_reached"] or 0,
            latest=row["located_latest"] or 0,
        ),
        first=row if row["located_found"] else None,
    )


async def freshness(
    conn: asyncpg.Connection | asyncpg.Pool,
    projections: Sequence[str],
    *,
    streams: Sequence[str] = (),
) -> Freshness:
    """The head, the views' position and the latest sealed event of ``streams``, in one
    round trip: enough for a read to tell whether it must wait at all."""
    row = await conn.fetchrow(_FRESHNESS, list(streams), list(projections))
    assert row is not None  # a SELECT without FROM always answers one row
    return Freshness(head=row["head"], reached=row["reached"] or 0, latest=row["latest"] or 0)


async def live_position(conn: asyncpg.Connection | asyncpg.Pool, projections: Sequence[str]) -> int:
    """The position every one of ``projections`` has reached (the least of them)."""
    value: int | None = await conn.fetchval(
        "SELECT min(log_position) FROM projection_checkpoints WHERE status = 'live' AND projection = ANY ($1::text[])",
        list(projections),
    )
    return value or 0


def views_channel(schema: str) -> str:
    """The channel each statement that moves checkpoints NOTIFYs (projections migration
    0006), heard by ``ViewsBell`` in every API process."""
    return f"modelreg_views_{schema}"[:63]


class ViewsBell(Bell):
    """Rung by a LISTEN on ``views_channel``: the views moved, so reads waiting for them
    look again now rather than at their next poll. It is relied on while that LISTEN is
    up (``hear``), not only once it has rung lately: the first read after a quiet spell
    is the one that waits for a write just made."""

    def __init__(self) -> None:
        super().__init__()
        self._listener: Listener | None = None

    def hear(self, listener: Listener) -> None:
        self._listener = listener

    def ringing(self) -> bool:
        return (self._listener is not None and self._listener.listening) or super().ringing()


async def wait_for_position(
    pool: asyncpg.Pool,
    position: int,
    projections: Sequence[str],
    *,
    timeout: float = 5.0,
    interval: float = 0.005,
    bell: Bell | None = None,
    safety_interval: float = 0.05,
) -> int:
    """Return once ``projections`` reached ``position``; raise ``NotYetVisibleError`` otherwise.

    While ``bell`` rings (the views' NOTIFY is heard), the checkpoints are looked at when
    it rings and at least every ``safety_interval`` seconds, in case a NOTIFY was lost;
    otherwise every ``interval`` seconds, growing to 50 ms."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = interval
    while True:
        # Taken before the look: a ring between the look and the wait still wakes it.
        rung = None if bell is None else bell.current()
        reached = await live_position(pool, projections)
        if reached >= position:
            return reached
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise NotYetVisibleError(position, reached, timeout)
        if bell is not None and rung is not None and bell.ringing():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rung.wait(), timeout=min(safety_interval, remaining))
            continue
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 1.5, 0.05)
