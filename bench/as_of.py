"""Benchmark whole-registry time travel (issue 13 item 3), with and without view snapshots.

    python -m bench.as_of [--database-url URL] [--sizes 6000,60000] [--reads 30]

For each log size in turn (the log grows from one size to the next, in the same run):

1. writes realistic registry events (``bench.projections``'s history: models, versions
   with promotion, alias move, demotion, deployment and metric batches) and seals them;
2. baseline: ``registry_as_of`` at ``--reads`` random positions and at the head, folding
   from position 0 (``snapshots=False``: what every read did before snapshots);
3. takes the snapshots the worker would hold at that head (``take_due_snapshots`` with the
   default settings: every 500 events, the newest 20, older ones every 2,000) and reports
   the time taken and the table's size;
4. the same reads from the nearest snapshot.

Target: with snapshots, the latency at 60k events is about the latency at 6k (it does not
grow with the log), and below the baseline at 6k.
"""

from __future__ import annotations

import asyncio
import random
import time

from bench.common import Row, Table, fresh_database, parser, percentile, postgres
from bench.projections import EVENTS_PER_VERSION, VERSIONS_PER_MODEL, check_story, model_story
from eventlog.log import head_position
from eventlog.sealer import Sealer
from eventlog.store import EventStore, Metadata
from events.catalogue import CODEC
from projections.registry_state import REGISTRY_PROJECTIONS, registry_as_of
from projections.snapshot_worker import take_due_snapshots
from service.settings import Settings
from tests.support.database import Database


async def grow_history(db: Database, first_model: int, events: int, writers: int = 4) -> int:
    """Append about ``events`` events as new models from ``first_model`` on; seal them;
    return the index of the next unused model."""
    store = EventStore(db.pool, CODEC)
    models = max(1, events // (VERSIONS_PER_MODEL * EVENTS_PER_VERSION))

    async def writer(w: int) -> None:
        for index in range(first_model + w, first_model + models, writers):
            versions: dict[str, int] = {}
            for stream, batch, actor, at in model_story(index, VERSIONS_PER_MODEL):
                result = await store.append(
                    stream, versions.get(stream, 0), batch, Metadata(actor=actor, occurred_at=at)
                )
                versions[stream] = result.stream_version

    await asyncio.gather(*(writer(w) for w in range(writers)))
    conn = await db.connect()
    sealer = Sealer(db.connect, db.schema)
    written = await conn.fetchval("SELECT count(*) FROM events")
    while await head_position(conn) < written:
        await sealer.seal_all(conn)
    await conn.close()
    admin = await db.admin()
    await admin.execute("ANALYZE event_log")
    await admin.close()
    return first_model + models


async def read_latencies(db: Database, positions: list[int], *, snapshots: bool) -> list[float]:
    conn = await db.connect()
    latencies = []
    for position in positions:
        t0 = time.perf_counter()
        await registry_as_of(conn, position, snapshots=snapshots)
        latencies.append((time.perf_counter() - t0) * 1000)
    await conn.close()
    return latencies


def latency_row(name: str, latencies: list[float], baseline: str = "", ratio: str = "") -> Row:
    return Row(
        name,
        1000 / (sum(latencies) / len(latencies)),
        "reads/s",
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        baseline=baseline,
        ratio=ratio,
        note=f"{len(latencies)} reads, one at a time",
    )


async def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--sizes", default="6000,60000", help="comma-separated log sizes, ascending")
    p.add_argument("--reads", type=int, default=30, help="random positions read per size")
    args = p.parse_args()
    check_story()
    defaults = Settings()
    every, keep, thin = defaults.snapshot_every, defaults.snapshot_keep, defaults.snapshot_thin
    sizes = [int(s) for s in args.sizes.split(",")]
    table = Table(
        f"Registry-wide as_of: fold from 0 vs from the nearest snapshot"
        f" (every {every}, newest {keep}, older every {every * thin})"
    )
    rng = random.Random(13)
    with postgres(args.database_url) as url:
        async with fresh_database(url) as db:
            next_model, written = 0, 0
            for size in sizes:
                print(f"growing the log to {size:,} events ...", flush=True)
                next_model = await grow_history(db, next_model, size - written)
                conn = await db.connect()
                head = await head_position(conn)
                written = head
                positions = [*sorted(rng.sample(range(1, head), args.reads)), head]
                without = await read_latencies(db, positions, snapshots=False)
                base = table.add(latency_row(f"{head:,} events, from position 0", without))
                t0 = time.perf_counter()
                taken = await take_due_snapshots(
                    conn, REGISTRY_PROJECTIONS, every=every, keep=keep, thin=thin
                )
                seconds = time.perf_counter() - t0
                size_bytes = await conn.fetchval("SELECT pg_total_relation_size('view_snapshots')")
                stored = await conn.fetchval(
                    "SELECT count(DISTINCT log_position) FROM view_snapshots"
                )
                await conn.close()
                table.add(
                    Row(
                        f"{head:,} events, snapshots taken",
                        len(taken) / seconds if seconds else None,
                        "snapshots/s",
                        note=f"{len(taken)} new in {seconds:.1f} s; {stored} kept,"
                        f" {size_bytes / 1e6:.1f} MB",
                    )
                )
                with_snapshots = await read_latencies(db, positions, snapshots=True)
                table.add(
                    latency_row(
                        f"{head:,} events, from the nearest snapshot",
                        with_snapshots,
                        baseline=f"p50 {base.p50_ms:.0f} ms from 0",
                        ratio=f"{percentile(without, 0.5) / percentile(with_snapshots, 0.5):.1f}x",
                    )
                )
    table.print(args.json)


if __name__ == "__main__":
    asyncio.run(main())
