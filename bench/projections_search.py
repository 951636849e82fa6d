"""Benchmark search (issue 4, search part): latency per query kind over 100,000 versions.

    python -m bench.projections_search [--database-url URL] [--versions 100000] [--seconds 3]

1. Builds the registry with real events: each model's history (registration, versions,
   stage moves with demotions, aliases, a deprecation) is decided by ``events.model.decider.MODEL``
   in memory and appended through the store in batches of up to 500 events; every version
   gets one metric batch (auc, loss, auc and f1 on ``holdout``) through its own metrics
   stream, 16 appends in flight. Then seals, and projects the catalogue, versions and
   metric history views from position 0 (their rates are reported too).
2. ``VACUUM ANALYZE`` (what autovacuum does on a live system), then for each query kind runs
   searches with varied parameters, one at a time, for ``--seconds``: rate and p50/p99 of
   the whole call (SQL, row decoding, the metrics of the page, the cursor), the client's
   CPU per call, and the server's share: planning + execution time of the call's
   statements as ``EXPLAIN ANALYZE`` reports them (30 samples), which a shared machine's
   load hardly moves. Baseline: a primary-key fetch of one version row, raw asyncpg.

Target: search p99 <= 10 ms. Pages are 50 rows.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from msgspec.structs import replace

from bench.common import Row, Table, fresh_database, parser, percentile, postgres
from eventlog.log import head_position
from eventlog.sealer import Sealer
from eventlog.store import EventStore, Metadata
from events.base import Command, Event
from events.catalogue import CODEC
from events.metrics import METRICS, LogMetrics, MetricInput
from events.model.commands import (
    ApprovePromotion,
    DeprecateVersion,
    RegisterModel,
    RegisterVersion,
    RequestPromotion,
    SetAlias,
    TransitionStage,
)
from events.model.decider import MODEL
from events.model.state import ModelState
from events.policy import DEFAULT_POLICY
from events.stages import Stage
from events.streams import metrics_stream, model_stream
from projections.base import Projection
from projections.runner import ensure_projection, generations, step
from projections.search import ModelQuery, VersionQuery, live_names, search_models, search_versions
from projections.views.metric_history import METRIC_HISTORY
from projections.views.model_catalogue import CATALOGUE, get_model_by_name
from projections.views.model_versions import VERSIONS, get_version
from tests.support.database import Database
from tests.support.registry_history import name_keys, version_content

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
VERSIONS_PER_MODEL = 50
STEMS = (
    "fraud",
    "churn",
    "ranker",
    "vision",
    "nlp-intent",
    "pricing",
    "credit-risk",
    "search-rerank",
)
REGIONS = ("eu", "us", "apac")
OWNERS = tuple(f"team-{i}" for i in range(20))
ALIASES = ("champion", "challenger", "canary")


# ---------------------------------------------------------------- the registry


def model_name(index: int) -> str:
    return f"{STEMS[index % len(STEMS)]}-{REGIONS[index // len(STEMS) % len(REGIONS)]}-{index:05d}"


def model_history(index: int, versions: int) -> tuple[str, list[Event], ModelState]:
    """One model's events, each command decided by the real decider against the state so far."""
    model_id = f"m{index:06d}"
    state = MODEL.initial_state()
    events: list[Event] = []
    now = T0 + timedelta(minutes=index)

    def run(cls: type[Command], actor: str = "alice", **fields: Any) -> None:
        nonlocal state, now
        now += timedelta(seconds=30)
        command = cls(actor=actor, now=now, **fields)
        decided = MODEL.decide(command, state)  # type: ignore[arg-type]
        state = MODEL.fold(decided, state)
        events.extend(decided)

    rng = random.Random(index)
    owner = rng.choice(OWNERS)  # not a function of the name: owners and names are independent
    run(
        RegisterModel,
        model_id=model_id,
        name=model_name(index),
        owner=owner,
        tags={"team": owner, "tier": rng.choice(("gold", "silver", "bronze"))},
    )
    for v in range(1, versions + 1):
        run(
            RegisterVersion,
            content=version_content(
                model_name(index), v, {"lr": rng.choice((0.1, 0.01))}, ["train"]
            ),
            tags={"framework": rng.choice(("xgboost", "torch", "sklearn")), "run": f"r{v % 7}"},
        )
        if v % 10 == 0:  # staged then promoted: the previous production version is archived
            run(TransitionStage, registry_policy=DEFAULT_POLICY, version=v, to_stage=Stage.STAGING)
            # Production needs a second person's approval under the default policy.
            run(
                RequestPromotion,
                registry_policy=DEFAULT_POLICY,
                request_id=f"{model_id}-r{v}",
                version=v,
                target_stage=Stage.PRODUCTION,
                alias="champion",
                justification="auc up",
            )
            run(
                ApprovePromotion,
                actor="bob",
                registry_policy=DEFAULT_POLICY,
                request_id=f"{model_id}-r{v}",
                comment="checked",
            )
        elif v % 7 == 0:
            run(TransitionStage, registry_policy=DEFAULT_POLICY, version=v, to_stage=Stage.STAGING)
            run(SetAlias, registry_policy=DEFAULT_POLICY, alias="challenger", version=v)
        elif v % 5 == 0:
            run(TransitionStage, registry_policy=DEFAULT_POLICY, version=v, to_stage=Stage.ARCHIVED)
        elif v % 13 == 0:
            run(DeprecateVersion, version=v, reason="leaky feature")
    run(SetAlias, registry_policy=DEFAULT_POLICY, alias="canary", version=versions)
    return model_id, events, state


