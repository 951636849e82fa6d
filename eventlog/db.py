"""Connections to Postgres as the application role, inside the registry's schema. I/O.

The application never connects as the owner of the event tables: every session runs as
``app_role``, which holds SELECT and INSERT on them and nothing more, so a bug (or an
attacker holding the app's credentials) cannot UPDATE, DELETE or TRUNCATE history.
"""

from __future__ import annotations

from typing import Any

import asyncpg


def session_settings(
    schema: str, app_role: str | None, name: str = "modelreg", *, synchronous_commit: bool = True
) -> dict[str, str]:
    settings = {"search_path": schema, "jit": "off", "application_name": name}
    if not synchronous_commit:
        settings["synchronous_commit"] = "off"
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
        reset=_keep_session,
        **kwargs,
    )
    assert pool is not None
    return pool


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pooled connections carry no session state (LISTEN and session advisory locks live on
    dedicated connections; settings are fixed at connect), so the default reset query on
    every release (RESET ALL, UNLISTEN *, ...) would be a wasted round trip per query.
    An open transaction is still rolled back by asyncpg before this runs."""


async def connect(
    url: str,
    *,
    schema: str,
    app_role: str | None,
    name: str = "modelreg",
    synchronous_commit: bool = True,
    **kwargs: Any,
) -> asyncpg.Connection:
    """A dedicated connection, for work that must own its session: advisory locks, LISTEN.

    ``synchronous_commit=False`` suits work whose commits are derived and replayable (the
    projection worker: a view batch and its checkpoint are lost or kept together).
    """
    conn: asyncpg.Connection = await asyncpg.connect(
        url,
        server_settings=session_settings(
            schema, app_role, name, synchronous_commit=synchronous_commit
        ),
        **kwargs,
    )
    return conn


def lock_key(schema: str, name: str) -> str:
    """Advisory-lock names are per schema, so registries sharing a cluster never contend."""
    return f"modelreg:{schema}:{name}"
