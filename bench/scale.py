"""modelreg at scale: 10,000 models, 1,000,000 versions, 10,000,000 events (issue 17).

    python -m bench.scale [--models 10000] [--versions 100] [--metric-batches 8]
                          [--seconds 3] [--database-url URL] [--json]

1. Builds the history with COPY: every model's events are decided by the real deciders
   (``bench.projections_search``'s history: versions, stage moves, aliases, deprecations;
   then ``--metric-batches`` metric batches per version), encoded and hash-chained exactly
   as ``EventStore.append`` does, and copied into ``events`` 100,000 rows per transaction;
   stream heads and unique names follow, then the real sealer seals the log. The defaults
   make about 10,000,000 events. ``--models 100`` is a quick run of the same shape.
2. Projects every view from position 0 (events/s per view).
3. Measures, one call at a time for ``--seconds`` each: every kind of search
   (``bench.projections_search``'s list; target p99 <= 10 ms), a model page (one model's
   100 newest versions, what the UI and the JSON page read), ``as_of`` of one model at
   random past positions, and the whole registry ``as_of`` from the view snapshots the
   worker keeps; then ``audit verify`` over the whole store, and the database's size.

What must not grow with the log where the work does not: compare a ``--models 100`` run
with a full one. Progress goes to stderr; the table to stdout.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg

from bench.common import Row, Table, fresh_database, parser, percentile, postgres
from bench.projections_search import T0, VERSIONS_PER_MODEL, measure, model_history, project
from eventlog.log import head_position
from eventlog.sealer import Sealer
from eventlog.store import EventStore, Metadata
from eventlog.verify import verify
from events.catalogue import CODEC
from events.envelope import ZERO_HASH, stream_link
from events.metrics import METRICS, LogMetrics, MetricInput
from events.streams import metrics_stream, model_stream, stream_type
from projections.registry_state import (
    REGISTRY_PROJECTIONS,
    all_projections,
    model_as_of,
    registry_as_of,
)
from projections.search import VersionQuery, live_names, search_versions
from projections.snapshots import retained_positions, save_snapshot, snapshot_rows, spacing
from projections.time_travel import folded_views
from service.settings import Settings
from tests.support.database import Database
from tests.support.registry_history import name_keys

ROWS_PER_COPY = 100_000
COLUMNS = ("event_id", "stream_id", "stream_position", "event_type", "envelope", "stream_hash")
Record = tuple[Any, ...]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class History:
    """The log's rows in append order, with what the store keeps beside them: each
    stream's head and hash, and the unique names claimed."""

    def __init__(self, models: int, versions: int, metric_batches: int) -> None:
        self.models = models
        self.versions = versions
        self.metric_batches = metric_batches
        self.store = EventStore(None, CODEC)  # type: ignore[arg-type]  # envelopes only
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.claims: dict[str, str] = {}

    def _records(self, stream: str, events: list[Any], metadata: Metadata) -> Iterator[Record]:
        version, previous = self.heads.get(stream, (0, ZERO_HASH))
        ids = [uuid_for(stream, version + i) for i in range(1, len(events) + 1)]
        envelopes = self.store.envelopes(stream, version, events, metadata, ids)
        for offset, (event_id, event, raw) in enumerate(
            zip(ids, events, envelopes, strict=True), start=1
        ):
            previous = stream_link(previous, raw)
            yield (event_id, stream, version + offset, event.event_type, raw, previous)
        self.heads[stream] = (version + len(events), previous)

    def records(self) -> Iterator[Record]:
        for index in range(self.models):
            model_id, events, state = model_history(index, self.versions)
            stream = model_stream(model_id)
            claim, _ = name_keys(events, state)
            for key in claim:
                self.claims[key] = stream
            at = T0 + timedelta(minutes=index)
            yield from self._records(stream, events, Metadata(actor="alice", occurred_at=at))
            for v in state.versions:
                rng = random.Random(f"{model_id}:{v}")
                for batch in range(self.metric_batches):
                    command = LogMetrics(
                        actor="trainer",
                        now=at + timedelta(hours=1, minutes=batch),
                        model_id=model_id,
                        version=v,
                        metrics=(
                            MetricInput(key="auc", value=round(rng.random(), 4), step=batch),
                            MetricInput(key="loss", value=round(rng.random(), 4), step=batch),
                            MetricInput(
                                key="auc",
                                value=round(rng.random(), 4),
                                dataset="holdout",
                                step=batch,
                            ),
                        ),
                    )
                    yield from self._records(
                        metrics_stream(model_id, v),
                        METRICS.decide(command, METRICS.initial_state()),
                        Metadata(actor="trainer", occurred_at=command.now),
                    )


