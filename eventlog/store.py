"""The event store: optimistic, idempotent, hash-chained appends to streams. I/O: Postgres.

Guarantees of ``append`` (each proven by a test in tests/integration/test_store_*.py):

- all of a batch is recorded or none of it, at stream positions ``expected_version + 1..n``;
- of two appends at the same expected version exactly one wins; the loser gets
  ``ConcurrencyError`` carrying the actual version and has drawn no sequence number;
- re-sending the same event ids (a retry after a lost answer) records nothing and returns
  the first result; re-sending some of them in another batch is a ``DuplicateEventError``;
- each event's hash chains its exact stored bytes to the previous event of its stream;
- an append from a transaction older than the stream's last appender is retried, so
  per-stream order always equals the (tx_id, seq) order in which the sealer publishes;
- with ``guards={stream: version}`` the append commits only if each guard stream is still
  at that version when it commits (``StaleGuardError`` otherwise): a decision that read
  another stream (the registry policy) cannot land after that stream changed.

How a guard holds. A guard stream must be of a type in ``GUARDABLE_TYPES``. Every append
to such a stream takes an exclusive transaction-level advisory lock on it first; a guarded
append takes the same lock shared, then checks the version, then appends, all in one
transaction (outside a caller's transaction, in one statement: migration 0013). The two
exclude each other until commit, so a guarded append either sees the new version (and
fails) or commits before the guard stream's writer can start. Both
draw their xid only after taking the lock, so the sealer's (tx_id, seq) order agrees:
the log never shows a decision after the change it did not see. A lock is used rather
than a row lock because a guard stream may not exist yet (version 0).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from events.base import Event, utc
from events.codec import EventCodec
from events.envelope import ZERO_HASH, Envelope, decode_envelope, encode_envelope, stream_link
from events.errors import AlreadyExistsError, ConcurrencyError, ConflictError, ValidationError
from events.streams import BLOBSTORE_TYPE, POLICY_TYPE, stream_type

_RETRYABLE = {"40001", "40P01"}
_MAX_ATTEMPTS = 8

# Streams other decisions may be guarded by (see the module docstring): the policies, and
# the blob store's deletions (an upload or registration relying on a blob's bytes).
GUARDABLE_TYPES = frozenset({POLICY_TYPE, BLOBSTORE_TYPE})


class DuplicateEventError(ConflictError):
    """Some of the event ids were recorded before, but not as this exact batch."""

    code = "duplicate_event"


class StaleGuardError(ConcurrencyError):
    """A guard stream moved past the version the decision was made under: decide again
    with what it holds now (re-running the same command would repeat the stale decision)."""

    code = "stale_guard"


class Metadata(msgspec.Struct, frozen=True, kw_only=True):
    """Who acted and when; carried into every envelope of one append."""

    actor: str
    occurred_at: datetime
    correlation_id: UUID | None = None
    causation_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class AppendPart:
    """One command's share of a group append: its events, who/when, and its event ids
    (``None``: fresh ones)."""

    events: Sequence[Event]
    metadata: Metadata
    event_ids: Sequence[UUID] | None = None


class AppendResult(msgspec.Struct, frozen=True, kw_only=True):
    stream_id: str
    stream_version: int
    last_seq: int
    tx_id: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    envelope: Envelope
    raw: bytes

    @property
    def stream_position(self) -> int:
        return self.envelope.stream_position


class EventStore:
    """Appends and stream reads over a pool connected as the application role."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        codec: EventCodec,
        *,
        on_append: Callable[[AppendResult], None] | None = None,
    ) -> None:
        self.pool = pool
        self.codec = codec
        self._on_append = on_append
        # stream -> (version, hash of its last event), as this process last appended it:
        # lets an append chain its hashes here instead of in a plpgsql loop. A stale entry
        # costs nothing but that shortcut: the database checks it against the stream head.
        self._heads: OrderedDict[str, tuple[int, bytes]] = OrderedDict()

    def _data(self, event: Event) -> bytes:
        data = self.codec.encode(event)
        # Postgres text and jsonb cannot hold U+0000: one recorded NUL would stop every view
        # that copies the string. Refuse it here, where every path into the log passes.
        if b"\\u0000" in data and _has_nul(msgspec.json.decode(data)):
            raise ValidationError(
                event.event_type, "nul_character", "text may not contain the NUL character (U+0000)"
            )
        return data

    def envelopes(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[Event],
        metadata: Metadata,
        event_ids: Sequence[UUID],
    ) -> list[bytes]:
        occurred_at = utc(metadata.occurred_at)
        return [
            encode_envelope(
                Envelope(
                    event_id=event_id,
                    stream_id=stream_id,
                    stream_position=expected_version + i,
                    event_type=event.event_type,
                    schema_version=event.schema_version,
                    occurred_at=occurred_at,
                    actor=metadata.actor,
                    correlation_id=metadata.correlation_id,
                    causation_id=metadata.causation_id,
                    data=msgspec.Raw(self._data(event)),
                )
            )
            for i, (event_id, event) in enumerate(zip(event_ids, events, strict=True), start=1)
        ]

    async def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[Event],
        metadata: Metadata,
        *,
        event_ids: Sequence[UUID] | None = None,
        claim: Sequence[str] = (),
        release: Sequence[str] = (),
        guards: Mapping[str, int] | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> AppendResult:
        """Append ``events`` if the stream is at ``expected_version`` (0: must not exist).

        ``claim``/``release`` take or free unique keys (e.g. ``model-name:churn``) in the same
        transaction; a key held by another stream raises ``AlreadyExistsError``.
        ``guards`` maps streams of ``GUARDABLE_TYPES`` to the version each must still be at.
        With ``conn`` the caller's transaction holds the guard locks until it ends.
        """
        if not events:
            raise ValueError("an append needs at least one event")
        guards = _ordered_guards(stream_id, guards)
        ids = list(event_ids) if event_ids is not None else [uuid.uuid4() for _ in events]
        envelopes = self.envelopes(stream_id, expected_version, events, metadata, ids)
        row = await self._append_envelopes(
            stream_id, expected_version, ids, events, envelopes, claim, release, guards, conn
        )
        result = AppendResult(
            stream_id=stream_id,
            stream_version=row["stream_version"],
            last_seq=row["last_seq"],
            tx_id=row["tx_id"],
            replayed=row["replayed"],
        )
        if self._on_append is not None and conn is None:
            self._on_append(result)
        return result

    async def append_parts(
        self,
        stream_id: str,
        expected_version: int,
        parts: Sequence[AppendPart],
        *,
        claim: Sequence[str] = (),
        release: Sequence[str] = (),
        guards: Mapping[str, int] | None = None,
    ) -> list[AppendResult]:
        """Several commands' events, each part with its own metadata, appended in one
        transaction after ``expected_version`` (group commit): all land or none does. Each
        part's result names its own last event (stream version and seq), as if it had been
        appended alone right after the parts before it. A part's ``event_ids`` (an
        idempotency seed's) are recorded as given, so a re-sent part fails the whole
        append (unique event ids) and can be resolved alone."""
        if not parts or not all(part.events for part in parts):
            raise ValueError("an append of parts needs at least one event in every part")
        ordered = _ordered_guards(stream_id, guards)
        events: list[Event] = []
        ids: list[UUID] = []
        envelopes: list[bytes] = []
        lasts: list[int] = []
        for part in parts:
            part_ids = (
                list(part.event_ids)
                if part.event_ids is not None
                else [uuid.uuid4() for _ in part.events]
            )
            start = expected_version + len(events)
            envelopes += self.envelopes(stream_id, start, part.events, part.metadata, part_ids)
            events += part.events
            ids += part_ids
            lasts.append(start + len(part.events))
        row = await self._append_envelopes(
            stream_id, expected_version, ids, events, envelopes, claim, release, ordered, None
        )
        if row["replayed"]:
            # Every id was recorded before as this very batch: the parts' callers checked
            # for their seeds first, so this is not an answer any part can be given.
            raise DuplicateEventError(
                f"the events of this group on {stream_id} were recorded before"
            )
        seqs: dict[int, int] = {
            r["stream_position"]: r["seq"]
            for r in await self.pool.fetch(_SEQS_AT, stream_id, lasts)
        }
        results = [
            AppendResult(
                stream_id=stream_id,
                stream_version=last,
                last_seq=seqs[last],
                tx_id=row["tx_id"],
                replayed=False,
            )
            for last in lasts
        ]
        if self._on_append is not None:
            self._on_append(results[-1])
        return results

    async def _append_envelopes(
        self,
        stream_id: str,
        expected_version: int,
        ids: list[UUID],
        events: Sequence[Event],
        envelopes: list[bytes],
        claim: Sequence[str],
        release: Sequence[str],
        guards: dict[str, int],
        conn: asyncpg.Connection | None,
    ) -> asyncpg.Record:
        """One append statement, retried on serialization failures; a re-sent event id is
        resolved against what is recorded."""
        prev_hash, hashes = self._chain(stream_id, expected_version, envelopes)
        args = (
            stream_id,
            stream_type(stream_id),
            expected_version,
            ids,
            [e.event_type for e in events],
            envelopes,
            list(claim) or None,
            list(release) or None,
            prev_hash,
            hashes,
        )
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                row = await self._write(args, guards, conn)
                break
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != "events_event_id_key":
                    raise
                # Re-sent event ids whose version check passed (the command was decided
                # again after a lost answer): resolve against what is recorded.
                try:
                    row = await self.pool.fetchrow(_CONFLICT, stream_id, expected_version, ids)
                except asyncpg.PostgresError as resolved:
                    _raise_domain_error(resolved, stream_id, expected_version)
                    raise
                break
            except asyncpg.PostgresError as exc:
                self._heads.pop(stream_id, None)
                _raise_domain_error(exc, stream_id, expected_version)
                if exc.sqlstate not in _RETRYABLE or attempt == _MAX_ATTEMPTS or conn is not None:
                    raise
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))  # noqa: S311 jitter, not crypto
        assert row is not None
        if row["last_hash"] is not None and not row["replayed"]:
            self._heads[stream_id] = (row["stream_version"], bytes(row["last_hash"]))
            self._heads.move_to_end(stream_id)
            if len(self._heads) > _HEADS_CACHED:
                self._heads.popitem(last=False)
        return row

    async def _write(
        self, args: tuple[Any, ...], guards: dict[str, int], conn: asyncpg.Connection | None
    ) -> asyncpg.Record | None:
        """One try of the append: a single statement, unless guard locks are involved."""
        exclusive = stream_type(args[0]) in GUARDABLE_TYPES
        if conn is not None:
            return await _locked_append(conn, args, guards, exclusive=exclusive)
        if not guards and not exclusive:
            return await self.pool.fetchrow(_APPEND, *args)
        # The locks, the guards' checks and the append in one statement (migration 0013).
        try:
            return await self.pool.fetchrow(
                _APPEND_GUARDED, *args, exclusive, list(guards), list(guards.values())
            )
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == "MR412" and exc.detail:
                expected, actual, guard = exc.detail.split("/", 2)
                raise StaleGuardError(guard, int(expected), int(actual)) from exc
            raise

    async def guards_hold(self, guards: Mapping[str, int]) -> bool:
        """Whether each guard stream is still at its version, checked under its lock (so
        after any append that holds it has committed): for a decision that recorded
        nothing and must still know nothing it relied on moved."""
        async with self.pool.acquire() as conn, conn.transaction():
            for guard, expected in _ordered_guards("", guards).items():
                await conn.execute(_LOCK_SHARED, guard)
                if await conn.fetchval(_GUARD_VERSION, guard) != expected:
                    return False
        return True

    @staticmethod
    async def begin_append(conn: asyncpg.Connection) -> None:
        """Announce an append in ``conn``'s open transaction, before the transaction writes
        anything else (``append`` announces itself, but a row written before it would have
        drawn the transaction's id unannounced; see eventlog.sealer)."""
        await conn.execute("SELECT begin_append()")

    def committed(self, result: AppendResult) -> None:
        """Report an append made on a caller's connection (``conn=``) once the caller's
        transaction committed, as ``append`` does itself otherwise (it wakes the sealer)."""
        if self._on_append is not None:
            self._on_append(result)

    def _chain(
        self, stream_id: str, expected_version: int, envelopes: Sequence[bytes]
    ) -> tuple[bytes | None, list[bytes] | None]:
        """The per-stream hashes of ``envelopes``, if this process knows the head they follow."""
        if expected_version == 0:
            previous = ZERO_HASH
        else:
            known = self._heads.get(stream_id)
            if known is None or known[0] != expected_version:
                return None, None
            previous = known[1]
        start, hashes = previous, []
        for raw in envelopes:
            previous = stream_link(previous, raw)
            hashes.append(previous)
        return start, hashes

    async def read_stream(
        self, stream_id: str, *, after: int = 0, up_to: int | None = None
    ) -> list[StoredEvent]:
        """Events of one stream with position in (after, up_to], in stream order."""
        rows = await self.pool.fetch(
            "SELECT seq, envelope FROM events WHERE stream_id = $1 AND stream_position > $2"
            " AND stream_position <= $3 ORDER BY stream_position",
            stream_id,
            after,
            2**62 if up_to is None else up_to,
        )
        return [StoredEvent(r["seq"], decode_envelope(r["envelope"]), r["envelope"]) for r in rows]

    async def stream_version(self, stream_id: str) -> int:
        value: int | None = await self.pool.fetchval(
            "SELECT version FROM streams WHERE stream_id = $1", stream_id
        )
        return value or 0

    async def stream_ids(self, kind: str) -> list[str]:
        """Every stream of one type (``events.streams``' ``*_TYPE``), oldest first."""
        rows = await self.pool.fetch(
            "SELECT stream_id FROM streams WHERE stream_type = $1 ORDER BY created_at, stream_id",
            kind,
        )
        return [r["stream_id"] for r in rows]

    async def owner_of(self, key: str) -> str | None:
        """The stream holding a unique key, if any."""
        value: str | None = await self.pool.fetchval(
            "SELECT stream_id FROM unique_keys WHERE key = $1 AND stream_id IS NOT NULL", key
        )
        return value


