"""Tamper evidence: recompute both hash chains from storage and name the first break. I/O.

Two chains are checked in one consistent snapshot:

- per stream: positions run 1..n without holes, every envelope's header agrees with its
  row, every ``stream_hash`` equals ``H(0x01 || previous || H(0x00 || stored bytes))``, and
  the stream head (version, last hash) matches the last event exactly: events stopping
  short of it are a cut tail, events past it were written around the append path;
- the global log: positions run 1..n without holes, every row's event exists, every
  ``log_hash`` equals ``H(0x02 || previous || position || stream_hash)``, the head matches
  the sealer's cursor exactly (short of it: a cut tail; past it: entries the sealer never
  wrote), and every event the sealer passed is in the log.

The append path moves a stream head in the transaction that inserts its events, and the
sealer moves its cursor in the transaction that writes the log entries, so in one snapshot
any difference between a head and its chain, in either direction, is tampering.

The two together bind the exact bytes of every event to its place in the log, so a
flipped byte, a deleted row or two swapped rows is reported at the log position (or, for
an event not yet sealed, the stream position) where the chain first fails.

What the database holds alone cannot reveal a consistent truncation (tail rows deleted,
heads rewound) or a re-chained rewrite. Given signed checkpoints (``eventlog.checkpoints``)
and the public key, the log must also extend every checkpoint: reach its position with
the signed hash there. A checkpoint whose signature fails is reported, never trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import asyncpg
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from eventlog.checkpoints import Checkpoint, signature_holds
from events.envelope import ZERO_HASH, decode_envelope, log_link, stream_link

BreakKind = Literal[
    "bad_checkpoint",
    "beyond_head",
    "changed_bytes",
    "checkpoint_mismatch",
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


class VerifyReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    # omit_defaults: a report without checkpoints reads as it did before they existed.
    ok: bool
    events_checked: int
    streams_checked: int
    log_entries_checked: int
    head_position: int
    head_hash: str
    first_break: Break | None
    breaks: list[Break]
    checkpoints_checked: int = 0


Progress = Callable[[str, int], None]
_MAX_BREAKS = 100
_PROGRESS_EVERY = 10_000


async def verify(
    conn: asyncpg.Connection,
    *,
    progress: Progress | None = None,
    checkpoints: Sequence[Checkpoint] = (),
    public_key: Ed25519PublicKey | None = None,
) -> VerifyReport:
    """Check the whole store, and that the log extends every checkpoint signed by
    ``public_key``; ``progress(phase, rows_done)`` is called every 10k rows."""
    if checkpoints and public_key is None:
        raise ValueError("checkpoints are proof only with the public key that signed them")
    breaks: list[Break] = []
    anchors = _trusted(checkpoints, public_key, breaks)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        events, streams = await _check_streams(conn, breaks, progress)
        entries, head, head_hash = await _check_log(conn, breaks, progress, anchors)
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
        checkpoints_checked=len(checkpoints),
    )


def _order(b: Break) -> tuple[int, str, int]:
    return (b.log_position or 2**62, b.stream_id or "", b.stream_position or 0)


def _tick(progress: Progress | None, phase: str, count: int) -> None:
    if progress and count % _PROGRESS_EVERY == 0:
        progress(phase, count)


def _trusted(
    checkpoints: Sequence[Checkpoint], public_key: Ed25519PublicKey | None, breaks: list[Break]
) -> dict[int, Checkpoint]:
    """The checkpoints whose signature holds, by position; a break for each other one."""
    anchors: dict[int, Checkpoint] = {}
    for checkpoint in checkpoints:
        if public_key is not None and signature_holds(checkpoint, public_key):
            anchors[checkpoint.log_position] = checkpoint
        else:
            breaks.append(
                Break(
                    kind="bad_checkpoint",
                    log_position=checkpoint.log_position,
                    detail=f"the checkpoint of {checkpoint.time.isoformat()} is not signed by this"
                    f" public key (key id {checkpoint.key_id})",
                )
            )
    return anchors


# ------------------------------------------------------------------ per-stream chains


class _Stream:
    """One stream's chain as recomputed so far."""

    __slots__ = ("hash", "id", "position")

    def __init__(self, stream_id: str) -> None:
        self.id = stream_id
        self.position = 0
        self.hash = ZERO_HASH