def uuid_for(stream: str, position: int) -> Any:
    import uuid

    return uuid.uuid5(uuid.NAMESPACE_URL, f"modelreg-bench:{stream}:{position}")


async def build(db: Database, history: History, table: Table) -> int:
    conn = await db.connect()
    t0 = time.perf_counter()
    batch: list[Record] = []
    written = 0

    async def flush() -> None:
        nonlocal written
        async with conn.transaction():
            await conn.execute("SELECT begin_append()")  # appenders announce themselves
            await conn.copy_records_to_table("events", records=batch, columns=COLUMNS)
        written += len(batch)
        batch.clear()
        log(f"  copied {written:,} events ({written / (time.perf_counter() - t0):,.0f}/s)")

    for record in history.records():
        batch.append(record)
        if len(batch) == ROWS_PER_COPY:
            await flush()
    if batch:
        await flush()
    async with conn.transaction():
        last_tx = int(await conn.fetchval("SELECT max(tx_id)::text FROM events"))
        await conn.execute(
            "INSERT INTO streams (stream_id, stream_type, version, last_tx_id, last_hash)"
            " SELECT s, t, v, $4::xid8, h FROM unnest($1::text[], $2::text[], $3::bigint[], $5::bytea[])"
            " AS x(s, t, v, h)",
            list(history.heads),
            [stream_type(s) for s in history.heads],
            [v for v, _ in history.heads.values()],
            last_tx,
            [h for _, h in history.heads.values()],
        )
        await conn.execute(
            "INSERT INTO unique_keys (key, stream_id, tx_id)"
            " SELECT k, s, $3::xid8 FROM unnest($1::text[], $2::text[]) AS x(k, s)",
            list(history.claims),
            list(history.claims.values()),
            last_tx,
        )
    copied = time.perf_counter() - t0
    table.add(
        Row(
            "build: decide, encode, chain and COPY",
            written / copied,
            "events/s",
            note=f"{written:,} events, {len(history.heads):,} streams in {copied:.0f} s",
        )
    )
    t1 = time.perf_counter()
    sealer = Sealer(db.connect, db.schema, batch_size=10_000)
    while await head_position(conn) < written:
        await sealer.seal_all(conn)
        log(f"  sealed {await head_position(conn):,} of {written:,}")
    sealed = time.perf_counter() - t1
    table.add(Row("seal the whole log", written / sealed, "events/s", note=f"{sealed:.0f} s"))
    admin = await db.admin()
    for name in ("events", "event_log", "streams", "unique_keys"):
        await admin.execute(f"VACUUM ANALYZE {name}")
    await admin.close()
    await conn.close()
    return written


async def timed_calls(seconds: float, call: Any) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(latencies) < 3:
        t0 = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


def latency_row(label: str, latencies: list[float], note: str = "") -> Row:
    return Row(
        label,
        1000 / (sum(latencies) / len(latencies)),
        "calls/s",
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        note=note or f"{len(latencies)} calls, one at a time",
    )


