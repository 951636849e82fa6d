"""Shared plumbing for the benchmark scripts: a throwaway schema, timing, a results table."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.database import Database, create_database, drop_schema


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--database-url",
        default=os.environ.get("MODELREG_BENCH_DATABASE_URL"),
        help="Postgres to measure (default: an embedded one under a temp dir)",
    )
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each timed workload")
    p.add_argument("--json", action="store_true", help="print results as JSON lines")
    return p


@contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from service.runtime.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="modelreg-bench-") as tmp:
        Path(tmp).chmod(0o755)
        server = EmbeddedPostgres(Path(tmp) / "pg")
        try:
            yield server.start()
        finally:
            server.stop()


@contextmanager
def embedded_nats(directory: Path) -> Iterator[str]:
    """A NATS server with JetStream under ``directory`` for the run; its URL."""
    from service.runtime.embedded import EmbeddedNats

    server = EmbeddedNats(directory, port=None, auth=False)
    try:
        yield server.start()
    finally:
        server.stop()


@asynccontextmanager
async def fresh_database(url: str, pool_size: int = 40) -> AsyncIterator[Database]:
    db = await create_database(url, pool_size=pool_size)
    try:
        yield db
    finally:
        await db.close()
        await drop_schema(url, db.schema)


@dataclass
class Row:
    workload: str
    rate: float | None  # None: a summary row with no rate of its own
    unit: str = "ops/s"
    p50_ms: float | None = None
    p99_ms: float | None = None
    baseline: str = ""
    ratio: str = ""
    note: str = ""


@dataclass
class Table:
    title: str
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"  {row.workload}: {_rate(row)}", flush=True)
        return row

    def print(self, as_json: bool = False) -> None:
        if as_json:
            import json

            for r in self.rows:
                print(json.dumps(r.__dict__))
            return
        headers = ["workload", "rate", "p50 ms", "p99 ms", "baseline", "ratio", "note"]
        cells = [
            [r.workload, _rate(r), _ms(r.p50_ms), _ms(r.p99_ms), r.baseline, r.ratio, r.note]
            for r in self.rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        print(f"\n{self.title}")
        print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for c in cells:
            print("| " + " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)) + " |")


def _rate(row: Row) -> str:
    return "" if row.rate is None else f"{row.rate:,.0f} {row.unit}"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_for(
    seconds: float, workers: int, op: Callable[[int], Awaitable[int]]
) -> tuple[float, list[float]]:
    """Run ``op(worker)`` in ``workers`` loops for ``seconds``; return items/s and latencies (ms)."""
    deadline = time.perf_counter() + seconds
    done = 0
    latencies: list[float] = []

    async def loop(w: int) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            items = await op(w)  # not `done += await ...`: that would read `done` before awaiting
            done += items
            latencies.append((time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(workers)))
    return done / (time.perf_counter() - start), latencies


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")
