"""Time travel: the views as they stood at a past log position, by folding the log again.

The fold uses each projection's own ``apply`` into scratch tables of the same shape, so
"as of" answers come from exactly the code that built the live views. Folding one model
touches only that model's streams; folding the whole registry reads the log up to the
position.

``folded_views`` is what serving code uses: scratch tables named
``<table>__t<time><random>``, filled batch by batch in short transactions and dropped on
exit. Why not one transaction: creating tables gives a transaction an xid, and the sealer
seals only transactions older than the oldest open xid in the whole cluster, so a long
fold in one transaction would hold back sealing for every writer for as long as it ran.
The tables are session TEMP tables (they outlive the short transactions, not the
session): unlike UNLOGGED ones they cost no immediate fsync per table and index at
creation, which made that DDL most of a read's time, and a session that dies takes them
with it. They are created, and dropped, in one transaction each, without waiting for the
WAL flush: nothing in them is meant to survive a crash. ``fold_as_of`` (temporary tables in the caller's transaction) is
kept for tests and tools that fold small histories.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg

from eventlog.log import position_at, read_log
from projections.base import Names, Projection
from projections.snapshots import nearest_snapshots, restore_snapshot


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


log = logging.getLogger(__name__)
# <table>__t + 6 base-36 digits of the creation time + 3 random ones.
_SCRATCH = re.compile(r"__t([0-9a-z]{6})[0-9a-z]{3}$")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
SCRATCH_MAX_AGE = 3600.0


@asynccontextmanager
async def folded_views(
    conn: asyncpg.Connection,
    projections: Sequence[Projection],
    position: int,
    *,
    model_id: str | None = None,
    batch: int = 2000,
    snapshots: bool = False,
    lookup_indexes: bool = True,
) -> AsyncIterator[dict[str, Names]]:
    """Fold ``projections`` up to ``position`` into scratch tables and yield their names,
    per projection; the tables are dropped on exit. Must not run inside a transaction.

    With ``snapshots`` (whole-registry folds only), each projection starts from its newest
    snapshot at or below ``position`` (``projections.snapshots``) and folds only the
    events after it; without one it starts from 0, as without ``snapshots``.
    ``lookup_indexes`` False: tables only copied out, never searched (``Projection.
    create_statements``)."""
    if conn.is_in_transaction():
        raise RuntimeError("folded_views runs its own short transactions; call it outside one")
    if snapshots and model_id is not None:
        raise ValueError("snapshots hold the whole registry; a model fold reads its own streams")
    suffix = (
        "__t" + base36(int(time.time()), 6) + "".join(secrets.choice(_DIGITS) for _ in range(3))
    )
    names = {p.name: Names({t.name: t.name + suffix for t in p.tables}) for p in projections}
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = off")
            for projection in projections:
                for statement in projection.create_statements(
                    names[projection.name],
                    temporary=True,
                    on_commit_drop=False,
                    lookup_indexes=lookup_indexes,
                ):
                    await conn.execute(statement)
        starts = dict.fromkeys(names, 0)
        if snapshots:
            starts = await nearest_snapshots(conn, projections, position)
            async with conn.transaction():
                for projection in projections:
                    if starts[projection.name]:
                        await restore_snapshot(
                            conn, projection, names[projection.name], starts[projection.name]
                        )
        await fold_more(conn, projections, names, starts, position, model_id=model_id, batch=batch)
        yield names
    finally:
        tables = [table for table_names in names.values() for table in table_names.values()]
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = off")
            await conn.execute(f"DROP TABLE IF EXISTS {', '.join(tables)}")


async def fold_more(
    conn: asyncpg.Connection,
    projections: Sequence[Projection],
    names: Mapping[str, Names],
    starts: Mapping[str, int],
    position: int,
    *,
    model_id: str | None = None,
    batch: int = 2000,
) -> None:
    """Fold the events after ``starts[projection]`` up to ``position`` into each
    projection's tables (``names``), in short transactions of ``batch`` events."""
    after = min(starts.values(), default=position)
    while after < position:
        events = await read_log(conn, after, batch, up_to=position, model_id=model_id)
        async with conn.transaction():
            for projection in projections:
                start = starts[projection.name]
                handled = [
                    e
                    for e in events
                    if e.event_type in projection.handles and e.log_position > start
                ]
                if handled:
                    await projection.apply(conn, names[projection.name], handled)
        if len(events) < batch:
            return
        after = events[-1].log_position


async def drop_stale_scratch_tables(
    conn: asyncpg.Connection, max_age: float = SCRATCH_MAX_AGE
) -> int:
    """Drop scratch tables a crashed fold left behind (older than ``max_age`` seconds): the
    UNLOGGED ones of earlier releases; temporary ones go with their session."""
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE '%\\_\\_t%'"
    )
    now = time.time()
    dropped = 0
    for row in rows:
        match = _SCRATCH.search(row["tablename"])
        if match and now - int(match.group(1), 36) > max_age:
            await conn.execute(f'DROP TABLE IF EXISTS "{row["tablename"]}"')
            dropped += 1
    if dropped:
        log.info("dropped %d stale time-travel scratch table(s)", dropped)
    return dropped


def base36(value: int, width: int) -> str:
    digits = ""
    while value:
        value, digit = divmod(value, 36)
        digits = _DIGITS[digit] + digits
    return digits.rjust(width, "0")[-width:]
