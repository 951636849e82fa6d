"""How far the sealer is behind the appends, and where the head of the log is. I/O.

For monitoring: ``/metrics`` reads this at scrape time. The count of unsealed events is
capped, so a large backlog costs one bounded index scan (``events_tx_seq``), not a count
of the whole table; past the cap "very behind" is all an alert needs to know.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

UNSEALED_CAP = 100_000

# One statement, so the head and the backlog are read from the same snapshot.
_SEALING = """
SELECT s.last_log_position AS head,
       (SELECT count(*) FROM (
            SELECT 1 FROM events e WHERE (e.tx_id, e.seq) > (s.last_tx_id, s.last_seq) LIMIT $1
        ) backlog) AS unsealed
  FROM sealer_state s
 WHERE s.id = 1
"""


@dataclass(frozen=True, slots=True)
class Sealing:
    """``head``: the last sealed log position. ``unsealed``: committed events past the
    sealer's cursor (including those held back behind an older open transaction), at
    most the cap."""

    head: int
    unsealed: int


async def sealing(conn: asyncpg.Connection | asyncpg.Pool, *, cap: int = UNSEALED_CAP) -> Sealing:
    row = await conn.fetchrow(_SEALING, cap)
    assert row is not None, "sealer_state has its one row from the first migration"
    return Sealing(head=row["head"], unsealed=row["unsealed"])
