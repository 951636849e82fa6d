"""Snapshots of views at a log position: where whole-registry time travel starts folding. I/O.

A registry-wide ``as_of`` read used to fold the log from position 0, so its cost grew with
the log. With snapshots it restores each view as it stood at the nearest snapshot at or
below the position asked for and folds only the events after it (``projections.
time_travel.folded_views``): the cost is bounded by the size of the registry and the
distance between snapshots, not by the length of the log.

What is stored (table ``view_snapshots``): for each projection, the rows of each of its
tables at a position, as Postgres's own text form of each row, which converts back into
a row of the same table exactly (``record_out`` / ``record_in``). A snapshot is keyed by
the projection's ``fingerprint`` (name, version and table definitions), so one folded by
other projection code is never read; ``prune`` deletes it.

Why snapshots change no answer: a snapshot at P is written from a fold of the log up to
P by the same ``Projection.apply`` that a read would run (``projections.
snapshot_worker``), and only sealed positions exist to be folded; a read then folds
(P, position] into the restored rows, which is what the fold from 0 would have done after
reaching P. Dropping any or all snapshots only moves the start back (to 0 at worst). The
integration test ``test_registry_snapshots`` compares answers with and without
snapshots at random positions of random histories.

Spacing (``spacing``): a snapshot copies every row of the views, so taking one every
``every`` events made each event pay a share of the registry's size. With ``rows_per_event``
the worker waits one event per that many rows of the last snapshot (on the grid retention
thins on), so each event pays about the same whatever the registry's size, and a read
folds at most about as many events after a snapshot as it restored rows, divided by that
figure: a read's cost stays bounded by the registry's size, not by the log's length.

Retention (``retained_positions``): the newest ``keep`` snapshots, plus the older ones at multiples
of ``every * thin``. A read then folds at most the spacing's events after a recent position
and at most ``every * thin`` (or the spacing, when more) after an old one, and the table
holds ``keep`` snapshots plus one per ``every * thin`` events of log at most.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import asyncpg

from projections.base import Names, Projection

# Bumped when the stored form changes, so every older snapshot is ignored and pruned.
FORMAT = 1
# Rows of a table per row of view_snapshots: one array per table could not hold a large
# registry (Postgres caps a value at 1 GiB; 1,000,000 versions passed it).
CHUNK_ROWS = 10_000


def fingerprint(projection: Projection) -> str:
    """What a snapshot of ``projection`` depends on: its name, code version and tables.
    A change to any of them (a bumped version for a changed fold) gives another
    fingerprint, and older snapshots are no longer read."""
    digest = hashlib.sha256(f"format {FORMAT}\n{projection.name}\n{projection.version}\n".encode())
    for table in projection.tables:
        digest.update(f"{table.name}\n{table.columns}\n{','.join(table.key)}\n".encode())
    return digest.hexdigest()[:32]


async def nearest_snapshots(
    conn: asyncpg.Connection | asyncpg.Pool, projections: Sequence[Projection], position: int
) -> dict[str, int]:
    """Per projection, the position of its newest snapshot at or below ``position`` (0 when
    it has none): where a fold up to ``position`` may start."""
    rows = await conn.fetch(
        "SELECT p.projection, coalesce(max(s.log_position), 0) AS at"
        " FROM unnest($1::text[], $2::text[]) AS p(projection, fingerprint)"
        " LEFT JOIN view_snapshots s ON s.projection = p.projection"
        " AND s.fingerprint = p.fingerprint AND s.log_position <= $3"
        " GROUP BY p.projection",
        [p.name for p in projections],
        [fingerprint(p) for p in projections],
        position,
    )
    return {r["projection"]: r["at"] for r in rows}


async def restore_snapshot(
    conn: asyncpg.Connection, projection: Projection, names: Names, position: int
) -> None:
    """Fill ``projection``'s (empty) tables named by ``names`` with its snapshot at
    ``position``. The text form of each row is cast to the row type of the table it goes
    to, which the same CREATE statement made."""
    for table in projection.tables:
        target = names[table.name]
        await conn.execute(
            f"INSERT INTO {target} SELECT r.* FROM view_snapshots s,"
            f" unnest(s.rows::{target}[]) AS r"
            " WHERE s.projection = $1 AND s.fingerprint = $2 AND s.log_position = $3"
            " AND s.table_name = $4",
            projection.name,
            fingerprint(projection),
            position,
            table.name,
        )


async def save_snapshot(
    conn: asyncpg.Connection,
    projections: Iterable[Projection],
    names: Mapping[str, Names],
    position: int,
    *,
    chunk_rows: int = CHUNK_ROWS,
) -> None:
    """Store the tables named by ``names`` as every projection's snapshot at ``position``,
    in one transaction: a crash leaves the whole snapshot or nothing. A snapshot already
    stored there (by an earlier leader) is left as it is: it holds the same rows. Each
    table goes in chunks of ``chunk_rows`` rows in key order; chunk 0 is stored even for
    an empty table."""
    async with conn.transaction():
        # The shortest text that converts back to the same float8 (the default, but a
        # session could have lowered it, and the rows must round-trip exactly).
        await conn.execute("SET LOCAL extra_float_digits = 1")
        for projection in projections:
            for table in projection.tables:
                order = ", ".join(f"t.{column}" for column in table.key)
                await conn.execute(
                    "INSERT INTO view_snapshots"
                    " (projection, fingerprint, log_position, table_name, chunk, row_count, rows)"
                    " SELECT $1, $2, $3, $4, c.chunk, count(c.row),"
                    " coalesce(array_agg(c.row ORDER BY c.n) FILTER (WHERE c.row IS NOT NULL), '{}')"
                    " FROM (SELECT (n - 1) / $5 AS chunk, n, row FROM"
                    f" (SELECT row_number() OVER (ORDER BY {order}) AS n, t::text AS row"
                    f" FROM {names[projection.name][table.name]} t) numbered"
                    " UNION ALL SELECT 0, 0, NULL) c"
                    " GROUP BY c.chunk ON CONFLICT DO NOTHING",
                    projection.name,
                    fingerprint(projection),
                    position,
                    table.name,
                    chunk_rows,
                )


def retained_positions(positions: Iterable[int], *, every: int, keep: int, thin: int) -> set[int]:
    """Which snapshot positions to keep: the newest ``keep``, and of the older ones the
    last in each stretch ``(k * every * thin, (k + 1) * every * thin]``: the multiples of
    ``every * thin`` where snapshots are taken on the grid, the nearest below them where
    the worker took them from the live views between grid points. Pure."""
    ordered = sorted(set(positions), reverse=True)
    stride = every * thin
    last_of: dict[int, int] = {}
    for p in ordered:
        last_of.setdefault((p - 1) // stride, p)  # descending: the first seen is the last
    return set(ordered[:keep]) | set(last_of.values())


def spacing(rows: int, *, every: int, thin: int, rows_per_event: int | None) -> int:
    """Events between snapshots of views that hold ``rows`` rows in all: ``every``, or with
    ``rows_per_event`` one event per that many rows when that is more, rounded up to a
    multiple of ``every`` that divides ``every * thin`` or is a multiple of it (so that
    snapshots stay on the positions retention keeps). Pure."""
    wanted = every if rows_per_event is None else max(every, -(-rows // rows_per_event))
    stride = every * thin
    if wanted >= stride:
        return -(-wanted // stride) * stride
    return min(m * every for m in range(1, thin + 1) if thin % m == 0 and m * every >= wanted)


def due_positions(
    head: int, latest: int, *, every: int, keep: int, thin: int, gap: int | None = None
) -> list[int]:
    """The snapshot positions to take now, oldest first: the multiples of ``gap`` (a
    ``spacing``; default ``every``) after ``latest`` up to ``head`` that
    ``retained_positions`` would keep (a worker far behind, e.g. on its first start over a
    long log, skips the ones it would prune at once). Pure."""
    gap = gap or every
    first = latest // gap * gap + gap
    candidates = list(range(first, head // gap * gap + 1, gap))
    kept = retained_positions(candidates, every=every, keep=keep, thin=thin)
    return [p for p in candidates if p in kept]


async def live_views(
    conn: asyncpg.Connection, projections: Sequence[Projection]
) -> tuple[int, dict[str, Names]] | None:
    """The position all of ``projections``' live views stand at and their tables' names;
    None unless every one is live, of this code's version and at one same position. Read
    in a REPEATABLE READ transaction, the tables then hold exactly the fold of the log up
    to that position: a round commits its rows and its checkpoint together."""
    rows = await conn.fetch(
        "SELECT projection, generation, code_version, log_position FROM projection_checkpoints"
        " WHERE status = 'live' AND projection = ANY ($1::text[])",
        [p.name for p in projections],
    )
    found = {r["projection"]: r for r in rows}
    positions = {r["log_position"] for r in rows}
    if len(positions) != 1 or any(
        (row := found.get(p.name)) is None or row["code_version"] != p.version for p in projections
    ):
        return None
    return positions.pop(), {
        p.name: p.generation_names(found[p.name]["generation"]) for p in projections
    }


async def snapshot_rows(
    conn: asyncpg.Connection | asyncpg.Pool, projections: Sequence[Projection], position: int
) -> int:
    """How many rows the snapshot of ``projections`` at ``position`` holds, in all."""
    rows: int = await conn.fetchval(
        "SELECT coalesce(sum(row_count), 0)::bigint FROM view_snapshots WHERE log_position = $1"
        " AND (projection, fingerprint) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
        position,
        [p.name for p in projections],
        [fingerprint(p) for p in projections],
    )
    return rows


async def snapshot_positions(
    conn: asyncpg.Connection | asyncpg.Pool, projection: Projection
) -> list[int]:
    """The positions of ``projection``'s snapshots of its current fingerprint, ascending."""
    rows = await conn.fetch(
        "SELECT DISTINCT log_position FROM view_snapshots"
        " WHERE projection = $1 AND fingerprint = $2 ORDER BY log_position",
        projection.name,
        fingerprint(projection),
    )
    return [r["log_position"] for r in rows]


