"""Benchmark the projections (issue 4, all but search), in one run.

    python -m bench.projections [--database-url URL] [--events 1000000] [--seconds 10]

1. Writes ``--events`` realistic registry events through the store in big appends (models,
   versions with their promotion, alias move, demotion and deployment, and metric batches)
   and seals them.
2. Raw read rate of the global log (``read_log``, 5,000 per batch, envelopes decoded by
   msgspec): the baseline.
3. Rebuild rate: for every projection of the package (``all_projections``), a new
   generation timed from position 0 to the switch with ``step`` loops; events/s over the
   log, and the client's peak RSS. (The live generation is marked at the head first so the
   run times the rebuild alone, not a live catch-up as well.)
4. Live lag while writers offer 1,000 events/s: commit -> visible in every view (the
   least live checkpoint has passed the event), with a sealer and a projection worker
   running as ``modelreg serve`` runs them.

Targets: rebuild >= 15,000 events/s and >= 10% of the raw read rate; live lag p99 <= 100 ms.
"""

from __future__ import annotations

import asyncio
import itertools
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import psutil  # type: ignore[import-untyped]

from bench.common import Row, Table, fresh_database, parser, percentile, postgres
from eventlog.db import connect
from eventlog.log import head_position, read_log
from eventlog.sealer import Sealer, sealed_channel
from eventlog.store import EventStore, Metadata
from events.base import Event
from events.catalogue import CODEC
from events.metrics import MetricPoint, MetricsLogged
from events.model.decider import MODEL
from events.model.events import (
    AliasSet,
    DeploymentStarted,
    DeploymentSucceeded,
    ModelRegistered,
    PromotionApproved,
    PromotionExecuted,
    PromotionRequested,
    StageTransitioned,
    VersionRegistered,
)
from events.stages import Stage, TransitionKind
from events.streams import MODEL_TYPE, metrics_stream, model_stream, stream_type
from events.version_content import content_digest
from projections.base import Projection
from projections.registry_state import all_projections
from projections.runner import ProjectionWorker, ensure_projection, generations, start_rebuild, step
from tests.support.database import Database
from tests.unit.domain_helpers import content

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
VERSIONS_PER_MODEL = 20
METRIC_BATCHES = 30  # per version
POINTS = 10  # per metric batch
EVENTS_PER_VERSION = 10 + METRIC_BATCHES  # model-stream events (9 for v1) + metric batches
CONTENT = content(1)
DIGEST = content_digest(CONTENT)

Append = tuple[str, list[Event], str, datetime]


# ---------------------------------------------------------------- a realistic history


def version_story(model_id: str, v: int, at: datetime) -> list[Append]:
    """Version ``v``: registered, metrics logged, staged, promoted to production with the
    champion alias through one approval (demoting v-1), deployed following the alias."""
    previous = v - 1 or None
    promoted: list[Event] = [
        PromotionApproved(request_id=f"r{v}", approved_by="bob", comment="ship it"),
        PromotionExecuted(
            request_id=f"r{v}",
            version=v,
            from_stage=Stage.STAGING,
            target_stage=Stage.PRODUCTION,
            alias="champion",
            approved_by=("bob",),
            approvals_required=1,
            rules=("transition:staging->production",),
            gate_results=(),
        ),
        AliasSet(
            alias="champion",
            version=v,
            previous_version=previous,
            comment="ship it",
            request_id=f"r{v}",
        ),
    ]
    if previous is not None:
        promoted.append(
            StageTransitioned(
                version=previous,
                from_stage=Stage.PRODUCTION,
                to_stage=Stage.ARCHIVED,
                kind=TransitionKind.DEMOTION,
                comment="ship it",
                request_id=f"r{v}",
            )
        )
    promoted.append(
        StageTransitioned(
            version=v,
            from_stage=Stage.STAGING,
            to_stage=Stage.PRODUCTION,
            kind=TransitionKind.PROMOTION,
            comment="ship it",
            request_id=f"r{v}",
        )
    )
    governance: list[Event] = [
        VersionRegistered(
            version=v,
            content=CONTENT,
            content_digest=DIGEST,
            registered_by="carol",
            description=f"v{v}",
            tags={"team": "risk"},
        ),
        StageTransitioned(
            version=v,
            from_stage=Stage.DEVELOPMENT,
            to_stage=Stage.STAGING,
            kind=TransitionKind.DIRECT,
            comment="tests pass",
        ),
        PromotionRequested(
            request_id=f"r{v}",
            version=v,
            target_stage=Stage.PRODUCTION,
            alias="champion",
            justification="auc up",
            requested_by="alice",
            expires_at=at + timedelta(days=7),
            approvals_required=1,
        ),
        *promoted,
        DeploymentStarted(
            deployment_id=f"d{v}",
            version=v,
            environment="prod",
            target="api",
            desired_alias="champion",
        ),
        DeploymentSucceeded(
            deployment_id=f"d{v}", replaced_deployment_id=f"d{previous}" if previous else None
        ),
    ]
    metrics: list[Event] = [
        MetricsLogged(
            model_id=model_id,
            version=v,
            metrics=tuple(
                MetricPoint(key=f"m{k}", value=0.5 + k / 100 + b / 1000, step=b, timestamp=at)
                for k in range(POINTS)
            ),
        )
        for b in range(METRIC_BATCHES)
    ]
    return [
        (metrics_stream(model_id, v), metrics, "trainer", at),
        (model_stream(model_id), governance, "alice", at),
    ]