async def _check_streams(
    conn: asyncpg.Connection, breaks: list[Break], progress: Progress | None
) -> tuple[int, int]:
    heads: dict[str, tuple[int, bytes]] = {
        r["stream_id"]: (r["version"], bytes(r["last_hash"]))
        for r in await conn.fetch("SELECT stream_id, version, last_hash FROM streams")
    }
    current: _Stream | None = None
    seen: set[str] = set()
    count = 0
    async for row in conn.cursor(
        "SELECT seq, event_id, stream_id, stream_position, event_type, envelope, stream_hash"
        " FROM events ORDER BY stream_id, stream_position",
        prefetch=2000,
    ):
        count += 1
        _tick(progress, "streams", count)
        if current is None or current.id != row["stream_id"]:
            if current is not None:
                breaks.extend(_stream_head_breaks(current, heads.get(current.id)))
            current = _Stream(row["stream_id"])
            seen.add(current.id)
        breaks.extend(_event_breaks(current, row))
    if current is not None:
        breaks.extend(_stream_head_breaks(current, heads.get(current.id)))
    breaks.extend(_emptied_streams(heads, seen))
    return count, len(heads)


def _event_breaks(stream: _Stream, row: asyncpg.Record) -> list[Break]:
    """Check one event against the chain so far, then move the chain on past it."""
    found: list[Break] = []
    stream_id, position = stream.id, row["stream_position"]
    if position != stream.position + 1:
        found.append(
            Break(
                kind="missing_event",
                stream_id=stream_id,
                stream_position=stream.position + 1,
                detail=f"stream position {stream.position + 1} is missing (next found: {position})",
            )
        )
    raw = bytes(row["envelope"])
    if stream_link(stream.hash, raw) != bytes(row["stream_hash"]):
        found.append(
            Break(
                kind="changed_bytes",
                stream_id=stream_id,
                stream_position=position,
                detail="the stored bytes do not hash to the recorded stream hash",
            )
        )
    elif (problem := _header_problem(raw, row)) is not None:
        kind: BreakKind = "reordered" if "position" in problem else "header_mismatch"
        found.append(
            Break(kind=kind, stream_id=stream_id, stream_position=position, detail=problem)
        )
    # Continue from the recorded hash so one bad event yields one break, not a cascade.
    stream.hash = bytes(row["stream_hash"])
    stream.position = position
    return found


def _stream_head_breaks(stream: _Stream, head: tuple[int, bytes] | None) -> list[Break]:
    """The head must name exactly the last event: fewer events is a cut tail, more is a forgery."""
    version, last_hash = head if head is not None else (0, ZERO_HASH)
    if stream.position < version:
        return [
            Break(
                kind="truncated_tail",
                stream_id=stream.id,
                stream_position=stream.position + 1,
                detail=f"the stream head says version {version}; events stop at {stream.position}",
            )
        ]
    if stream.position > version:
        return [
            Break(
                kind="beyond_head",
                stream_id=stream.id,
                stream_position=version + 1,
                detail=f"events run to position {stream.position} past the stream head's version {version}",
            )
        ]
    if stream.hash != last_hash:
        return [
            Break(
                kind="changed_bytes",
                stream_id=stream.id,
                stream_position=version,
                detail="the stream head's hash does not match its last event",
            )
        ]
    return []


def _emptied_streams(heads: dict[str, tuple[int, bytes]], seen: set[str]) -> list[Break]:
    return [
        Break(
            kind="truncated_tail",
            stream_id=stream_id,
            stream_position=1,
            detail=f"the stream head says version {version}; no events remain",
        )
        for stream_id, (version, _) in heads.items()
        if stream_id not in seen and version > 0
    ]


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


# ------------------------------------------------------------------ the global log


class _Log:
    """The global chain as recomputed so far."""

    __slots__ = ("count", "hash", "position")

    def __init__(self) -> None:
        self.count = 0
        self.position = 0
        self.hash = ZERO_HASH


