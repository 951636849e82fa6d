"""The ``denials`` table (``eventlog/migrations/0007_denials.sql``): write a recorder's
tallies, read them newest first, delete what is past the retention. I/O: Postgres."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import msgspec

from service.denials.recorder import DenialKey, Tally

_UPSERT = """
INSERT INTO denials (minute, principal, token_id, status, code, method, route, model,
                     permission, reason, client, count, first_at, last_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (minute, principal, token_id, status, code, method, route, model, permission,
             reason, client)
DO UPDATE SET count = denials.count + EXCLUDED.count,
              first_at = least(denials.first_at, EXCLUDED.first_at),
              last_at = greatest(denials.last_at, EXCLUDED.last_at)
"""


class Denial(msgspec.Struct, frozen=True, kw_only=True):
    """Refusals that were the same in every respect within one minute, counted."""

    principal: str | None
    token_id: str | None
    status: int
    code: str
    method: str
    route: str
    model: str | None
    permission: str | None
    reason: str
    client: str
    count: int
    first_at: datetime
    last_at: datetime
    cursor: str  # where the next (older) page starts: pass it back as ``before``


async def write(pool: asyncpg.Pool, tallies: dict[DenialKey, Tally]) -> None:
    """One transaction: a row per key, added to the row already there for its minute."""
    rows = [
        (
            k.minute,
            k.principal,
            k.token_id,
            k.status,
            k.code,
            k.method,
            k.route,
            k.model,
            k.permission,
            k.reason,
            k.client,
            t.count,
            t.first_at,
            t.last_at,
        )
        # A fixed order, so two processes writing the same keys cannot deadlock.
        for k, t in sorted(tallies.items(), key=lambda kv: _order(kv[0]))
    ]
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(_UPSERT, rows)


def _order(key: DenialKey) -> tuple[object, ...]:
    return (
        key.minute,
        key.principal,
        key.token_id,
        key.status,
        key.code,
        key.method,
        key.route,
        key.model,
        key.permission,
        key.reason,
        key.client,
    )


async def read(
    pool: asyncpg.Pool,
    *,
    limit: int,
    principal: str | tuple[str, ...] | None = None,
    model: str | None = None,
    code: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: tuple[datetime, int] | None = None,
) -> list[Denial]:
    """Newest first; ``since``/``until`` bound when refusals happened (any overlap)."""
    found = await pool.fetch(
        """
        SELECT id, principal, token_id, status, code, method, route, model, permission,
               reason, client, count, first_at, last_at
          FROM denials
         WHERE ($1::text[] IS NULL OR principal = ANY ($1::text[]))
           AND ($2::text IS NULL OR model = $2)
           AND ($3::text IS NULL OR code = $3)
           AND ($4::timestamptz IS NULL OR last_at >= $4)
           AND ($5::timestamptz IS NULL OR first_at < $5)
           AND ($6::timestamptz IS NULL OR (last_at, id) < ($6, $7))
         ORDER BY last_at DESC, id DESC
         LIMIT $8
        """,
        # One person may be refused under a name and under a subject id.
        [principal] if isinstance(principal, str) else principal and list(principal),
        model,
        code,
        since,
        until,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )
    return [
        Denial(
            principal=row["principal"] or None,
            token_id=row["token_id"] or None,
            status=row["status"],
            code=row["code"],
            method=row["method"],
            route=row["route"],
            model=row["model"] or None,
            permission=row["permission"] or None,
            reason=row["reason"],
            client=row["client"],
            count=row["count"],
            first_at=row["first_at"],
            last_at=row["last_at"],
            cursor=encode_cursor(row["last_at"], row["id"]),
        )
        for row in found
    ]


async def prune(pool: asyncpg.Pool, older_than: datetime) -> int:
    """Delete the rows whose last refusal is before ``older_than``; how many went."""
    status: str = await pool.execute("DELETE FROM denials WHERE last_at < $1", older_than)
    return int(status.rsplit(" ", 1)[-1])


# Microseconds since 1970 (17 digits reach past year 5000) and a row id.
CURSOR_PATTERN = r"^[0-9]{1,17}-[0-9]{1,19}$"


def encode_cursor(last_at: datetime, row_id: int) -> str:
    micros = int(last_at.timestamp()) * 1_000_000 + last_at.microsecond
    return f"{micros}-{row_id}"


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """Raises ValueError for anything ``encode_cursor`` did not make."""
    micros, _, row_id = cursor.partition("-")
    seconds, rest = divmod(int(micros), 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest), int(row_id)
