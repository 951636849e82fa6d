"""Who a recorded actor is: events name people by subject id (service.identity.subjects)."""

from __future__ import annotations

import asyncpg

from events.subjects import is_subject_id
from service.identity.subjects import ERASED


async def named(pool: asyncpg.Pool, recorded: str) -> str:
    """The name a recorded subject id stands for ("erased subject" once erased); fails
    the test when ``recorded`` is not a known subject id (a name in clear, say)."""
    assert is_subject_id(recorded), f"{recorded!r} is recorded in clear, not as a subject id"
    row = await pool.fetchrow("SELECT principal FROM subjects WHERE subject_id = $1", recorded)
    assert row is not None, f"{recorded} is no known subject"
    return str(row["principal"] or ERASED)
