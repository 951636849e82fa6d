"""Benchmark webhook delivery against raw HTTP POSTs to the same receiver, in one run.

    python -m bench.webhooks [--database-url URL] [--seconds 10] [--rate 100] [--subscriptions 10]

A receiver runs in a process of its own (keep-alive HTTP/1.1, answers 204, records each
request's ``webhook-id`` and arrival time). Measured, in this order:

- baseline: raw POSTs of a delivery-sized signed body to that receiver, 10 in flight over
  keep-alive connections (what one process can send it at all);
- delivery throughput: a backlog of events, each wanted by every subscription, drained by
  the dispatcher (deliveries/s, compared with the raw rate);
- commit -> receiver latency: writers append ``--rate`` model events per second for
  ``--seconds`` with the sealer and the dispatcher running as in production; each
  delivery's latency is its arrival time minus its event's commit time (same host clock).

Target (issue 16): p99 <= 200 ms at 100 events/s with 10 subscriptions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpcore
import httpx

from bench.common import Row, Table, fresh_database, parser, percentile, postgres
from eventlog.db import create_pool
from eventlog.sealer import Sealer
from events.model.commands import RegisterModel, UpdateModelDescription
from events.model.decider import MODEL
from events.streams import model_stream
from events.webhooks import PayloadFormat
from service.commands.executor import event_ids_for
from service.commands.token_secrets import Pepper
from service.runtime.composition import build_services
from service.settings import load_settings
from service.webhooks.dispatcher import WebhookDispatcher
from service.webhooks.payloads import signed_headers
from service.webhooks.runner import DeliveryConfig
from service.webhooks.secrets import SecretBox, new_secret
from service.webhooks.subscriptions import create_webhook
from tests.support.database import APP_ROLE, Database

# --------------------------------------------------------------------- the receiver process


async def _receive(port: int) -> None:
    arrivals: list[tuple[str, str, float]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                now = time.time()
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if ":" in line)
                }
                await reader.readexactly(int(headers.get("content-length", "0")))
                if path == "/arrivals":
                    body = json.dumps(arrivals).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        + f"content-length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                else:
                    arrivals.append((path, headers.get("webhook-id", ""), now))
                    writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def receiver_process() -> Iterator[str]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "bench.webhooks", "--receiver", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                httpx.post(f"{url}/arrivals", timeout=1.0)
                break
            assert time.monotonic() < deadline, "the receiver did not start"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


_asker = httpx.AsyncClient(timeout=30.0)


async def arrivals(url: str) -> list[tuple[str, str, float]]:
    found: list[tuple[str, str, float]] = (await _asker.post(f"{url}/arrivals")).json()
    return found


# --------------------------------------------------------------------- the measurements


async def raw_posts(url: str, seconds: float, body: bytes) -> float:
    """Signed POSTs from 10 loops over 10 keep-alive connections, with the HTTP library the
    dispatcher uses (httpcore), so the two rates differ by the dispatcher's own work."""
    secret = new_secret()
    done = 0
    deadline = time.perf_counter() + seconds
    host = url.removeprefix("http://")
    async with httpcore.AsyncConnectionPool(max_connections=10) as pool:

        async def loop(n: int) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                headers = signed_headers(
                    PayloadFormat.MODELREG, secret, uuid.uuid4().hex, body, datetime.now(UTC)
                )
                headers |= {"host": host, "content-length": str(len(body))}
                await pool.request(
                    "POST", f"{url}/raw{n}", headers=list(headers.items()), content=body
                )
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(loop(n) for n in range(10)))
        return done / (time.perf_counter() - start)


class Registry:
    """Appends model events the way the API does (executor, name keys), timing commits."""

    def __init__(self, db: Database, sealer: Sealer) -> None:
        settings = load_settings({}, db_schema=db.schema)
        self.services = build_services(
            settings, db.pool, pepper=Pepper.generate(), on_append=lambda _: sealer.wake()
        )
        self.committed: dict[str, float] = {}
        self.models: list[str] = []

    async def register(self, n: int) -> None:
        model_id = uuid.uuid4().hex
        command = RegisterModel(
            actor="bench",
            now=datetime.now(UTC),
            model_id=model_id,
            name=f"bench-{n}",
            owner="bench",
        )
        await self.services.registry.execute(model_id, command)
        self.models.append(model_id)


