"""Liveness and readiness checks and their HTTP bodies. I/O: one Postgres round trip.

Readiness means: the database answers, every migration this code knows is applied, the
NATS connection is up, and publication is not stalled: no sealed event has waited longer
than ``PUBLISHER_STALL_AFTER`` seconds for the relay (whichever replica leads it) to have
JetStream acknowledge it. Each check is reported separately so an operator sees which
one failed; the not-ready body is RFC 9457 problem+json.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal, cast

import asyncpg
import msgspec
from nats.aio.client import Client as NatsClient

from eventlog.migrate import pending_migrations

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0
# Publication normally follows sealing within milliseconds, and a relay retries NATS
# failures within seconds; an event still unpublished after this long means it is stuck.
PUBLISHER_STALL_AFTER = 60.0

# Seconds the oldest unpublished sealed event has waited (no row: nothing is waiting).
_WAITING = """
SELECT extract(epoch FROM statement_timestamp() - l.sealed_at)::float8
  FROM event_log l
 WHERE l.log_position = 1 + coalesce(
       (SELECT log_position FROM publication_checkpoints WHERE publisher = $1), 0)
"""


class Live(msgspec.Struct):
    status: Literal["ok"] = "ok"


class Checks(msgspec.Struct):
    database: Literal["ok", "error"]
    # "unknown" when the database cannot be asked.
    migrations: Literal["ok", "pending", "unknown"]
    nats: Literal["ok", "disconnected"]
    # False for an API-only replica: it serves (and accepts writes) while NATS is away.
    nats_required: bool = True
    # "stalled": a sealed event has waited too long for publication; "unknown" when the
    # database cannot be asked or no publisher is checked.
    publisher: Literal["ok", "stalled", "unknown"] = "unknown"

    @property
    def ready(self) -> bool:
        publishing = self.publisher != "stalled" or not self.nats_required
        nats_ok = (self.nats == "ok" or not self.nats_required) and publishing
        return self.database == "ok" and self.migrations == "ok" and nats_ok


class Ready(msgspec.Struct):
    checks: Checks
    status: Literal["ok"] = "ok"


class NotReady(msgspec.Struct):
    """RFC 9457 problem details, extended with the per-dependency checks."""

    detail: str
    checks: Checks
    type: str = "urn:modelreg:not_ready"
    title: str = "Service not ready"
    status: int = 503
    code: str = "not_ready"


async def check(
    pool: asyncpg.Pool | None,
    nats: NatsClient | None,
    *,
    require_nats: bool = True,
    publisher: str | None = None,
    stall_after: float = PUBLISHER_STALL_AFTER,
) -> tuple[Checks, list[str]]:
    """Run every check; also return human-readable reasons for the failed ones.
    ``publisher`` names the relay's checkpoint (``nats:<STREAM>``) to check for a stall."""
    reasons: list[str] = []
    database: Literal["ok", "error"] = "error"
    migrations: Literal["ok", "pending", "unknown"] = "unknown"
    publishing: Literal["ok", "stalled", "unknown"] = "unknown"
    if pool is None:
        reasons.append("database pool not started")
    else:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT), pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                database = "ok"
                # A pooled connection is a proxy with the Connection API.
                pending = await pending_migrations(cast(asyncpg.Connection, conn))
                if publisher is not None and not pending:
                    waited = await conn.fetchval(_WAITING, publisher)
                    publishing = "stalled" if waited is not None and waited > stall_after else "ok"
                    if publishing == "stalled":
                        reasons.append(
                            f"publisher {publisher} stalled: a sealed event has waited"
                            f" {waited:.0f} s to be published (more than {stall_after:.0f} s)"
                        )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("readiness: database check failed: %s", reason)
            reasons.append(f"database: {reason}")
        else:
            migrations = "pending" if pending else "ok"
            if pending:
                reasons.append(f"migrations pending: {', '.join(pending)}")
    nats_state: Literal["ok", "disconnected"] = (
        "ok" if nats is not None and nats.is_connected else "disconnected"
    )
    if nats_state != "ok" and require_nats:
        reasons.append("NATS disconnected")
    return Checks(
        database=database,
        migrations=migrations,
        nats=nats_state,
        nats_required=require_nats,
        publisher=publishing,
    ), reasons
