"""The delivery state of webhooks: cursors, per-event deliveries, the attempt log. I/O: Postgres.

All of it is derived, operational data (``eventlog/migrations/0006_webhooks.sql``): the
log stays the truth, and what is settled behind a cursor is deleted after the retention.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

Pool = asyncpg.Pool | asyncpg.Connection

SETTLED = ("delivered", "dead")


@dataclass(frozen=True, slots=True)
class Known:
    """A delivery recorded beyond the cursor, as found at start."""

    status: str
    attempts: int
    first_attempt_at: datetime | None
    next_attempt_at: datetime | None


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One event's delivery to one subscription, as the API shows it."""

    log_position: int
    event_id: UUID
    event_type: str
    model_id: str
    status: str
    attempts: int
    response_code: int | None
    latency_ms: float | None
    error: str | None
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    attempt: int
    attempted_at: datetime
    response_code: int | None
    latency_ms: float
    error: str | None
    delivered: bool


# The subscription's first event's log position: delivery starts after its own creation.
_INIT = """
INSERT INTO webhook_cursors (subscription_id, log_position)
SELECT $1, l.log_position FROM events e JOIN event_log l ON l.seq = e.seq
 WHERE e.stream_id = $2 AND e.stream_position = 1
ON CONFLICT (subscription_id) DO NOTHING
"""


async def init_cursor(pool: Pool, subscription_id: str, stream_id: str) -> int | None:
    """The cursor, created at the subscription's own position on first use; None while
    its creation is not sealed yet."""
    await pool.execute(_INIT, subscription_id, stream_id)
    found: int | None = await pool.fetchval(
        "SELECT log_position FROM webhook_cursors WHERE subscription_id = $1", subscription_id
    )
    return found


async def advance_cursor(pool: Pool, subscription_id: str, old: int, new: int) -> bool:
    """Compare-and-set: a stale runner cannot move a cursor it no longer owns."""
    status: str = await pool.execute(
        "UPDATE webhook_cursors SET log_position = $3, updated_at = statement_timestamp()"
        " WHERE subscription_id = $1 AND log_position = $2",
        subscription_id,
        old,
        new,
    )
    return status.endswith(" 1")


async def known_beyond(pool: Pool, subscription_id: str, cursor: int) -> dict[int, Known]:
    rows = await pool.fetch(
        "SELECT log_position, status, attempts, first_attempt_at, next_attempt_at"
        " FROM webhook_deliveries WHERE subscription_id = $1 AND log_position > $2",
        subscription_id,
        cursor,
    )
    return {
        r["log_position"]: Known(
            r["status"], r["attempts"], r["first_attempt_at"], r["next_attempt_at"]
        )
        for r in rows
    }


# One statement, so one round trip per attempt: the delivery's state (created by its first
# attempt) and the attempt's line in the log, atomically.
_RECORD = """
WITH delivery AS (
    INSERT INTO webhook_deliveries AS d (subscription_id, log_position, event_id, event_type,
        model_id, status, attempts, response_code, latency_ms, error, first_attempt_at,
        last_attempt_at, next_attempt_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
    ON CONFLICT (subscription_id, log_position) DO UPDATE SET
        status = EXCLUDED.status, attempts = EXCLUDED.attempts,
        response_code = EXCLUDED.response_code, latency_ms = EXCLUDED.latency_ms,
        error = EXCLUDED.error, first_attempt_at = EXCLUDED.first_attempt_at,
        last_attempt_at = EXCLUDED.last_attempt_at, next_attempt_at = EXCLUDED.next_attempt_at
)
INSERT INTO webhook_attempts (subscription_id, log_position, attempt, attempted_at,
    response_code, latency_ms, error, delivered)
VALUES ($1, $2, $7, $12, $8, $9, $10, $6 = 'delivered')
"""