def model_story(index: int, versions: int) -> Iterator[Append]:
    model_id = f"m{index:06d}"
    at = T0 + timedelta(minutes=index)
    yield (
        model_stream(model_id),
        [
            ModelRegistered(
                model_id=model_id,
                name=f"model-{index}",
                description="",
                tags={"team": "risk"},
                owner="team-risk",
            )
        ],
        "alice",
        at,
    )
    for v in range(1, versions + 1):
        yield from version_story(model_id, v, at + timedelta(hours=v))


def check_story() -> None:
    """The synthetic history is one the domain could have produced: it folds cleanly."""
    history = [
        e
        for stream, events, _, _ in model_story(0, 3)
        if stream_type(stream) == MODEL_TYPE
        for e in events
    ]
    state = MODEL.fold(history)  # type: ignore[arg-type]
    assert state.production == 3, state
    assert state.aliases == {"champion": 3}, state


async def write_history(db: Database, events: int, writers: int = 8) -> int:
    store = EventStore(db.pool, CODEC)
    models = max(1, events // (VERSIONS_PER_MODEL * EVENTS_PER_VERSION))
    written = 0
    t0 = time.perf_counter()

    async def writer(w: int) -> None:
        nonlocal written
        for index in range(w, models, writers):
            versions: dict[str, int] = {}
            for stream, batch, actor, at in model_story(index, VERSIONS_PER_MODEL):
                result = await store.append(
                    stream, versions.get(stream, 0), batch, Metadata(actor=actor, occurred_at=at)
                )
                versions[stream] = result.stream_version
                written += len(batch)
            if index % 100 == 0:
                print(
                    f"  written {written:,} events ({written / (time.perf_counter() - t0):,.0f}/s)",
                    flush=True,
                )

    sealer = Sealer(db.connect, db.schema)
    stop = asyncio.Event()
    sealing = asyncio.create_task(sealer.run(stop))
    await asyncio.gather(*(writer(w) for w in range(writers)))
    stop.set()
    await sealing
    conn = await db.connect()
    while await head_position(conn) < written:
        await sealer.seal_all(conn)
        await asyncio.sleep(0.01)
    print(
        f"  {written:,} events written and sealed in {time.perf_counter() - t0:.0f} s", flush=True
    )
    # Statistics, as autovacuum would have gathered them on a live system: without them the
    # planner sorts the rest of the log for every batch read_log asks for.
    admin = await db.admin()
    await admin.execute("ANALYZE events")
    await admin.execute("ANALYZE event_log")
    return written


# ---------------------------------------------------------------- measurements


async def raw_read(db: Database, table: Table) -> float:
    conn = await db.connect()
    t0 = time.perf_counter()
    after, count = 0, 0
    while events := await read_log(conn, after, 5000):
        count += len(events)
        after = events[-1].log_position
    rate = count / (time.perf_counter() - t0)
    table.add(
        Row(
            "raw read of the global log (read_log, 5,000/batch, msgspec)",
            rate,
            "events/s",
            note=f"{count:,} events",
        )
    )
    return rate


async def _rebuild(conn: asyncpg.Connection, projection: Projection, head: int) -> float:
    """Time one projection's rebuild from position 0 to the switch; return seconds."""
    await ensure_projection(conn, projection)
    # Time the rebuild alone: the live generation stands at the head (its tables stay
    # empty; it is dropped at the switch), so `step` only advances the new generation.
    await conn.execute(
        "UPDATE projection_checkpoints SET log_position = $1 WHERE projection = $2 AND status = 'live'",
        head,
        projection.name,
    )
    generation = await start_rebuild(conn, projection)
    t0 = time.perf_counter()
    while await step(conn, projection, rebuild_batch=5000):
        pass
    seconds = time.perf_counter() - t0
    assert [(g.generation, g.status) for g in await generations(conn, projection.name)] == [
        (generation, "live")
    ]
    return seconds


async def rebuild_all(
    db: Database, projections: list[Projection], table: Table, raw_rate: float
) -> None:
    conn = await db.connect()
    head = await head_position(conn)
    process = psutil.Process()
    peak = process.memory_info().rss
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    total = 0.0
    for projection in projections:
        seconds = await _rebuild(conn, projection, head)
        total += seconds
        table.add(
            Row(
                f"rebuild {projection.name}",
                head / seconds,
                "events/s",
                baseline=f"{raw_rate:,.0f} raw read/s",
                ratio=f"{head / seconds / raw_rate:.0%}",
                note=f"{seconds:.1f} s for the log; handles {len(projection.handles)} types",
            )
        )
    rate = head / total
    table.add(
        Row(
            f"rebuild, all {len(projections)} views in turn (one connection)",
            rate,
            "events/s",
            baseline=f"{raw_rate:,.0f} raw read/s",
            ratio=f"{rate / raw_rate:.0%}",
            note=f"{total:.1f} s; peak RSS {peak / 2**20:,.0f} MB",
        )
    )
    # All at once, a connection each, as `modelreg projections rebuild --all` does.
    conns = [await db.connect() for _ in projections]
    t0 = time.perf_counter()
    await asyncio.gather(*(_rebuild(c, p, head) for c, p in zip(conns, projections, strict=True)))
    seconds = time.perf_counter() - t0
    sampling = False
    await sampler
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table.add(
        Row(
            f"rebuild, all {len(projections)} views at once (a connection each)",
            head / seconds,
            "events/s",
            baseline=f"{raw_rate:,.0f} raw read/s",
            ratio=f"{head / seconds / raw_rate:.0%}",
            note=f"{seconds:.1f} s; peak RSS {peak / 2**20:,.0f} MB during rebuilds ({max_rss:,.0f} MB whole run)",
        )
    )


async def settle(url: str) -> None:
    """Let Postgres reach a steady state after the bulk load and the rebuilds: flush the
    dirty pages, vacuum and analyse, and wait until no autovacuum worker runs. Otherwise
    the live-lag phase measures a checkpoint of a million fresh rows on two cores, not
    the projections."""
    conn = await asyncpg.connect(url)
    try:
        print("settling: CHECKPOINT, VACUUM ANALYZE, waiting for autovacuum ...", flush=True)
        await conn.execute("CHECKPOINT")
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
        autovacuum = (
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
        )
        while await conn.fetchval(autovacuum):  # noqa: ASYNC110 - polling the server
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


@dataclass
class LiveLoad:
    """Writers offering ``offered`` events/s in small appends for ``seconds``, and a watcher
    timing each append from its commit to the moment every view has passed it."""

    store: EventStore
    first_model: int
    seconds: float
    offered: int = 1000
    writers: int = 20
    committed_at: dict[int, float] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)
    seal_lags: list[float] = field(default_factory=list)
    written: int = 0
    writing: bool = True

    def appends(self, w: int) -> Iterator[Append]:
        # Small appends, as the API makes them: one command's events at a time.
        for index in itertools.count(self.first_model + w, self.writers):
            for stream, events, actor, at in model_story(index, VERSIONS_PER_MODEL):
                for start in range(0, len(events), 3):
                    yield stream, events[start : start + 3], actor, at

    async def write(self, w: int) -> None:
        versions: dict[str, int] = {}
        interval = self.writers / self.offered * 2  # appends average two events
        next_at = time.perf_counter()
        deadline = next_at + self.seconds
        for stream, batch, actor, at in self.appends(w):
            if next_at >= deadline:
                return
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += interval * len(batch) / 2
            result = await self.store.append(
                stream, versions.get(stream, 0), batch, Metadata(actor=actor, occurred_at=at)
            )
            self.committed_at[result.last_seq] = time.perf_counter()
            versions[stream] = result.stream_version
            self.written += len(batch)

    async def watch(self, conn: asyncpg.Connection, names: list[str]) -> None:
        # Map each append's last event to its log position, then wait for every view to pass it.
        # A seq may be sealed before its writer records the commit time: remember them all.
        position = await head_position(conn)
        sealed: dict[int, tuple[int, float]] = {}
        waiting: list[tuple[int, float]] = []
        while self.writing or self.committed_at or waiting:
            rows = await conn.fetch(
                "SELECT log_position, seq FROM event_log WHERE log_position > $1 ORDER BY 1",
                position,
            )
            seen_at = time.perf_counter()
            for row in rows:
                position = row["log_position"]
                sealed[row["seq"]] = (position, seen_at)
            for seq in [s for s in self.committed_at if s in sealed]:
                at, seen = sealed[seq]
                started = self.committed_at.pop(seq)
                self.seal_lags.append(max(0.0, seen - started) * 1000)
                waiting.append((at, started))
            visible = await conn.fetchval(
                "SELECT min(log_position) FROM projection_checkpoints WHERE status = 'live' AND projection = ANY($1)",
                names,
            )
            now = time.perf_counter()
            self.lags.extend((now - started) * 1000 for pos, started in waiting if pos <= visible)
            waiting = [(pos, started) for pos, started in waiting if pos > visible]
            await asyncio.sleep(0.002)