async def build(db: Database, versions: int) -> int:
    store = EventStore(db.pool, CODEC)
    models = max(1, versions // VERSIONS_PER_MODEL)
    t0 = time.perf_counter()
    written = 0
    metric_jobs: list[tuple[str, int]] = []
    for index in range(models):
        model_id, events, state = model_history(index, VERSIONS_PER_MODEL)
        stream, version = model_stream(model_id), 0
        meta = Metadata(actor="alice", occurred_at=T0 + timedelta(minutes=index))
        for start in range(0, len(events), 500):
            chunk = events[start : start + 500]
            claim, release = name_keys(chunk, state)
            result = await store.append(stream, version, chunk, meta, claim=claim, release=release)
            version = result.stream_version
        written += len(events)
        metric_jobs += [(model_id, v) for v in state.versions]
    print(
        f"  {models:,} models, {written:,} model events in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    t1 = time.perf_counter()
    jobs = iter(metric_jobs)

    async def writer() -> None:
        for model_id, v in jobs:
            rng = random.Random(f"{model_id}:{v}")
            command = LogMetrics(
                actor="trainer",
                now=T0 + timedelta(days=1),
                model_id=model_id,
                version=v,
                metrics=(
                    MetricInput(key="auc", value=round(rng.random(), 4)),
                    MetricInput(key="loss", value=round(rng.random(), 4)),
                    MetricInput(key="auc", value=round(rng.random(), 4), dataset="holdout"),
                    MetricInput(key="f1", value=round(rng.random(), 4), dataset="holdout"),
                ),
            )
            events = METRICS.decide(command, METRICS.initial_state())
            await store.append(
                metrics_stream(model_id, v),
                0,
                events,
                Metadata(actor="trainer", occurred_at=command.now),
            )

    await asyncio.gather(*(writer() for _ in range(16)))
    written += len(metric_jobs)
    print(f"  {len(metric_jobs):,} metric batches in {time.perf_counter() - t1:.0f} s", flush=True)

    conn = await db.connect()
    sealer = Sealer(db.connect, db.schema)
    while await head_position(conn) < written:
        await sealer.seal_all(conn)
        await asyncio.sleep(0.01)
    print(
        f"  {written:,} events written and sealed in {time.perf_counter() - t0:.0f} s", flush=True
    )
    return written


async def project(db: Database, projections: list[Projection], table: Table) -> None:
    conn = await db.connect()
    head = await head_position(conn)
    for projection in projections:
        await ensure_projection(conn, projection)
        t0 = time.perf_counter()
        while await step(conn, projection, batch=5000):
            pass
        seconds = time.perf_counter() - t0
        table.add(
            Row(
                f"project {projection.name} from 0",
                head / seconds,
                "events/s",
                note=f"{head:,} events in the log, {seconds:.1f} s",
            )
        )
    for projection in projections:
        live = next(g for g in await generations(conn, projection.name) if g.status == "live")
        for sql_name in projection.generation_names(live.generation).values():
            # The steady state autovacuum reaches after a rebuild: statistics, visibility map.
            await conn.execute(f"VACUUM ANALYZE {sql_name}")


# ---------------------------------------------------------------- the searches

# A search kind: run one query of the kind on ``conn`` with parameters drawn from ``rng``;
# return how many rows it found.
Search = Callable[[Any, random.Random], Awaitable[int]]


async def _cursors(conn: Any, names: Any, query: VersionQuery, pages: int) -> list[str]:
    """The cursors of the first ``pages`` pages after the first (fewer in a small registry)."""
    cursors: list[str] = []
    page = await search_versions(conn, names, None, query)
    while page.next_cursor is not None and len(cursors) < pages:
        cursors.append(page.next_cursor)
        page = await search_versions(conn, names, None, replace(query, cursor=page.next_cursor))
    return cursors


def searches(models: int) -> list[tuple[str, Search]]:
    names = live_names()

    def name(rng: random.Random) -> str:
        return model_name(rng.randrange(models))

    def vq(**fields: Any) -> Search:
        async def run(conn: Any, rng: random.Random) -> int:
            filled = {k: v(rng) if callable(v) else v for k, v in fields.items()}
            model_id = filled.pop("model_id", None)
            page = await search_versions(conn, names, model_id, VersionQuery(**filled))
            return len(page.items)

        return run

    def mq(**fields: Any) -> Search:
        async def run(conn: Any, rng: random.Random) -> int:
            page = await search_models(
                conn,
                names,
                ModelQuery(**{k: v(rng) if callable(v) else v for k, v in fields.items()}),
            )
            return len(page.items)

        return run

    deep: list[str] = []
    archived = VersionQuery(stages=(Stage.ARCHIVED,))

    async def deep_page(conn: Any, rng: random.Random) -> int:
        # A page far into a broad search: the cursor makes it as cheap as the first.
        if not deep:
            deep.extend(await _cursors(conn, names, archived, 40))
        page = await search_versions(
            conn, names, None, replace(archived, cursor=rng.choice(deep[len(deep) // 2 :]))
        )
        return len(page.items)

    async def by_name(conn: Any, rng: random.Random) -> int:
        return 1 if await get_model_by_name(conn, names, name(rng)) else 0

    async def one_version(conn: Any, rng: random.Random) -> int:
        return (
            1
            if await get_version(conn, names, f"m{rng.randrange(models):06d}", rng.randrange(1, 51))
            else 0
        )

    async def baseline(conn: Any, rng: random.Random) -> int:
        row = await conn.fetchrow(
            "SELECT * FROM model_versions WHERE model_id = $1 AND version = $2",
            f"m{rng.randrange(models):06d}",
            rng.randrange(1, 51),
        )
        return 1 if row else 0

    model_id = lambda rng: f"m{rng.randrange(models):06d}"  # noqa: E731
    threshold = lambda rng: (f"auc[holdout]>{rng.choice((0.5, 0.9, 0.99))}",)  # noqa: E731
    return [
        ("baseline: raw PK fetch of one version row", baseline),
        ("get_model_by_name", by_name),
        ("get_version (with its metrics)", one_version),
        ("models: list by name", mq()),
        ("models: q substring", mq(q=lambda rng: rng.choice(STEMS)[1:5])),
        ("models: q prefix (fraud*)", mq(q=lambda rng: rng.choice(STEMS)[:4] + "*")),
        ("models: tag tier=gold, -updated", mq(tags=("tier=gold",), order="-updated")),
        ("models: owner", mq(owner=lambda rng: rng.choice(OWNERS))),
        ("models: has a production version", mq(stages=(Stage.PRODUCTION,), order="-created")),
        ("models: metric auc[holdout]>x", mq(metrics=threshold)),
        ("versions: all, -created", vq()),
        ("versions: one model, -version", vq(model_id=model_id, order="-version")),
        ("versions: q substring", vq(q=lambda rng: name(rng)[-8:])),
        (
            "versions: q prefix",
            vq(q=lambda rng: rng.choice(STEMS) + "-" + rng.choice(REGIONS) + "*"),
        ),
        ("versions: tag framework=torch", vq(tags=("framework=torch",))),
        ("versions: stage production", vq(stages=(Stage.PRODUCTION,))),
        ("versions: alias champion", vq(alias="champion")),
        ("versions: owner", vq(owner=lambda rng: rng.choice(OWNERS))),
        ("versions: owner, by name", vq(owner=lambda rng: rng.choice(OWNERS), order="name")),
        ("versions: metric auc[holdout]>x", vq(metrics=threshold)),
        ("versions: order -metric:auc[holdout]", vq(order="-metric:auc[holdout]")),
        (
            "versions: metric range, by metric",
            vq(metrics=("auc>0.3", "auc<0.31"), order="metric:auc"),
        ),
        ("versions: page 21-41 of stage archived", deep_page),
        ("versions: with content", vq(with_content=True)),
        (
            "combined: q + stage + metric",
            vq(
                q=lambda rng: rng.choice(STEMS),
                stages=(Stage.STAGING,),
                metrics=("auc[holdout]>=0.5",),
            ),
        ),
    ]


class Capture:
    """A connection that records each statement, so its server time can be measured."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.calls.append((sql, args))
        return await self.conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        self.calls.append((sql, args))
        return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.calls.append((sql, args))
        return await self.conn.fetchval(sql, *args)


async def server_ms(conn: asyncpg.Connection, search: Search, rng: random.Random) -> float:
    """Planning + execution time Postgres reports for one search's statements (EXPLAIN
    ANALYZE of a second run): the part of the latency that does not depend on the client."""
    capture = Capture(conn)
    await search(capture, rng)
    total = 0.0
    for sql, args in capture.calls:
        plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))[0]
        total += plan["Planning Time"] + plan["Execution Time"]
    return total


async def measure(db: Database, versions: int, seconds: float, table: Table) -> None:
    models = max(1, versions // VERSIONS_PER_MODEL)
    conn = await db.connect()
    worst = 0.0
    for label, search in searches(models):
        rng = random.Random(label)
        await search(db.pool, rng)  # prepared statements, first-page cursors
        latencies: list[float] = []
        found = 0
        cpu = time.process_time()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            found += await search(db.pool, rng)
            latencies.append((time.perf_counter() - t0) * 1000)
        cpu_ms = (time.process_time() - cpu) * 1000 / len(latencies)
        server = [await server_ms(conn, search, rng) for _ in range(30)]
        p99 = percentile(latencies, 0.99)
        if not label.startswith(("baseline", "combined")):
            worst = max(worst, p99)
        table.add(
            Row(
                label,
                len(latencies) / seconds,
                "queries/s",
                percentile(latencies, 0.5),
                p99,
                note=f"{found / len(latencies):.0f} rows; client CPU {cpu_ms:.1f} ms; server p50/max"
                f" {percentile(server, 0.5):.1f}/{max(server):.1f} ms",
            )
        )
    table.add(Row("worst single-kind search p99", None, "", p99_ms=worst, note="target <= 10 ms"))


async def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument(
        "--versions", type=int, default=100_000, help="how many versions the registry holds"
    )
    p.set_defaults(seconds=3.0)
    args = p.parse_args()
    table = Table(
        f"Search over {args.versions:,} versions ({args.versions // VERSIONS_PER_MODEL:,} models),"
        " one query at a time"
    )
    with postgres(args.database_url) as url:
        async with fresh_database(url) as db:
            print(f"building a registry of {args.versions:,} versions ...", flush=True)
            await build(db, args.versions)
            # What autovacuum does after a bulk load; the app role does not own the log.
            admin = await db.admin()
            await admin.execute("ANALYZE event_log; ANALYZE events")
            await project(db, [CATALOGUE, VERSIONS, METRIC_HISTORY], table)
            await measure(db, args.versions, args.seconds, table)
    table.print(args.json)


if __name__ == "__main__":
    asyncio.run(main())