async def reads(db: Database, history: History, head: int, seconds: float, table: Table) -> None:
    rng = random.Random(17)
    conn = await db.connect()
    names = live_names()

    async def model_page() -> None:
        model_id = f"m{rng.randrange(history.models):06d}"
        page = await search_versions(
            conn, names, model_id, VersionQuery(order="-version", limit=100)
        )
        assert page.items, model_id

    table.add(
        latency_row("model page: 100 newest versions", await timed_calls(seconds, model_page))
    )

    async def one_model_as_of() -> None:
        model_id = f"m{rng.randrange(history.models):06d}"
        await model_as_of(conn, model_id, rng.randrange(1, head))

    table.add(
        latency_row(
            "as_of: one model, random position", await timed_calls(seconds, one_model_as_of)
        )
    )

    # One snapshot, the newest the worker would hold. The worker's retention (the newest
    # `keep`, then one per every * thin events of log) would hold thousands of full copies
    # of the views over a log this long: taking them all is not a read's cost, and storing
    # them is the finding the table reports (see the closing row).
    defaults = Settings()
    at = head // defaults.snapshot_every * defaults.snapshot_every
    log(f"taking one view snapshot at {at:,} (folds the log into scratch tables) ...")
    t0 = time.perf_counter()
    try:
        async with folded_views(conn, REGISTRY_PROJECTIONS, at, batch=5000) as folded:
            await save_snapshot(conn, REGISTRY_PROJECTIONS, folded, at)
    except asyncpg.PostgresError as exc:
        table.add(Row("view snapshot at the head", None, note=f"failed: {exc}"))
        await conn.close()
        return
    size = await conn.fetchval("SELECT pg_total_relation_size('view_snapshots')")
    taken = worker_positions(head, await snapshot_rows(conn, REGISTRY_PROJECTIONS, at), defaults)
    retained = len(
        retained_positions(
            taken,
            every=defaults.snapshot_every,
            keep=defaults.snapshot_keep,
            thin=defaults.snapshot_thin,
        )
    )
    table.add(
        Row(
            "view snapshot at the head",
            None,
            note=f"one taken in {time.perf_counter() - t0:.0f} s, {size / 1e6:,.0f} MB;"
            f" over the log the worker would take {len(taken):,} (spaced by the registry's"
            f" size, grown evenly with the log) and retention keep {retained:,}",
        )
    )

    async def registry() -> None:
        await registry_as_of(conn, rng.randrange(at, head + 1))

    table.add(
        latency_row(
            "as_of: whole registry, after the snapshot",
            await timed_calls(seconds, registry),
            note=f"positions {at:,}-{head:,}",
        )
    )
    await conn.close()


async def audit(db: Database, table: Table) -> None:
    conn = await db.connect()
    t0 = time.perf_counter()

    def progress(phase: str, done: int) -> None:
        if done % 1_000_000 == 0:
            log(f"  verify: {phase} {done:,}")

    report = await verify(conn, progress=progress)
    seconds = time.perf_counter() - t0
    assert report.ok, report.first_break
    table.add(
        Row(
            "audit verify, whole store",
            report.events_checked / seconds,
            "events/s",
            note=f"{report.events_checked:,} events, {report.log_entries_checked:,} log entries,"
            f" {seconds:.0f} s; ok",
        )
    )
    size = await conn.fetchval("SELECT pg_database_size(current_database())")
    log_size = await conn.fetchval(
        "SELECT pg_total_relation_size('events') + pg_total_relation_size('event_log')"
    )
    table.add(
        Row(
            "Postgres size",
            None,
            note=f"{size / 2**30:,.2f} GiB in all; the log (events + event_log) {log_size / 2**30:,.2f} GiB",
        )
    )
    await conn.close()


def worker_positions(head: int, rows_at_head: int, settings: Settings) -> list[int]:
    """Where the snapshot worker, with ``settings``' spacing, would have taken snapshots
    over a log of ``head`` events whose views grew evenly to ``rows_at_head`` rows."""
    per_event = settings.snapshot_rows_per_event or None
    positions: list[int] = []
    position = 0
    while True:
        rows = rows_at_head * position // head
        gap = spacing(
            rows,
            every=settings.snapshot_every,
            thin=settings.snapshot_thin,
            rows_per_event=per_event,
        )
        position = position // gap * gap + gap
        if position > head:
            return positions
        positions.append(position)


async def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--models", type=int, default=10_000)
    p.add_argument("--versions", type=int, default=100, help="versions per model")
    p.add_argument("--metric-batches", type=int, default=8, help="metric batches per version")
    args = p.parse_args()
    history = History(args.models, args.versions, args.metric_batches)
    table = Table(
        f"modelreg at scale: {args.models:,} models x {args.versions} versions,"
        f" {args.metric_batches} metric batches per version"
    )
    with postgres(args.database_url) as url:
        async with fresh_database(url) as db:
            log("building the history ...")
            head = await build(db, history, table)
            log("projecting every view from position 0 ...")
            await project(db, all_projections(), table)
            log("searches ...")
            # measure() draws models by index from versions // its VERSIONS_PER_MODEL.
            await measure(db, args.models * VERSIONS_PER_MODEL, args.seconds, table)
            log("model page and as_of ...")
            await reads(db, history, head, args.seconds, table)
            log("verifying the whole store ...")
            await audit(db, table)
    table.print(args.json)


if __name__ == "__main__":
    asyncio.run(main())