async def live_lag(
    db: Database,
    projections: list[Projection],
    seconds: float,
    table: Table,
    first_model: int,
    *,
    per_view: bool,
) -> None:
    """Commit -> visible in every view, while writers offer 1,000 events/s. One worker for
    all views (as ``modelreg serve`` runs them), or one worker per view (own connections)."""
    sealer = Sealer(db.connect, db.schema)
    stop = asyncio.Event()
    store = EventStore(db.pool, CODEC, on_append=lambda _: sealer.wake())
    groups = [[p] for p in projections] if per_view else [projections]

    async def worker_connection() -> asyncpg.Connection:
        # As the runtime connects its projection worker: views are replayable, so their
        # commits need not wait for the WAL flush.
        return await connect(
            db.url,
            schema=db.schema,
            app_role=db.app_role,
            name="bench-projections",
            synchronous_commit=False,
        )

    workers = [
        ProjectionWorker(
            worker_connection, db.schema, group, channel=sealed_channel(db.schema), batch=1000
        )
        for group in groups
    ]
    tasks = [
        asyncio.create_task(sealer.run(stop)),
        *(asyncio.create_task(w.run(stop)) for w in workers),
    ]
    conn = await db.connect()
    names = [p.name for p in projections]
    while sum(len(w.leading) for w in workers) < len(projections):  # noqa: ASYNC110 - polling a plain set
        await asyncio.sleep(0.05)

    load = LiveLoad(store, first_model, seconds)
    watching = asyncio.create_task(load.watch(conn, names))
    t0 = time.perf_counter()
    await asyncio.gather(*(load.write(w) for w in range(load.writers)))
    elapsed = time.perf_counter() - t0
    load.writing = False
    await asyncio.wait_for(watching, 60)
    stop.set()
    await asyncio.gather(*tasks)
    layout = "a worker per view" if per_view else "one worker"
    table.add(
        Row(
            f"live lag, {load.offered:,} events/s offered, {len(projections)} views, {layout}",
            load.written / elapsed,
            "events/s",
            percentile(load.lags, 0.5),
            percentile(load.lags, 0.99),
            note=f"commit -> visible in every view; target p99 <= 100 ms; {len(load.lags):,} appends;"
            f" of which commit -> sealed p50 {percentile(load.seal_lags, 0.5):.0f} / p99"
            f" {percentile(load.seal_lags, 0.99):.0f} ms",
        )
    )


async def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--events", type=int, default=1_000_000, help="size of the history to rebuild")
    p.add_argument(
        "--only", default="", help="comma-separated projection names (default: all of them)"
    )
    p.set_defaults(seconds=10.0)
    args = p.parse_args()
    check_story()
    projections = all_projections()
    if args.only:
        wanted = set(args.only.split(","))
        projections = [p for p in projections if p.name in wanted]
    table = Table(
        f"Projections: rebuild and live lag over {args.events:,} events ({len(projections)} views)"
    )
    with postgres(args.database_url) as url:
        async with fresh_database(url) as db:
            print(f"writing {args.events:,} events ...", flush=True)
            written = await write_history(db, args.events)
            raw_rate = await raw_read(db, table)
            await rebuild_all(db, projections, table, raw_rate)
            models = written // (VERSIONS_PER_MODEL * EVENTS_PER_VERSION) + 1
            await settle(url)
            await live_lag(
                db, projections, args.seconds, table, first_model=models + 10, per_view=False
            )
            await live_lag(
                db, projections, args.seconds, table, first_model=models + 10_000, per_view=True
            )
    table.print(args.json)


if __name__ == "__main__":
    asyncio.run(main())