_APPEND = "SELECT * FROM append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_APPEND_GUARDED = (
    "SELECT * FROM append_events_guarded($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
)
# Transaction-level advisory locks on a guardable stream, in their own two-key space
# (leadership uses single bigint keys), per schema so registries sharing a cluster never
# contend.
_LOCK_KEY = "hashtext('modelreg-guard:' || current_schema()), hashtext($1)"
_LOCK_EXCLUSIVE = f"SELECT pg_advisory_xact_lock({_LOCK_KEY})"
_LOCK_SHARED = f"SELECT pg_advisory_xact_lock_shared({_LOCK_KEY})"
# A statement of its own: a statement's snapshot is taken when it starts, so a version read
# in the statement that waited for the lock would miss the change it waited for.
_GUARD_VERSION = "SELECT coalesce((SELECT version FROM streams WHERE stream_id = $1), 0)"


def _ordered_guards(stream_id: str, guards: Mapping[str, int] | None) -> dict[str, int]:
    """The guards in one lock order (so two guarded appends never deadlock), checked."""
    for guard in guards or {}:
        if stream_type(guard) not in GUARDABLE_TYPES or guard == stream_id:
            raise ValueError(f"{guard} cannot guard an append to {stream_id}")
    return dict(sorted((guards or {}).items()))


