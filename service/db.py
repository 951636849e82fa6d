"""Connections to Postgres as the application role, inside the registry's schema. I/O.

The application never connects as the owner of the event tables: every session runs as
``app_role``, which holds SELECT and INSERT on them and nothing more, so a bug (or an
attacker holding the app's credentials) cannot UPDATE, DELETE or TRUNCATE history.
"""

from __future__ import annotations

from typing import Any

import asyncpg


def session_settings(schema: str, app_role: str | None, name: str = "modelreg") -> dict[str, str]:
    settings = {"search_path": schema, "jit": "off", "application_name": name}
    if app_role:
        settings["role"] = app_role
    return settings


async def create_pool(
    url: str,
    *,
    schema: str,
    app_role: str | None,
    min_size: int = 2,
    max_size: int = 10,
    **kwargs: Any,
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        server_settings=session_settings(schema, app_role),
        **kwargs,
    )
    assert pool is not None
    return pool


async def connect(
    url: str, *, schema: str, app_role: str | None, name: str = "modelreg", **kwargs: Any
) -> asyncpg.Connection:
    """A dedicated connection, for work that must own its session: advisory locks, LISTEN."""
    conn: asyncpg.Connection = await asyncpg.connect(
        url, server_settings=session_settings(schema, app_role, name), **kwargs
    )
    return conn


def lock_key(schema: str, name: str) -> str:
    """Advisory-lock names are per schema, so registries sharing a cluster never contend."""
    return f"modelreg:{schema}:{name}"
