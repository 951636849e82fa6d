"""Lookups of the unique keys streams hold (a model's name, ``events.streams``). I/O: Postgres."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from events.streams import model_id_of, model_stream, name_key, name_key_pattern, name_of_key


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


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def model_ids_named(
    conn: asyncpg.Connection | asyncpg.Pool, names: Iterable[str], prefixes: Iterable[str]
) -> list[str]:
    """The ids of the models whose current name is one of ``names`` or starts with one of
    ``prefixes`` (a token's scopes), in one round trip over the keys the write path commits."""
    exact = [name_key(n) for n in names]
    patterns = [name_key(_like_escaped(p)) + "%" for p in prefixes]
    if not exact and not patterns:
        return []
    rows = await conn.fetch(
        "SELECT stream_id FROM unique_keys WHERE stream_id IS NOT NULL"
        " AND (key = ANY ($1::text[]) OR key LIKE ANY ($2::text[]))",
        exact,
        patterns,
    )
    return sorted(model_id_of(r["stream_id"]) for r in rows)