@dataclass(frozen=True, slots=True)
class Target:
    """What a delivery is of: the event and its model."""

    subscription_id: str
    log_position: int
    event_id: UUID
    event_type: str
    model_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One attempt, as the runner made it."""

    target: Target
    attempt: int
    attempted_at: datetime
    first_attempt_at: datetime
    response_code: int | None
    latency_ms: float
    error: str | None
    status: str
    next_attempt_at: datetime | None


async def record_attempts(pool: Pool, records: list[Record]) -> None:
    """Attempts into the delivery log, and each delivery's state with them, in one batch."""
    await pool.executemany(
        _RECORD,
        [
            (
                r.target.subscription_id,
                r.target.log_position,
                r.target.event_id,
                r.target.event_type,
                r.target.model_id,
                r.status,
                r.attempt,
                r.response_code,
                r.latency_ms,
                r.error,
                r.first_attempt_at,
                r.attempted_at,
                r.next_attempt_at,
            )
            for r in records
        ],
    )


async def redeliveries(pool: Pool, subscription_id: str) -> list[int]:
    """Positions an operator asked to send again, claimed (set pending) as they are read."""
    rows = await pool.fetch(
        "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, first_attempt_at = NULL,"
        " next_attempt_at = NULL WHERE subscription_id = $1 AND status = 'redeliver'"
        " RETURNING log_position",
        subscription_id,
    )
    return sorted(r["log_position"] for r in rows)


async def request_redelivery(pool: Pool, subscription_id: str, position: int) -> str | None:
    """Queue a settled delivery (delivered or dead) to be sent again; its status before,
    or None when there is no such delivery."""
    row = await pool.fetchrow(
        "WITH before AS (SELECT status FROM webhook_deliveries"
        "   WHERE subscription_id = $1 AND log_position = $2 FOR UPDATE)"
        " UPDATE webhook_deliveries d SET status = 'redeliver' FROM before"
        " WHERE d.subscription_id = $1 AND d.log_position = $2"
        "   AND before.status IN ('delivered', 'dead')"
        " RETURNING before.status",
        subscription_id,
        position,
    )
    if row is not None:
        status: str = row["status"]
        return status
    current: str | None = await pool.fetchval(
        "SELECT status FROM webhook_deliveries WHERE subscription_id = $1 AND log_position = $2",
        subscription_id,
        position,
    )
    return current


async def deliveries(
    pool: Pool,
    subscription_id: str,
    *,
    status: str | None,
    before: int | None,
    limit: int,
) -> list[Delivery]:
    """Newest first; ``before`` a log position, for the next page."""
    rows = await pool.fetch(
        "SELECT log_position, event_id, event_type, model_id, status, attempts, response_code,"
        " latency_ms, error, first_attempt_at, last_attempt_at, next_attempt_at"
        " FROM webhook_deliveries WHERE subscription_id = $1"
        " AND ($2::text IS NULL OR status = $2) AND ($3::bigint IS NULL OR log_position < $3)"
        " ORDER BY log_position DESC LIMIT $4",
        subscription_id,
        status,
        before,
        limit,
    )
    return [Delivery(**dict(r)) for r in rows]


async def attempts_of(pool: Pool, subscription_id: str, position: int) -> list[Attempt]:
    rows = await pool.fetch(
        "SELECT attempt, attempted_at, response_code, latency_ms, error, delivered"
        " FROM webhook_attempts WHERE subscription_id = $1 AND log_position = $2 ORDER BY id",
        subscription_id,
        position,
    )
    return [Attempt(**dict(r)) for r in rows]


async def prune(pool: Pool, older_than: datetime) -> None:
    """Forget settled deliveries behind their cursor, and attempts, past the retention."""
    await pool.execute("DELETE FROM webhook_attempts WHERE attempted_at < $1", older_than)
    await pool.execute(
        "DELETE FROM webhook_deliveries d USING webhook_cursors c"
        " WHERE d.subscription_id = c.subscription_id AND d.log_position <= c.log_position"
        " AND d.status IN ('delivered', 'dead') AND d.last_attempt_at < $1",
        older_than,
    )


async def forget_subscription(pool: Pool, subscription_id: str) -> None:
    """A deleted subscription's cursor goes; its delivery log ages out with the retention."""
    await pool.execute("DELETE FROM webhook_cursors WHERE subscription_id = $1", subscription_id)
