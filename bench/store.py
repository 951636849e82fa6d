"""Benchmark the event store and the sealer against raw Postgres inserts, in one run.

    python -m bench.store [--database-url URL] [--seconds 5]

Prints a table: raw single-row INSERT (1 and 32 connections) and executemany(100) as the
baseline, then store appends (1 and 32 writers, 100-event batches), the sealer's rate on a
100k backlog, and seal lag (commit -> in the global log) while writers offer 1,000 events/s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from bench.common import Row, Table, fresh_database, parser, percentile, postgres, run_for
from eventlog.log import head_position
from eventlog.sealer import Sealer
from eventlog.store import EventStore
from tests.support.database import Database
from tests.support.sample_events import CODEC, META, Noted

PAYLOAD = "x" * 200  # an event of roughly registry size once enveloped


async def raw_baseline(db: Database, seconds: float, table: Table) -> dict[str, float]:
    admin = await db.admin()
    await admin.execute(
        "CREATE TABLE raw_rows (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, stream_id text NOT NULL,"
        " body bytea NOT NULL)"
    )
    await admin.execute(f"GRANT INSERT, SELECT ON raw_rows TO {db.app_role}")
    body = PAYLOAD.encode() * 2
    results = {}
    for workers in (1, 32):

        async def insert(w: int) -> int:
            await db.pool.execute(
                "INSERT INTO raw_rows (stream_id, body) VALUES ($1, $2)", f"s{w}", body
            )
            return 1

        rate, lat = await run_for(seconds, workers, insert)
        results[f"insert{workers}"] = rate
        table.add(
            Row(
                f"raw INSERT, 1 row/tx, {workers} conn",
                rate,
                "rows/s",
                percentile(lat, 0.5),
                percentile(lat, 0.99),
            )
        )

    async def many(w: int) -> int:
        async with db.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO raw_rows (stream_id, body) VALUES ($1, $2)", [(f"s{w}", body)] * 100
            )
        return 100

    rate, lat = await run_for(seconds, 1, many)
    results["many"] = rate
    table.add(
        Row(
            "raw executemany, 100 rows/tx, 1 conn",
            rate,
            "rows/s",
            percentile(lat, 0.5),
            percentile(lat, 0.99),
        )
    )
    return results


def _appender(store: EventStore, workers: int, stream: str) -> Callable[[int], Awaitable[int]]:
    """One stream per writer, each appending at the version it last reached."""
    versions = [0] * workers

    async def append(w: int) -> int:
        await store.append(f"b:{stream}:{w}", versions[w], [Noted(text=PAYLOAD)], META)
        versions[w] += 1
        return 1

    return append


async def store_appends(db: Database, seconds: float, table: Table, raw: dict[str, float]) -> None:
    store = EventStore(db.pool, CODEC)
    for workers in (1, 32):
        append = _appender(store, workers, uuid.uuid4().hex[:8])
        rate, lat = await run_for(seconds, workers, append)
        base = raw[f"insert{workers}"]
        table.add(
            Row(
                f"store append, 1 event/call, {workers} writers",
                rate,
                "events/s",
                percentile(lat, 0.5),
                percentile(lat, 0.99),
                f"{base:,.0f} rows/s",
                f"{rate / base:.0%}",
                "target >= 50% at 32",
            )
        )

    batch = [Noted(text=PAYLOAD)] * 100
    version = 0

    async def append_many(w: int) -> int:
        nonlocal version
        await store.append("b:many", version, batch, META)
        version += 100
        return 100

    rate, lat = await run_for(seconds, 1, append_many)
    table.add(
        Row(
            "store append, 100 events/call",
            rate,
            "events/s",
            percentile(lat, 0.5),
            percentile(lat, 0.99),
            f"{raw['many']:,.0f} rows/s",
            f"{rate / raw['many']:.0%}",
            "target >= 50%",
        )
    )


async def sealer_rate(db: Database, table: Table) -> None:
    # Seal whatever the append runs left first, so the measured backlog is exactly 100k.
    sealer = Sealer(db.connect, db.schema)
    conn = await db.connect()
    await sealer.seal_all(conn)
    store = EventStore(db.pool, CODEC)
    batch = [Noted(text=PAYLOAD)] * 500
    print("  filling a 100,000-event backlog ...", flush=True)
    for i in range(200):
        await store.append(f"b:backlog:{i % 50}", (i // 50) * 500, batch, META)
    t0 = time.perf_counter()
    sealed = await sealer.seal_all(conn)
    elapsed = time.perf_counter() - t0
    assert sealed == 100_000, sealed
    table.add(Row("sealer, 100k backlog", sealed / elapsed, "events/s", note="target >= 20,000/s"))


async def seal_lag(db: Database, seconds: float, table: Table) -> None:
    """Commit -> in the log, measured by one watcher tailing the log, not by polling per event."""
    sealer = Sealer(db.connect, db.schema)
    stop = asyncio.Event()
    task = asyncio.create_task(sealer.run(stop))
    store = EventStore(db.pool, CODEC, on_append=lambda _: sealer.wake())
    committed_at: dict[int, float] = {}
    sealed_at: dict[int, float] = {}
    lags: list[float] = []
    offered, writers = 1000, 8
    interval = writers / offered
    writing = True

    async def writer(w: int) -> None:
        version = 0
        next_at = time.perf_counter()
        deadline = next_at + seconds
        while next_at < deadline:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += interval
            result = await store.append(f"b:lag:{w}", version, [Noted(text=PAYLOAD)], META)
            now = time.perf_counter()
            # The watcher may have seen it sealed before this task resumed: a lag of ~0.
            if sealed_at.pop(result.last_seq, None) is not None:
                lags.append(0.0)
            else:
                committed_at[result.last_seq] = now
            version = result.stream_version

    conn = await db.connect()
    start_position = await head_position(conn)

    async def watcher() -> None:
        position = start_position
        while writing or committed_at:
            rows = await conn.fetch(
                "SELECT log_position, seq FROM event_log WHERE log_position > $1 ORDER BY 1",
                position,
            )
            now = time.perf_counter()
            for row in rows:
                started = committed_at.pop(row["seq"], None)
                if started is not None:
                    lags.append((now - started) * 1000)
                else:
                    sealed_at[row["seq"]] = now
                position = row["log_position"]
            await asyncio.sleep(0.001)

    watching = asyncio.create_task(watcher())
    await asyncio.gather(*(writer(w) for w in range(writers)))
    writing = False
    done, _ = await asyncio.wait([watching], timeout=60)
    unsealed = len(committed_at)
    if not done:
        watching.cancel()
    stop.set()
    await task
    note = "target p99 <= 50 ms" + (f"; {unsealed} not sealed within 60 s" if unsealed else "")
    table.add(
        Row(
            f"seal lag, {offered} events/s offered",
            len(lags) / seconds,
            "events/s",
            percentile(lags, 0.5),
            percentile(lags, 0.99),
            note=note,
        )
    )


async def main() -> None:
    args = parser(__doc__ or "").parse_args()
    table = Table("Event store vs raw Postgres (same server, same run)")
    with postgres(args.database_url) as url:
        async with fresh_database(url) as db:
            raw = await raw_baseline(db, args.seconds, table)
            await store_appends(db, args.seconds, table, raw)
            await sealer_rate(db, table)
            await seal_lag(db, args.seconds, table)
    table.print(args.json)


if __name__ == "__main__":
    asyncio.run(main())
