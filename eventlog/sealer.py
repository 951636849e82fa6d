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

A round (migration 0014, ``seal_round``) runs both statements, the chain's links and the
seal inside one SQL function: each query of a VOLATILE function takes a fresh snapshot, so
statement two's is still taken after statement one's copy, and a round costs one round
trip and one commit instead of three trips.

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
from events.errors import ConcurrencyError

log = logging.getLogger(__name__)

# One round (migration 0014): the horizon from one copy of the lock table taken after the
# statement's snapshot, the finished events below it read with a later snapshot, the chain
# extended and the batch sealed, in one statement. No row: nothing was finished.
_SEAL_ROUND = "SELECT * FROM seal_round($1, $2, $3, $4, $5, $6)"


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
        try:
            row = await conn.fetchrow(
                _SEAL_ROUND,
                cursor.log_position,
                cursor.tx_id,
                cursor.seq,
                cursor.log_hash,
                self.batch_size,
                self.channel,
            )
        except asyncpg.PostgresError as exc:
            self._cursor = None  # another sealer moved on; re-read its cursor next time
            if exc.sqlstate == "MR409":
                raise ConcurrencyError("event_log", cursor.log_position, -1) from exc
            raise
        if row is None:
            self._cursor = cursor
            return 0
        seqs: list[int] = row["seqs"]
        self._cursor = Cursor(
            cursor.log_position + len(seqs), row["last_tx"], row["last_seq"], row["last_hash"]
        )
        if self._on_sealed is not None:  # committed: the round ran in a statement of its own
            self._on_sealed(seqs, row["first_position"])
        return len(seqs)

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