async def prune_snapshots(
    conn: asyncpg.Connection,
    projections: Sequence[Projection],
    *,
    every: int,
    keep: int,
    thin: int,
) -> int:
    """Delete snapshots of other fingerprints or projections, and the current ones that
    ``retained_positions`` does not keep; return how many rows went."""
    deleted = 0
    # One transaction: readers see every view's snapshots pruned alike, or none of them.
    async with conn.transaction():
        status = await conn.execute(
            "DELETE FROM view_snapshots WHERE (projection, fingerprint) NOT IN"
            " (SELECT * FROM unnest($1::text[], $2::text[]))",
            [p.name for p in projections],
            [fingerprint(p) for p in projections],
        )
        deleted += int(status.split()[-1])
        for projection in projections:
            positions = await snapshot_positions(conn, projection)
            gone = sorted(
                set(positions) - retained_positions(positions, every=every, keep=keep, thin=thin)
            )
            if gone:
                status = await conn.execute(
                    "DELETE FROM view_snapshots WHERE projection = $1 AND fingerprint = $2"
                    " AND log_position = ANY($3::bigint[])",
                    projection.name,
                    fingerprint(projection),
                    gone,
                )
                deleted += int(status.split()[-1])
    return deleted


async def drop_snapshots(
    conn: asyncpg.Connection | asyncpg.Pool, projections: Sequence[Projection] | None = None
) -> int:
    """Delete every snapshot (of ``projections`` only, if given); return how many rows went.
    They are derived: reads fold from further back until the snapshot worker, which
    compares with what is stored, takes them again from the log."""
    status: str = await conn.execute(
        "DELETE FROM view_snapshots WHERE $1::text[] IS NULL OR projection = ANY($1::text[])",
        None if projections is None else [p.name for p in projections],
    )
    return int(status.split()[-1])
