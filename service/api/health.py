"""Liveness and readiness checks and their HTTP bodies. I/O: one Postgres round trip.

Readiness means: the database answers, every migration this code knows is applied, and
the NATS connection is up. Each check is reported separately so an operator sees which
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


class Live(msgspec.Struct):
    status: Literal["ok"] = "ok"


class Checks(msgspec.Struct):
    database: Literal["ok", "error"]
    # "unknown" when the database cannot be asked.
    migrations: Literal["ok", "pending", "unknown"]
    nats: Literal["ok", "disconnected"]
    # False for an API-only replica: it serves (and accepts writes) while NATS is away.
    nats_required: bool = True

    @property
    def ready(self) -> bool:
        nats_ok = self.nats == "ok" or not self.nats_required
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
    pool: asyncpg.Pool | None, nats: NatsClient | None, *, require_nats: bool = True
) -> tuple[Checks, list[str]]:
    """Run every check; also return human-readable reasons for the failed ones."""
    reasons: list[str] = []
    database: Literal["ok", "error"] = "error"
    migrations: Literal["ok", "pending", "unknown"] = "unknown"
    if pool is None:
        reasons.append("database pool not started")
    else:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT), pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                database = "ok"
                # A pooled connection is a proxy with the Connection API.
                pending = await pending_migrations(cast(asyncpg.Connection, conn))
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
        database=database, migrations=migrations, nats=nats_state, nats_required=require_nats
    ), reasons
