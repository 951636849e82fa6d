"""``Projection.checksum``: one digest per table, in key order, so equal rows give equal digests."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from projections.base import Names
from tests.support.database import Database
from tests.support.sample_projection import NOTES

COUNTS = [("n:a", 1, 5, "x", 10), ("n:b", 2, 0, None, 11), ("n:c", 0, 7, None, 12)]


async def _fill(conn: asyncpg.Connection, names: Names, rows: Sequence[tuple[object, ...]]) -> None:
    for statement in NOTES.create_statements(names):
        await conn.execute(statement)
    await conn.executemany(
        f"INSERT INTO {names.note_counts} (stream_id, notes, total, last_text, last_position)"
        " VALUES ($1, $2, $3, $4, $5)",
        rows,
    )


async def test_equal_rows_inserted_in_another_order_have_equal_checksums(db: Database) -> None:
    # given the same rows written in two orders, and once with one value changed
    conn = await db.connect()
    forward, backward, changed = (NOTES.generation_names(g) for g in (1, 2, 3))
    await _fill(conn, forward, COUNTS)
    await _fill(conn, backward, COUNTS[::-1])
    await _fill(conn, changed, [*COUNTS[:2], ("n:c", 0, 8, None, 12)])

    # then the two orders digest alike, and a changed value digests differently
    digest = await NOTES.checksum(conn, forward)
    assert await NOTES.checksum(conn, backward) == digest
    assert await NOTES.checksum(conn, changed) != digest


async def test_a_checksum_has_one_digest_per_table_in_table_order(db: Database) -> None:
    # given the sample view's two tables, the first filled and the second empty
    conn = await db.connect()
    names = NOTES.generation_names(1)
    await _fill(conn, names, COUNTS)

    # then the digest of the empty table is md5 of nothing, after the first table's
    first, second = (await NOTES.checksum(conn, names)).split(":")
    assert second == await conn.fetchval("SELECT md5('')")
    assert first != second
