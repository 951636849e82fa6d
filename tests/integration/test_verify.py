"""Tamper evidence: verify names the first position where the chains break.

The tampering is done as the owner with triggers switched off (session_replication_role),
which is what a DBA with full access could do; the chains are what catches it.
"""

from __future__ import annotations

import asyncpg
import pytest

from eventlog.sealer import Sealer
from eventlog.store import EventStore
from eventlog.verify import VerifyReport, verify
from tests.support.database import Database
from tests.support.sample_events import CODEC, append_notes


@pytest.fixture
async def sealed(db: Database) -> Database:
    """Streams a (5 events) and b (3 events), interleaved, all sealed: 8 log positions."""
    store = EventStore(db.pool, CODEC)
    for i in range(5):
        await append_notes(store, "v:a", i, f"a{i + 1}")
        if i < 3:
            await append_notes(store, "v:b", i, f"b{i + 1}")
    conn = await db.connect()
    assert await Sealer(db.connect, db.schema).seal_all(conn) == 8
    return db


async def tamper(db: Database, *statements: str) -> None:
    admin = await db.admin()
    async with admin.transaction():
        await admin.execute("SET LOCAL session_replication_role = replica")
        for sql in statements:
            await admin.execute(sql)


async def position_of(db: Database, stream_id: str, stream_position: int) -> int:
    value: int = await db.pool.fetchval(
        "SELECT l.log_position FROM event_log l JOIN events e USING (seq) WHERE e.stream_id = $1 AND e.stream_position = $2",
        stream_id,
        stream_position,
    )
    return value


async def run_verify(db: Database) -> VerifyReport:
    conn: asyncpg.Connection = await db.connect()
    return await verify(conn)


async def test_an_untouched_store_verifies(sealed: Database) -> None:
    report = await run_verify(sealed)
    assert report.ok and report.first_break is None
    assert (
        report.events_checked,
        report.streams_checked,
        report.log_entries_checked,
        report.head_position,
    ) == (8, 2, 8, 8)


async def test_a_flipped_byte_is_named_at_its_position(sealed: Database) -> None:
    target = await position_of(sealed, "v:a", 3)
    await tamper(
        sealed,
        "UPDATE events SET envelope = overlay(envelope PLACING '\\x5a'::bytea FROM length(envelope) - 3 FOR 1)"
        " WHERE stream_id = 'v:a' AND stream_position = 3",
    )
    report = await run_verify(sealed)
    assert not report.ok and report.first_break is not None
    assert (report.first_break.kind, report.first_break.log_position) == ("changed_bytes", target)
    assert (report.first_break.stream_id, report.first_break.stream_position) == ("v:a", 3)


async def test_a_deleted_middle_event_is_named_at_its_position(sealed: Database) -> None:
    target = await position_of(sealed, "v:b", 2)
    await tamper(sealed, "DELETE FROM events WHERE stream_id = 'v:b' AND stream_position = 2")
    report = await run_verify(sealed)
    assert report.first_break is not None
    assert (report.first_break.kind, report.first_break.log_position) == ("missing_event", target)


async def test_a_deleted_stream_tail_is_named_at_its_position(sealed: Database) -> None:
    target = await position_of(sealed, "v:a", 4)
    await tamper(sealed, "DELETE FROM events WHERE stream_id = 'v:a' AND stream_position >= 4")
    report = await run_verify(sealed)
    assert report.first_break is not None
    assert (report.first_break.kind, report.first_break.log_position) == ("missing_event", target)
    assert any(
        b.kind == "truncated_tail" and b.stream_id == "v:a" and b.stream_position == 4
        for b in report.breaks
    )


async def test_a_cut_tail_is_caught_by_the_stream_head_even_before_sealing(db: Database) -> None:
    store = EventStore(db.pool, CODEC)
    await append_notes(store, "v:u", 0, "u1", "u2", "u3")
    await tamper(db, "DELETE FROM events WHERE stream_id = 'v:u' AND stream_position = 3")
    report = await run_verify(db)
    assert report.first_break is not None
    assert (
        report.first_break.kind,
        report.first_break.stream_id,
        report.first_break.stream_position,
    ) == (
        "truncated_tail",
        "v:u",
        3,
    )


