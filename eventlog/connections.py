"""Small helpers for dedicated connections that may die under us. I/O: Postgres."""

from __future__ import annotations

import asyncpg

# What a lost or killed connection raises; workers reconnect on these and nothing else.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def close_quietly(conn: asyncpg.Connection, timeout: float = 2.0) -> None:
    """Close politely if the connection is healthy, else drop it: a connection killed
    mid-query cannot be closed gracefully, and its session locks die with it anyway."""
    if conn.is_closed():
        return
    try:
        await conn.close(timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure here means: drop it
        conn.terminate()
