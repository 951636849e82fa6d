"""Tamper evidence: recompute both hash chains from storage and name the first break. I/O.

Two chains are checked in one consistent snapshot:

- per stream: positions run 1..n without holes, every envelope's header agrees with its
  row, every ``stream_hash`` equals ``H(0x01 || previous || H(0x00 || stored bytes))``, and
  the stream head (version, last hash) matches the last event, which catches a cut tail;
- the global log: positions run 1..n without holes, every row's event exists, every
  ``log_hash`` equals ``H(0x02 || previous || position || stream_hash)``, the head matches
  the sealer's cursor, and every event the sealer passed is in the log.

The two together bind the exact bytes of every event to its place in the log, so a
flipped byte, a deleted row or two swapped rows is reported at the log position (or, for
an event not yet sealed, the stream position) where the chain first fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import asyncpg
import msgspec

from events.envelope import ZERO_HASH, decode_envelope, log_link, stream_link

BreakKind = Literal[
    "changed_bytes",
    "header_mismatch",
    "missing_event",
    "missing_log_entry",
    "reordered",
    "truncated_tail",
    "unsealed_gap",
]


class Break(msgspec.Struct, frozen=True, kw_only=True):
    kind: BreakKind
    detail: str
    log_position: int | None = None
    stream_id: str | None = None
    stream_position: int | None = None


class VerifyReport(msgspec.Struct, kw_only=True):
    ok: bool
    events_checked: int
    streams_checked: int
    log_entries_checked: int
    head_position: int
    head_hash: str
    first_break: Break | None
    breaks: list[Break]


Progress = Callable[[str, int], None]
_MAX_BREAKS = 100


async def verify(conn: asyncpg.Connection, *, progress: Progress | None = None) -> VerifyReport:
    """Check the whole store; ``progress(phase, rows_done)`` is called every 10k rows."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        breaks: list[Break] = []
        events, streams = await _check_streams(conn, breaks, progress)
        entries, head, head_hash = await _check_log(conn, breaks, progress)
        await _place_in_log(conn, breaks)
    breaks.sort(key=_order)
    return VerifyReport(
        ok=not breaks,
        events_checked=events,
        streams_checked=streams,
        log_entries_checked=entries,
        head_position=head,
        head_hash=head_hash.hex(),
        first_break=breaks[0] if breaks else None,
        breaks=breaks[:_MAX_BREAKS],
    )


def _order(b: Break) -> tuple[int, str, int]:
    return (b.log_position or 2**62, b.stream_id or "", b.stream_position or 0)


class _Stream:
    __slots__ = ("hash", "id", "position")

    def __init__(self, stream_id: str) -> None:
        self.id = stream_id
        self.position = 0
        self.hash = ZERO_HASH


async def _check_streams(
    conn: asyncpg.Connection, breaks: list[Break], progress: Progress | None
) -> tuple[int, int]:
    heads = {
        r["stream_id"]: (r["version"], bytes(r["last_hash"]))
        for r in await conn.fetch("SELECT stream_id, version, last_hash FROM streams")
    }
    seen: set[str] = set()
    current: _Stream | None = None
    count = 0

    def close(stream: _Stream) -> None:
        version, last_hash = heads.get(stream.id, (0, ZERO_HASH))
        if stream.position < version:
            breaks.append(
                Break(
                    kind="truncated_tail",
                    stream_id=stream.id,
                    stream_position=stream.position + 1,
                    detail=f"the stream head says version {version}; events stop at {stream.position}",
                )
            )
        elif stream.position == version and stream.hash != last_hash:
            breaks.append(
                Break(
                    kind="changed_bytes",
                    stream_id=stream.id,
                    stream_position=version,
                    detail="the stream head's hash does not match its last event",
                )
            )

    async for row in conn.cursor(
        "SELECT seq, event_id, stream_id, stream_position, event_type, envelope, stream_hash"
        " FROM events ORDER BY stream_id, stream_position",
        prefetch=2000,
    ):
        count += 1
        if progress and count % 10_000 == 0:
            progress("streams", count)
        stream_id, position = row["stream_id"], row["stream_position"]
        if current is None or current.id != stream_id:
            if current is not None:
                close(current)
            current = _Stream(stream_id)
            seen.add(stream_id)
        if position != current.position + 1:
            breaks.append(
                Break(
                    kind="missing_event",
                    stream_id=stream_id,
                    stream_position=current.position + 1,
                    detail=f"stream position {current.position + 1} is missing (next found: {position})",
                )
            )
        raw = bytes(row["envelope"])
        expected = stream_link(current.hash, raw)
        if expected != bytes(row["stream_hash"]):
            breaks.append(
                Break(
                    kind="changed_bytes",
                    stream_id=stream_id,
                    stream_position=position,
                    detail="the stored bytes do not hash to the recorded stream hash",
                )
            )
        else:
            problem = _header_problem(raw, row)
            if problem:
                kind: BreakKind = "reordered" if "position" in problem else "header_mismatch"
                breaks.append(
                    Break(kind=kind, stream_id=stream_id, stream_position=position, detail=problem)
                )
        # Continue from the recorded hash so one bad event yields one break, not a cascade.
        current.hash = bytes(row["stream_hash"])
        current.position = position
    if current is not None:
        close(current)
    for stream_id, (version, _) in heads.items():
        if stream_id not in seen and version > 0:
            breaks.append(
                Break(
                    kind="truncated_tail",
                    stream_id=stream_id,
                    stream_position=1,
                    detail=f"the stream head says version {version}; no events remain",
                )
            )
    return count, len(heads)


