"""The sealer: moves events of finished transactions into the contiguous global log. I/O.

Why a sealer: a sequence value is taken at insert but the row becomes visible at commit,
so a reader tailing ``seq > last`` would silently skip an event whose transaction commits
late. The sealer reads only rows of transactions below a horizon under which every
appender has ended (so that set can never grow), in (tx_id, seq) order, numbers them
contiguously, extends the global hash chain and NOTIFYs. Rolled-back rows never appear, so
no gap can stall it; an open append only delays what comes after its xid, never loses it.

The horizon (migration 0012). Every appending transaction takes the schema's appender lock
(shared, to its end) before it has a transaction id, then draws one; a statement trigger
refuses event rows from a transaction that did not. Statement one takes a snapshot S and
then one consistent copy of the lock table, and the horizon H is the least of S's xmax
and the ids of the lock's holders. An appender with an id below H got it before S, so it
held the lock from before S; had it still been running during the copy, its id would be
in it and H would not be above it. So every appender below H had ended before statement
two, whose snapshot (taken later) therefore sees all of their rows or, rolled back, none.
A holder whose id the copy does not show yet (between lock and id) makes H fall back to
S's xmin, the old rule. Transactions that append nothing (a projection's batch, a job in
another database, a session idle in a transaction) no longer hold anything back.

One sealer is active per schema (``eventlog.leadership``); others wait as hot standbys.
The cursor update in ``seal_batch`` is a compare-and-set, so even two sealers that both
think they lead cannot fork the chain: the loser's batch fails and is re-read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import msgspec

from eventlog.db import lock_key
from eventlog.leadership import Leadership, Term
from eventlog.waiting import wake_or_stop
from events.envelope import log_link
from events.errors import ConcurrencyError

log = logging.getLogger(__name__)

# The snapshot's bounds, then the appender lock's holders and each one's own transaction
# ids, from ONE copy of the lock table taken after the snapshot (see the module docstring).
_HORIZON = """
WITH locks AS MATERIALIZED (
    SELECT locktype, database, classid, objid, objsubid, transactionid, pid, mode, granted
      FROM pg_locks
), holders AS (
    SELECT DISTINCT pid FROM locks
     WHERE locktype = 'advisory' AND granted AND objsubid = 1
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND classid = $1::bigint::oid AND objid = $2::bigint::oid
)
SELECT pg_snapshot_xmin(s)::text::bigint AS xmin,
       pg_snapshot_xmax(s)::text::bigint AS xmax,
       array(SELECT h.pid FROM holders h) AS holders,
       array(SELECT l.pid FROM locks l JOIN holders h USING (pid)
              WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
              ORDER BY l.pid) AS xid_pids,
       array(SELECT l.transactionid::text::bigint FROM locks l JOIN holders h USING (pid)
              WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
              ORDER BY l.pid) AS xids
  FROM pg_current_snapshot() AS s
"""

_READ_FINISHED = """
SELECT seq, tx_id, stream_id, event_type, stream_hash
  FROM events
 WHERE tx_id < $4::xid8
   AND (tx_id, seq) > ($1::xid8, $2::bigint)
 ORDER BY tx_id, seq
 LIMIT $3
"""

_XID_SPAN = 2**32


def full_xid(xid: int, xmax: int) -> int:
    """The 64-bit id of a 32-bit ``xid`` seen in the lock table beside a snapshot whose
    xmax is ``xmax`` (64-bit): the nearest one, below or at/above xmax. Pure."""
    ahead = (xid - xmax) % _XID_SPAN
    return xmax + ahead if ahead < _XID_SPAN // 2 else xmax - (_XID_SPAN - ahead)


def appender_horizon(
    xmin: int, xmax: int, holders: Sequence[int], xid_pids: Sequence[int], xids: Sequence[int]
) -> int:
    """The horizon below which every appender has ended, from statement one's answer. Pure."""
    horizon = xmax
    own: dict[int, list[int]] = {}
    for pid, xid in zip(xid_pids, xids, strict=True):
        own.setdefault(pid, []).append(full_xid(xid, xmax))
    for pid in holders:
        ids = own.get(pid)
        # Between its lock and its id, a holder's id is unknown: fall back to the xmin.
        horizon = min(horizon, min(ids) if ids else xmin)
    return horizon


def sealed_channel(schema: str) -> str:
    return f"modelreg_sealed_{schema}"[:63]


class Cursor(msgspec.Struct):
    log_position: int
    tx_id: int
    seq: int
    log_hash: bytes