async def _locked_append(
    conn: asyncpg.Connection | PoolConnectionProxy[asyncpg.Record],
    args: tuple[Any, ...],
    guards: Mapping[str, int],
    *,
    exclusive: bool,
) -> asyncpg.Record | None:
    """The append inside the caller's transaction, after the guard locks and checks.

    Nothing here writes before the locks are held, so the transaction's xid is drawn
    after them (see the module docstring).
    """
    if exclusive:
        await conn.execute(_LOCK_EXCLUSIVE, args[0])
    for guard, expected in guards.items():
        await conn.execute(_LOCK_SHARED, guard)
        actual: int = await conn.fetchval(_GUARD_VERSION, guard)
        if actual != expected:
            raise StaleGuardError(guard, expected, actual)
    return await conn.fetchrow(_APPEND, *args)


_HEADS_CACHED = 50_000
_CONFLICT = "SELECT * FROM append_conflict($1, $2, $3)"
_SEQS_AT = (
    "SELECT stream_position, seq FROM events"
    " WHERE stream_id = $1 AND stream_position = ANY ($2::bigint[])"
)


def _raise_domain_error(exc: asyncpg.PostgresError, stream_id: str, expected: int) -> None:
    state = exc.sqlstate
    if state == "MR409":
        raise ConcurrencyError(stream_id, expected, int(exc.detail or 0)) from exc
    if state == "MR422":
        raise DuplicateEventError(
            "some of these event ids are recorded already, not as this batch", stream_id=stream_id
        ) from exc
    if state == "MR423":
        raise AlreadyExistsError(f"{exc.detail} is taken", key=exc.detail) from exc


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