async def _check_log(
    conn: asyncpg.Connection,
    breaks: list[Break],
    progress: Progress | None,
    anchors: dict[int, Checkpoint],
) -> tuple[int, int, bytes]:
    state = await conn.fetchrow(
        "SELECT last_log_position, last_tx_id, last_seq, last_log_hash FROM sealer_state WHERE id = 1"
    )
    assert state is not None
    log = _Log()
    async for row in conn.cursor(
        "SELECT l.log_position, l.seq, l.log_hash, l.stream_id, e.stream_hash, e.stream_id AS event_stream"
        " FROM event_log l LEFT JOIN events e ON e.seq = l.seq ORDER BY l.log_position",
        prefetch=2000,
    ):
        log.count += 1
        _tick(progress, "log", log.count)
        breaks.extend(_entry_breaks(log, row))
        if (anchor := anchors.get(log.position)) is not None:
            breaks.extend(_anchor_breaks(anchor, log))
    breaks.extend(_log_head_breaks(log, state["last_log_position"], bytes(state["last_log_hash"])))
    breaks.extend(_beyond_the_log(anchors, log))
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
    return log.count, log.position, log.hash


def _entry_breaks(log: _Log, row: asyncpg.Record) -> list[Break]:
    """Check one log entry against the chain so far, then move the chain on past it."""
    found: list[Break] = []
    position = row["log_position"]
    expected = log.position + 1
    if position != expected:
        found.append(
            Break(
                kind="missing_log_entry",
                log_position=expected,
                detail=f"log positions {expected}..{position - 1} are missing",
            )
        )
    if row["stream_hash"] is None:
        found.append(
            Break(
                kind="missing_event",
                log_position=position,
                stream_id=row["stream_id"],
                detail=f"the event sealed at position {position} is gone from the event table",
            )
        )
    elif log_link(log.hash, position, bytes(row["stream_hash"])) != bytes(row["log_hash"]):
        found.append(
            Break(
                kind="changed_bytes" if row["event_stream"] == row["stream_id"] else "reordered",
                log_position=position,
                stream_id=row["stream_id"],
                detail="the global chain does not link this entry to the one before it",
            )
        )
    log.hash = bytes(row["log_hash"])
    log.position = position
    return found


def _log_head_breaks(log: _Log, sealed: int, sealed_hash: bytes) -> list[Break]:
    """The sealer's cursor must name exactly the last entry, in both directions."""
    if log.position < sealed:
        return [
            Break(
                kind="truncated_tail",
                log_position=log.position + 1,
                detail=f"the sealer sealed up to {sealed}; the log stops at {log.position}",
            )
        ]
    if log.position > sealed:
        return [
            Break(
                kind="beyond_head",
                log_position=sealed + 1,
                detail=f"the log runs to {log.position} past the sealer's head {sealed}",
            )
        ]
    if log.hash != sealed_hash:
        return [
            Break(
                kind="changed_bytes",
                log_position=log.position,
                detail="the log head's hash does not match the sealer's record",
            )
        ]
    return []


def _anchor_breaks(anchor: Checkpoint, log: _Log) -> list[Break]:
    if log.hash.hex() == anchor.log_hash:
        return []
    return [
        Break(
            kind="checkpoint_mismatch",
            log_position=anchor.log_position,
            detail=f"the log hash here differs from the one signed at {anchor.time.isoformat()}:"
            " history up to this position was rewritten",
        )
    ]


def _beyond_the_log(anchors: dict[int, Checkpoint], log: _Log) -> list[Break]:
    """A signed checkpoint past the end of the log: its tail was cut (however consistently)."""
    furthest = max(anchors.values(), key=lambda a: a.log_position, default=None)
    if furthest is None or furthest.log_position <= log.position:
        return []
    return [
        Break(
            kind="truncated_tail",
            log_position=log.position + 1,
            detail=f"a checkpoint signed at {furthest.time.isoformat()} covers log position"
            f" {furthest.log_position}; the log stops at {log.position}",
        )
    ]


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