def _header_problem(raw: bytes, row: asyncpg.Record) -> str | None:
    try:
        envelope = decode_envelope(raw)
    except msgspec.DecodeError as exc:
        return f"the envelope does not decode: {exc}"
    if envelope.stream_position != row["stream_position"]:
        return f"the envelope says position {envelope.stream_position}, the row {row['stream_position']}"
    if envelope.stream_id != row["stream_id"] or envelope.event_id != row["event_id"]:
        return "the envelope names another stream or event id than its row"
    if envelope.event_type != row["event_type"]:
        return "the envelope names another event type than its row"
    return None


async def _check_log(
    conn: asyncpg.Connection, breaks: list[Break], progress: Progress | None
) -> tuple[int, int, bytes]:
    state = await conn.fetchrow(
        "SELECT last_log_position, last_tx_id, last_seq, last_log_hash FROM sealer_state WHERE id = 1"
    )
    assert state is not None
    previous = ZERO_HASH
    expected_position = 1
    count = 0
    async for row in conn.cursor(
        "SELECT l.log_position, l.seq, l.log_hash, l.stream_id, e.stream_hash, e.stream_id AS event_stream"
        " FROM event_log l LEFT JOIN events e ON e.seq = l.seq ORDER BY l.log_position",
        prefetch=2000,
    ):
        count += 1
        if progress and count % 10_000 == 0:
            progress("log", count)
        position = row["log_position"]
        if position != expected_position:
            breaks.append(
                Break(
                    kind="missing_log_entry",
                    log_position=expected_position,
                    detail=f"log positions {expected_position}..{position - 1} are missing",
                )
            )
        if row["stream_hash"] is None:
            breaks.append(
                Break(
                    kind="missing_event",
                    log_position=position,
                    stream_id=row["stream_id"],
                    detail=f"the event sealed at position {position} is gone from the event table",
                )
            )
        elif log_link(previous, position, bytes(row["stream_hash"])) != bytes(row["log_hash"]):
            breaks.append(
                Break(
                    kind="changed_bytes"
                    if row["event_stream"] == row["stream_id"]
                    else "reordered",
                    log_position=position,
                    stream_id=row["stream_id"],
                    detail="the global chain does not link this entry to the one before it",
                )
            )
        previous = bytes(row["log_hash"])
        expected_position = position + 1
    head = expected_position - 1
    if head < state["last_log_position"]:
        breaks.append(
            Break(
                kind="truncated_tail",
                log_position=head + 1,
                detail=f"the sealer sealed up to {state['last_log_position']}; the log stops at {head}",
            )
        )
    elif head == state["last_log_position"] and previous != bytes(state["last_log_hash"]):
        breaks.append(
            Break(
                kind="changed_bytes",
                log_position=head,
                detail="the log head's hash does not match the sealer's record",
            )
        )
    unlogged = await conn.fetchval(
        "SELECT count(*) FROM events e WHERE (e.tx_id, e.seq) <= ($1::xid8, $2::bigint)"
        " AND NOT EXISTS (SELECT 1 FROM event_log l WHERE l.seq = e.seq)",
        state["last_tx_id"],
        state["last_seq"],
    )
    if unlogged:
        breaks.append(
            Break(
                kind="unsealed_gap",
                detail=f"{unlogged} event(s) the sealer passed are not in the log",
            )
        )
    return count, head, previous


async def _place_in_log(conn: asyncpg.Connection, breaks: list[Break]) -> None:
    """Give stream-level breaks the log position of their event, where it was sealed."""
    for i, b in enumerate(breaks):
        if b.log_position is None and b.stream_id is not None and b.stream_position is not None:
            position = await conn.fetchval(
                "SELECT l.log_position FROM events e JOIN event_log l ON l.seq = e.seq"
                " WHERE e.stream_id = $1 AND e.stream_position = $2",
                b.stream_id,
                b.stream_position,
            )
            if position is not None:
                breaks[i] = msgspec.structs.replace(b, log_position=position)
