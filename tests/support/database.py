"""A fresh, migrated schema per test, reached as the application role."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import asyncpg

from eventlog.db import connect, create_pool
from eventlog.migrate import apply_migrations

APP_ROLE = "modelreg_test_app"


@dataclass
class Database:
    url: str
    schema: str
    app_role: str
    pool: asyncpg.Pool
    _extra: list[asyncpg.Connection] = field(default_factory=list)

    async def connect(self, name: str = "modelreg-test") -> asyncpg.Connection:
        """A new connection as the application role (closed at teardown)."""
        conn = await connect(self.url, schema=self.schema, app_role=self.app_role, name=name)
        self._extra.append(conn)
        return conn

    async def admin(self) -> asyncpg.Connection:
        """A new connection as the owner (superuser in tests), for tampering and inspection."""
        conn = await connect(self.url, schema=self.schema, app_role=None)
        self._extra.append(conn)
        return conn

    async def terminate_sessions(self, application_name: str) -> int:
        """Kill (as the server would) every session named ``application_name``; how many."""
        admin = await self.admin()
        killed: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            application_name,
        )
        return killed

    async def close(self) -> None:
        for conn in self._extra:
            if not conn.is_closed():
                conn.terminate()
        await self.pool.close()


async def create_database(url: str, *, pool_size: int = 10) -> Database:
    schema = f"t_{secrets.token_hex(6)}"
    await apply_migrations(url, schema=schema, app_role=APP_ROLE)
    pool = await create_pool(url, schema=schema, app_role=APP_ROLE, min_size=1, max_size=pool_size)
    return Database(url, schema, APP_ROLE, pool)


async def drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