async def test_two_swapped_events_are_named_at_the_first(sealed: Database) -> None:
    target = await position_of(sealed, "v:a", 2)
    await tamper(
        sealed,
        "CREATE TEMP TABLE pair AS SELECT stream_position, envelope, stream_hash FROM events WHERE stream_id = 'v:a' AND stream_position IN (2, 3)",
        "UPDATE events e SET envelope = p.envelope, stream_hash = p.stream_hash FROM pair p"
        " WHERE e.stream_id = 'v:a' AND e.stream_position = 5 - p.stream_position",
    )
    report = await run_verify(sealed)
    assert report.first_break is not None
    assert report.first_break.log_position == target
    assert report.first_break.kind in {"changed_bytes", "reordered"}


async def test_two_swapped_log_entries_are_named_at_the_first(sealed: Database) -> None:
    await tamper(
        sealed,
        "CREATE TEMP TABLE pair AS SELECT log_position, seq FROM event_log WHERE log_position IN (4, 5)",
        "UPDATE event_log l SET seq = -p.seq FROM pair p WHERE l.log_position = p.log_position",
        "UPDATE event_log l SET seq = p.seq FROM pair p WHERE l.log_position = 9 - p.log_position",
    )
    report = await run_verify(sealed)
    assert report.first_break is not None
    assert report.first_break.log_position == 4


async def test_a_deleted_log_entry_is_named_at_its_position(sealed: Database) -> None:
    await tamper(sealed, "DELETE FROM event_log WHERE log_position = 6")
    report = await run_verify(sealed)
    assert report.first_break is not None
    assert (report.first_break.kind, report.first_break.log_position) == ("missing_log_entry", 6)


async def test_a_cut_log_tail_is_caught_by_the_sealer_head(sealed: Database) -> None:
    await tamper(sealed, "DELETE FROM event_log WHERE log_position >= 7")
    report = await run_verify(sealed)
    assert report.first_break is not None
    assert (report.first_break.kind, report.first_break.log_position) == ("truncated_tail", 7)


async def rewind_heads(
    db: Database, stream_id: str, version: int, log_position: int | None = None
) -> None:
    """Move a stream head (and the sealer's cursor) back, leaving the events past them in
    place: what events written around the append path and the sealer look like."""
    statements = [
        f"UPDATE streams SET version = {version}, last_hash = (SELECT stream_hash FROM events"
        f" WHERE stream_id = '{stream_id}' AND stream_position = {version}) WHERE stream_id = '{stream_id}'"
    ]
    if log_position is not None:
        statements.append(
            f"UPDATE sealer_state SET last_log_position = {log_position}, last_log_hash ="
            f" (SELECT log_hash FROM event_log WHERE log_position = {log_position})"
        )
    await tamper(db, *statements)


async def test_a_log_entry_past_the_sealer_head_is_named(sealed: Database) -> None:
    # given a ninth event sealed, then the sealer's cursor and the stream head set back
    store = EventStore(sealed.pool, CODEC)
    await append_notes(store, "v:a", 5, "forged")
    assert await Sealer(sealed.connect, sealed.schema).seal_all(await sealed.connect()) == 1
    await rewind_heads(sealed, "v:a", 5, 8)
    # when the store is verified
    report = await run_verify(sealed)
    # then the forged entry is named past the sealer's head, and past the stream head
    assert not report.ok and report.first_break is not None
    assert (report.first_break.kind, report.first_break.log_position) == ("beyond_head", 9)
    assert any(
        b.kind == "beyond_head" and b.stream_id == "v:a" and b.stream_position == 6
        for b in report.breaks
    )


async def test_an_event_past_its_stream_head_is_named_before_sealing(db: Database) -> None:
    # given a stream of three events whose head is set back to version 2
    store = EventStore(db.pool, CODEC)
    await append_notes(store, "v:u", 0, "u1", "u2", "u3")
    await rewind_heads(db, "v:u", 2)
    # when the store is verified
    report = await run_verify(db)
    # then the third event is named past the stream head
    assert report.first_break is not None
    assert (
        report.first_break.kind,
        report.first_break.stream_id,
        report.first_break.stream_position,
    ) == ("beyond_head", "v:u", 3)
