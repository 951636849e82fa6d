"""Time travel: the views as they stood at a past log position, by folding the log again.

The fold uses each projection's own ``apply`` into temporary tables of the same shape,
inside the caller's transaction (they vanish at its end), so "as of" answers come from
exactly the code that built the live views. Folding one model touches only that model's
streams; folding the whole registry reads the log up to the position.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from projections.base import Names, Projection
from projections.log import position_at, read_log


async def fold_as_of(
    conn: asyncpg.Connection,
    projections: Sequence[Projection],
    position: int,
    *,
    model_id: str | None = None,
    batch: int = 5000,
) -> dict[str, Names]:
    """Fill temp tables for ``projections`` from the log up to ``position``; must run
    inside a transaction. Returns the table names to query, per projection."""
    if not conn.is_in_transaction():
        raise RuntimeError("fold_as_of needs a transaction: its tables live until it ends")
    names: dict[str, Names] = {}
    for projection in projections:
        temp = projection.temp_names()
        for statement in projection.create_statements(temp, temporary=True):
            await conn.execute(statement)
        names[projection.name] = temp
    after = 0
    while True:
        events = await read_log(conn, after, batch, up_to=position, model_id=model_id)
        for projection in projections:
            handled = [e for e in events if e.event_type in projection.handles]
            if handled:
                await projection.apply(conn, names[projection.name], handled)
        if len(events) < batch:
            return names
        after = events[-1].log_position


async def resolve_as_of(conn: asyncpg.Connection | asyncpg.Pool, as_of: int | datetime) -> int:
    """A log position, or the last position sealed at or before a time."""
    if isinstance(as_of, datetime):
        return await position_at(conn, as_of)
    return as_of