async def measure(db: Database, url: str, args: argparse.Namespace) -> Table:
    seconds: float = args.seconds
    rate: int = args.rate
    count: int = args.subscriptions
    table = Table(f"Webhooks: {count} subscriptions, every event wanted by each")
    body = b"x" * 900  # about a delivered description update
    raw = table.add(
        Row("raw HTTP POST (10 in flight, keep-alive, httpcore)", await raw_posts(url, 3.0, body))
    )

    sealer = Sealer(db.connect, db.schema)
    registry = Registry(db, sealer)
    stop, sealer_stop = asyncio.Event(), asyncio.Event()
    sealing = asyncio.create_task(sealer.run(sealer_stop))
    tasks: list[asyncio.Task[None]] = []
    box = SecretBox(registry.services.pepper)
    for n in range(count):
        await create_webhook(registry.services.executor, box, actor="bench", url=f"{url}/s{n}")
    for n in range(50):
        await registry.register(n)

    # Throughput: a backlog drained from a standing start.
    backlog = 1000
    for i in range(backlog):
        await _describe(registry, registry.models[i % len(registry.models)])
    dispatcher = WebhookDispatcher(
        db.connect,
        db.pool,
        db.schema,
        box,
        DeliveryConfig(allow_private=True, poll_interval=0.5),
        standby_interval=0.05,
    )
    wanted = count * (backlog + len(registry.models))
    started = time.perf_counter()
    tasks.append(asyncio.create_task(dispatcher.run(stop)))
    while True:  # the receiver is another process: ask it
        if _delivered(await arrivals(url)) >= wanted:
            break
        await asyncio.sleep(0.2)
    drained = wanted / (time.perf_counter() - started)
    table.add(
        Row(
            f"delivery, backlog of {backlog + len(registry.models)} events x {count}",
            drained,
            unit="deliveries/s",
            baseline="raw HTTP POST",
            ratio=f"{drained / raw.rate:.0%}" if raw.rate else "",
        )
    )

    # The writer process seals its own appends (woken by each, as in one serve process).
    sealer_stop.set()
    await sealing

    # Latency at a steady offered rate, offered by another process (an API process with its
    # sealer, as `modelreg serve --role all` runs one), so that the writers and this
    # dispatcher do not share one event loop.
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.webhooks", "--writer",
        "--database-url", db.url, "--schema", db.schema, "--rate", str(rate),
        "--seconds", str(seconds), "--models", ",".join(registry.models),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await writer.communicate()
    registry.committed = {k: float(v) for k, v in json.loads(out).items()}
    expected = set(registry.committed)
    settle = time.monotonic() + 60
    while True:
        found = [a for a in await arrivals(url) if a[1] in expected]
        if len(found) >= len(expected) * count or time.monotonic() > settle:
            break
        await asyncio.sleep(0.2)
    latencies = [(t - registry.committed[event_id]) * 1000 for _, event_id, t in found]
    table.add(
        Row(
            f"commit -> receiver at {rate} events/s x {count} subscriptions",
            len(expected) / seconds,
            unit="events/s",
            p50_ms=percentile(latencies, 0.5),
            p99_ms=percentile(latencies, 0.99),
            note=f"{len(found)}/{len(expected) * count} deliveries arrived; target p99 <= 200 ms",
        )
    )
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await registry.services.executor.drain()
    return table


def _delivered(found: list[tuple[str, str, float]]) -> int:
    return sum(1 for path, _, _ in found if not path.startswith("/raw"))


async def _describe(registry: Registry, model_id: str) -> None:
    command = UpdateModelDescription(
        actor="bench", now=datetime.now(UTC), description=uuid.uuid4().hex
    )
    seed = uuid.uuid4().hex  # names the event id, to find its deliveries by webhook-id
    await registry.services.executor.execute(model_stream(model_id), MODEL, command, id_seed=seed)
    registry.committed[str(event_ids_for(seed, 1)[0])] = time.time()


async def write_steadily(args: argparse.Namespace) -> None:
    """The writer process: ``--rate`` description updates per second over ``--models`` for
    ``--seconds``, from 4 paced tasks; prints {event id: commit time} as JSON."""
    db = Database(
        args.database_url,
        args.schema,
        APP_ROLE,
        await create_pool(args.database_url, schema=args.schema, app_role=APP_ROLE, max_size=10),
    )
    sealer = Sealer(db.connect, db.schema)
    registry = Registry(db, sealer)
    registry.models = args.models.split(",")
    stop = asyncio.Event()
    sealing = asyncio.create_task(sealer.run(stop))
    writers = 4
    interval = writers / args.rate
    deadline = time.perf_counter() + args.seconds

    async def offer(w: int) -> None:
        next_at = time.perf_counter()
        i = w
        while time.perf_counter() < deadline:
            await _describe(registry, registry.models[i % len(registry.models)])
            i += writers
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    await asyncio.gather(*(offer(w) for w in range(writers)))
    await asyncio.sleep(1.0)  # let the sealer seal the last ones before it stops
    stop.set()
    await asyncio.gather(sealing, return_exceptions=True)
    await registry.services.executor.drain()
    await db.close()
    print(json.dumps(registry.committed))


async def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rate", type=int, default=100, help="events/s offered in the latency phase")
    p.add_argument("--subscriptions", type=int, default=10)
    p.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    p.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--schema", help=argparse.SUPPRESS)
    p.add_argument("--models", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.receiver:
        await _receive(args.receiver)
        return
    if args.writer:
        await write_steadily(args)
        return
    with postgres(args.database_url) as database_url, receiver_process() as url:
        async with fresh_database(database_url) as db:
            table = await measure(db, url, args)
    table.print(args.json)


if __name__ == "__main__":
    if os.environ.get("MODELREG_BENCH_UVLOOP", "1") == "1":
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
    asyncio.run(main())
