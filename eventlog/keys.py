"""Lookups of the unique keys streams hold (a model's name, ``events.streams``). I/O: Postgres."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from events.streams import model_stream, name_key_pattern, name_of_key


async def model_names(
    conn: asyncpg.Connection | asyncpg.Pool, model_ids: Iterable[str]
) -> dict[str, str]:
    """The current name of each of ``model_ids``, by model id, in one round trip; a model
    without a name key (none such today) is absent. Reads the keys the write path commits
    with each append, so a model registered a moment ago is found before any view shows it."""
    streams = {model_stream(model_id): model_id for model_id in model_ids}
    if not streams:
        return {}
    rows = await conn.fetch(
        "SELECT stream_id, key FROM unique_keys WHERE stream_id = ANY ($1::text[]) AND key LIKE $2",
        list(streams),
        name_key_pattern(),
    )
    names: dict[str, str] = {}
    for row in rows:
        name = name_of_key(row["key"])
        if name is not None:
            names[streams[row["stream_id"]]] = name
    return names