class Sealer:
    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        schema: str,
        *,
        batch_size: int = 5000,
        idle_interval: float = 0.01,
        max_idle_interval: float = 0.1,
        standby_interval: float = 1.0,
        on_sealed: Callable[[Sequence[int], int], None] | None = None,
    ) -> None:
        """``on_sealed(seqs, first_position)`` is told, after each batch commits, where its
        events landed (``seqs[i]`` at ``first_position + i``): the writes of this process
        waiting for their seal learn their position without a NOTIFY or a query."""
        self.schema = schema
        self._on_sealed = on_sealed
        self.batch_size = batch_size
        self.idle_interval = idle_interval
        self.max_idle_interval = max_idle_interval
        self.channel = sealed_channel(schema)
        self._wake = asyncio.Event()
        self._cursor: Cursor | None = None
        self._lock_parts: tuple[int, int] | None = None  # the appender lock's (classid, objid)
        self._leadership = Leadership(
            connect, lock_key(schema, "sealer"), role="sealer", standby_interval=standby_interval
        )

    @property
    def is_leader(self) -> bool:
        return self._leadership.is_leader

    def wake(self) -> None:
        """Called after a local append commits, so sealing need not wait for the next poll."""
        self._wake.set()

    async def seal_once(self, conn: asyncpg.Connection) -> int:
        """Seal up to one batch of finished transactions; return how many events."""
        cursor = self._cursor or await self._load_cursor(conn)
        if self._lock_parts is None:
            key = int(await conn.fetchval("SELECT append_lock_key()"))
            self._lock_parts = ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)
        seen = await conn.fetchrow(_HORIZON, *self._lock_parts)
        assert seen is not None
        horizon = appender_horizon(
            seen["xmin"], seen["xmax"], seen["holders"], seen["xid_pids"], seen["xids"]
        )
        # A statement of its own, so its snapshot is taken after the lock table was read.
        rows = await conn.fetch(_READ_FINISHED, cursor.tx_id, cursor.seq, self.batch_size, horizon)
        if not rows:
            self._cursor = cursor
            return 0
        hashes: list[bytes] = []
        previous = cursor.log_hash
        for offset, row in enumerate(rows, start=1):
            previous = log_link(previous, cursor.log_position + offset, row["stream_hash"])
            hashes.append(previous)
        last = rows[-1]
        try:
            await conn.execute(
                "SELECT seal_batch($1, $2, $3, $4, $5, $6, $7, $8)",
                cursor.log_position,
                [r["seq"] for r in rows],
                [r["stream_id"] for r in rows],
                [r["event_type"] for r in rows],
                hashes,
                last["tx_id"],
                last["seq"],
                self.channel,
            )
        except asyncpg.PostgresError as exc:
            self._cursor = None  # another sealer moved on; re-read its cursor next time
            if exc.sqlstate == "MR409":
                raise ConcurrencyError("event_log", cursor.log_position, -1) from exc
            raise
        self._cursor = Cursor(
            cursor.log_position + len(rows), last["tx_id"], last["seq"], hashes[-1]
        )
        if self._on_sealed is not None:  # committed: seal_batch ran in a statement of its own
            self._on_sealed([r["seq"] for r in rows], cursor.log_position + 1)
        return len(rows)

    async def seal_all(self, conn: asyncpg.Connection) -> int:
        """Seal until nothing finished is left; return how many events."""
        total = 0
        while sealed := await self.seal_once(conn):
            total += sealed
        return total

    async def _load_cursor(self, conn: asyncpg.Connection) -> Cursor:
        row = await conn.fetchrow(
            "SELECT last_log_position, last_tx_id, last_seq, last_log_hash FROM sealer_state WHERE id = 1"
        )
        assert row is not None
        return Cursor(row[0], row[1], row[2], bytes(row[3]))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Lead when the role is free, stand by otherwise; return when ``stop`` is set.

        A lost connection drops leadership with it, so a standby can take over; this
        instance reconnects and competes again.
        """
        await self._leadership.run(self._lead, stop or asyncio.Event())

    async def _lead(self, term: Term) -> None:
        # Another sealer may have led meanwhile: start from the cursor it left.
        self._cursor = None
        interval = self.idle_interval
        while not term.ended.is_set():
            # Clear before reading: a wake that lands during the read must not be lost.
            self._wake.clear()
            try:
                sealed = await self.seal_once(term.conn)
            except ConcurrencyError:
                log.warning("sealer: another sealer moved the log; re-reading its cursor")
                continue
            if sealed >= self.batch_size:
                continue
            # Poll fast while writes flow, back off when idle: wakes cover local appends.
            interval = self.idle_interval if sealed else min(interval * 2, self.max_idle_interval)
            await wake_or_stop(self._wake, term.ended, interval)
