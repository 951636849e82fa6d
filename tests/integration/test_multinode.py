"""The multi-instance install of deploy/, for real: two ``serve --role api`` and two
``serve --role worker`` processes against one Postgres and a 3-node JetStream cluster.

Traffic goes through both API replicas while the worker that leads (it holds the sealer and
projection advisory locks) is killed with -9. The standby must take over, and at the end
every acknowledged write is in the log exactly once, the log is contiguous, the hash chains
verify, and the views show every write. When the runtime runs the NATS relay as a worker,
every event must also be in JetStream exactly once, in log order.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import asyncpg
import httpx
import pytest

from eventlog.db import lock_key
from projections.registry_state import all_projections
from service.api.app import AppState
from service.runtime.serve import background_workers
from service.settings import load_settings
from tests.support.cluster import (
    Holder,
    ServeProcess,
    clean_environ,
    client_pid,
    lock_holders,
    run_cli,
)
from tests.support.database import APP_ROLE, drop_schema
from tests.support.nats_servers import NatsCluster, connect
from tests.support.publication import (
    assert_log_published_once_in_order,
    stream_contents,
    wait_published,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

STREAM = "MODELREG_EVENTS"
WRITERS = 4
ACKS_BEFORE_KILL = 30  # acknowledged writes before the leader dies
ACKS_AFTER_KILL = 30  # ... and after it, with every replica serving some of them
TRAFFIC_TIMEOUT = 180.0  # how long a loaded machine may take for either
ARTIFACT = {
    "path": "model.pkl",
    "external": True,
    "uri": "s3://models/x/model.pkl",
    "sha256": "a" * 64,
    "size": 1,
}


def relay_runs_in_workers() -> bool:
    """Whether ``serve --role worker`` runs the NATS relay (another issue wires it in)."""
    settings = load_settings({})
    state = SimpleNamespace(
        settings=settings,
        sealer=SimpleNamespace(run=None),
        services=None,
        pool=None,
        nats=None,
        database_url="postgresql://nobody@/nowhere",
        nats_url="nats://127.0.0.1:4222",
    )
    return any("relay" in worker.name for worker in background_workers(cast(AppState, state)))


@dataclass
class Ack:
    """One acknowledged write: the stream it went to and the events it recorded there."""

    stream: str
    stream_version: int
    events: list[str]
    position: int | None
    at: float


@dataclass
class Traffic:
    acks: list[Ack] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # model -> versions registered
    shared_tags: dict[str, str] = field(default_factory=dict)  # tag key -> last acked value
    conflicts: int = 0  # 409s on the contended model (nothing recorded)
    requests: Counter[str] = field(default_factory=Counter)  # per API replica


@dataclass
class Deployment:
    schema: str
    token: str
    database_url: str
    nats: NatsCluster
    workers: list[ServeProcess]
    apis: list[ServeProcess]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def lock_names(self, *, relay: bool) -> dict[str, str]:
        """Lock name -> the application_name of the connection that must hold it."""
        names = {lock_key(self.schema, "sealer"): "modelreg-sealer"}
        names |= {
            f"modelreg:{self.schema}:projection:{p.name}": "modelreg-projections"
            for p in all_projections()
        }
        if relay:
            names[lock_key(self.schema, f"relay:{STREAM}")] = "modelreg-relay"
        return names

    async def admin(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self.database_url,
            server_settings={"search_path": self.schema, "application_name": "multinode-test"},
        )
        return conn

    async def holders(self, *, relay: bool) -> dict[str, tuple[Holder, int | None]]:
        """Each singleton lock -> (its backend, the worker process at the other end)."""
        names = self.lock_names(relay=relay)
        conn = await self.admin()
        try:
            held = await lock_holders(conn, names)
        finally:
            await conn.close()
        pids = [w.pid for w in self.workers if w.running]
        return {name: (holder, client_pid(holder, pids)) for name, holder in held.items()}

    async def wait_led_by(
        self, worker: ServeProcess, *, relay: bool, timeout: float = 120.0
    ) -> float:
        """Until ``worker`` holds every singleton lock; the seconds it took."""
        started = time.monotonic()
        names = self.lock_names(relay=relay)
        while True:
            held = await self.holders(relay=relay)
            if set(held) == set(names) and all(pid == worker.pid for _, pid in held.values()):
                for name, (holder, _) in held.items():
                    assert holder.application_name == names[name], (name, holder)
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"{worker.name} does not lead after {timeout} s: {held}\n{worker.log()[-3000:]}"
                )
            await asyncio.sleep(0.05)


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats").start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def deployment(
    database_url: str, nats_cluster: NatsCluster, tmp_path: Path
) -> AsyncIterator[Deployment]:
    await nats_cluster.wait_ready()
    schema = f"t_{secrets.token_hex(6)}"
    token = secrets.token_hex(16)
    env = clean_environ(
        MODELREG_DATABASE_URL=database_url,
        MODELREG_DB_SCHEMA=schema,
        MODELREG_DB_APP_ROLE=APP_ROLE,
        MODELREG_BOOTSTRAP_TOKEN=token,
        MODELREG_TOKEN_PEPPER=secrets.token_hex(32),  # as a deployment does: one for all
        MODELREG_NATS_REPLICAS="3",
        MODELREG_NATS_STREAM=STREAM,
        MODELREG_DATA_DIR=str(tmp_path / "unused-data-dir"),  # never used: both URLs are set
        MODELREG_READ_WAIT_TIMEOUT="30",
        MODELREG_WORKER_POLL_INTERVAL="0.2",
        MODELREG_DB_POOL_SIZE="4",
    )
    urls = nats_cluster.urls

    def process(name: str, role: str, nats_url: str) -> ServeProcess:
        return ServeProcess(
            name, role, env | {"MODELREG_NATS_URL": nats_url}, tmp_path / f"{name}.log"
        )

    workers = [process("worker-a", "worker", urls[0]), process("worker-b", "worker", urls[1])]
    apis = [process("api-1", "api", urls[2]), process("api-2", "api", urls[0])]
    deployed = Deployment(schema, token, database_url, nats_cluster, workers, apis)
    try:
        yield deployed
    finally:
        running = [proc for proc in [*apis, *workers] if proc.running]
        for proc in running:
            proc.terminate()  # all at once: each drains for up to its own grace period
        for proc in running:
            proc.stop()
        await drop_schema(database_url, schema)


async def test_two_api_and_two_worker_processes_survive_killing_the_leading_worker(
    deployment: Deployment,
) -> None:
    began = time.monotonic()
    relay = relay_runs_in_workers()
    print(f"relay in the worker role: {relay}")

    # Migrations first, as the deploy files run them (compose `migrate`, k8s init container).
    migrated = run_cli(["migrate"], deployment.apis[0].env)
    assert migrated.returncode == 0, migrated.stderr
    assert "service/0001_event_store.sql" in migrated.stdout.split()
    print(f"migrated {time.monotonic() - began:.1f} s after the test began")

    # worker-a starts alone, so it takes every lock; then the standby and both APIs.
    leader, standby = deployment.workers
    leader.start().wait_ready()
    await deployment.wait_led_by(leader, relay=relay)
    print(f"{leader.name} leads {time.monotonic() - began:.1f} s after the test began")
    for proc in (standby, *deployment.apis):
        proc.start()
    for proc in (standby, *deployment.apis):
        proc.wait_ready()
    assert (
        not (await deployment.holders(relay=relay)).keys()
        - deployment.lock_names(relay=relay).keys()
    )
    print(f"4 processes ready {time.monotonic() - began:.1f} s after the test began")

    # Traffic through both replicas; the leader dies in the middle of it.
    traffic = Traffic()
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=api.base_url, headers=deployment.headers, timeout=60)
            )
            for api in deployment.apis
        ]
        await _ok(
            await clients[0].post("/api/v1/models", json={"name": "shared"}), traffic, "model:", 201
        )
        writers = [asyncio.create_task(_writer(i, clients, traffic, stop)) for i in range(WRITERS)]
        await eventually(
            lambda: _writing(writers) and len(traffic.acks) >= ACKS_BEFORE_KILL,
            timeout=TRAFFIC_TIMEOUT,
            what="traffic before the kill",
        )
        head_at_kill = await _head(deployment)
        leader.kill()
        killed_at = time.monotonic()
        takeover = await deployment.wait_led_by(standby, relay=relay)
        print(f"standby leads {takeover:.2f} s after kill -9 of the leader (pid {leader.pid})")
        await eventually(
            lambda: (
                _writing(writers)
                and _acked_after(traffic, killed_at) >= ACKS_AFTER_KILL
                and len(traffic.requests) == len(deployment.apis)
                and min(traffic.requests.values()) > 20
            ),
            timeout=TRAFFIC_TIMEOUT,
            what="traffic after the kill, through every replica",
        )
        stop.set()
        await asyncio.gather(*writers)

        # Sealing progressed after the kill: every write answered with its log position,
        # including those that waited through the takeover.
        after = [a for a in traffic.acks if a.at > killed_at]
        assert all(a.position is not None for a in traffic.acks), "a write was not sealed in time"
        assert max(a.position or 0 for a in after) > head_at_kill

        await _assert_log_holds_every_ack_once(deployment, traffic)
        head = await _head(deployment)
        for client in clients:
            report = (await client.get("/api/v1/audit/verify")).json()
            assert report["ok"], report
            assert report["head_position"] >= head
        await _assert_views_show_every_write(clients, traffic, head)
        await _assert_projections_at(deployment, head)
        if relay:
            await _assert_published_once_in_order(deployment, head)

    print(
        f"{len(traffic.acks)} writes ({len(after)} after the kill, {traffic.conflicts} contended 409s), "
        f"{head} events; per replica {dict(traffic.requests)}; {time.monotonic() - began:.1f} s in all"
    )


# ---------------------------------------------------------------- traffic


async def _writer(
    i: int, clients: list[httpx.AsyncClient], traffic: Traffic, stop: asyncio.Event
) -> None:
    """Own model: versions, each with a metric batch; plus a tag on the shared model, which
    every writer contends for through both replicas. Requests alternate between replicas."""
    name = f"model-{i}"
    turn = i

    def client() -> httpx.AsyncClient:
        nonlocal turn
        turn += 1
        return clients[turn % len(clients)]

    await _ok(await client().post("/api/v1/models", json={"name": name}), traffic, "model:", 201)
    version = 0
    while not stop.is_set():
        created = await _ok(
            await client().post(
                f"/api/v1/models/{name}/versions",
                json={"artifacts": [ARTIFACT], "params": {"n": version}},
            ),
            traffic,
            "model:",
            201,
        )
        version = created["version"]
        traffic.versions[name] = version
        await _ok(
            await client().post(
                f"/api/v1/models/{name}/versions/{version}/metrics",
                json={
                    "metrics": [
                        {"key": "loss", "value": 1.0 / version},
                        {"key": "auc", "value": i + version / 1000},
                    ]
                },
            ),
            traffic,
            f"metrics:{created['model_id']}:{version}",
            201,
        )
        tagged = await client().put(
            f"/api/v1/models/shared/tags/w{i}", json={"value": str(version)}
        )
        if tagged.status_code == 409:
            traffic.conflicts += 1  # lost every retry against the other writers: nothing recorded
        else:
            await _ok(tagged, traffic, "model:", 200)
            traffic.shared_tags[f"w{i}"] = str(version)


async def _ok(
    response: httpx.Response, traffic: Traffic, stream: str, status: int
) -> dict[str, Any]:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
    )
    traffic.requests[f"{response.request.url.host}:{response.request.url.port}"] += 1
    body: dict[str, Any] = response.json()
    if stream == "model:":
        stream = f"model:{body['model_id']}"
    traffic.acks.append(
        Ack(stream, body["stream_version"], body["events"], body.get("position"), time.monotonic())
    )
    return body


# ---------------------------------------------------------------- checks


def _writing(writers: list[asyncio.Task[None]]) -> bool:
    """True while every writer runs; a writer that failed fails the test now, with its error."""
    for writer in writers:
        if writer.done():
            writer.result()
    return True


def _acked_after(traffic: Traffic, moment: float) -> int:
    return sum(1 for a in traffic.acks if a.at > moment)


async def _head(deployment: Deployment) -> int:
    conn = await deployment.admin()
    try:
        head: int = await conn.fetchval("SELECT last_log_position FROM sealer_state WHERE id = 1")
        return head
    finally:
        await conn.close()


async def _assert_log_holds_every_ack_once(deployment: Deployment, traffic: Traffic) -> None:
    conn = await deployment.admin()
    try:
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM events), count(*), min(log_position), max(log_position),"
            " count(DISTINCT seq) FROM event_log"
        )
        assert counts is not None
        total, sealed, first, last, distinct_seq = counts
        assert sealed == total, f"{total - sealed} committed events never sealed"
        assert (first, last) == (1, sealed), "log positions are not contiguous from 1"
        assert distinct_seq == sealed, "an event appears twice in the log"
        rows = await conn.fetch("SELECT stream_id, stream_position, event_type FROM events")
    finally:
        await conn.close()

    stored = {(r["stream_id"], r["stream_position"]): r["event_type"] for r in rows}
    claimed: dict[tuple[str, int], str] = {}
    for ack in traffic.acks:
        first_position = ack.stream_version - len(ack.events) + 1
        for offset, event_type in enumerate(ack.events):
            key = (ack.stream, first_position + offset)
            assert key not in claimed, f"two acknowledged writes claim {key}"
            claimed[key] = event_type
    missing = {k: v for k, v in claimed.items() if stored.get(k) != v}
    assert not missing, f"acknowledged events not in the log: {list(missing.items())[:5]}"
    written_streams = {stream for stream, _ in claimed}
    extra = [k for k in stored if k[0] in written_streams and k not in claimed]
    assert not extra, f"events nobody was told about: {extra[:5]}"


async def _assert_views_show_every_write(
    clients: list[httpx.AsyncClient], traffic: Traffic, head: int
) -> None:
    for client in clients:
        for name, versions in traffic.versions.items():
            model = (
                await client.get(f"/api/v1/models/{name}", params={"min_position": head})
            ).json()
            assert (model["latest_version"], model["version_count"]) == (versions, versions), model
        shared = (await client.get("/api/v1/models/shared", params={"min_position": head})).json()
        assert shared["tags"] == traffic.shared_tags
    # Every version's metrics, once (through the second replica).
    for i, (name, versions) in enumerate(sorted(traffic.versions.items())):
        page = (
            await clients[1].get(
                f"/api/v1/models/{name}/versions", params={"min_position": head, "limit": 500}
            )
        ).json()
        rows = {row["version"]: row for row in page["items"]}
        assert sorted(rows) == list(range(1, versions + 1))
        for version, row in rows.items():
            metrics = {m["key"]: m["value"] for m in row["metrics"]}
            assert metrics == pytest.approx(
                {"loss": 1.0 / version, "auc": int(name.split("-")[1]) + version / 1000}
            ), (i, row)


async def _assert_projections_at(deployment: Deployment, head: int) -> None:
    conn = await deployment.admin()
    try:
        behind = await conn.fetch(
            "SELECT projection, log_position FROM projection_checkpoints WHERE status = 'live' AND log_position <> $1",
            head,
        )
    finally:
        await conn.close()
    assert not behind, f"projections not at the head {head}: {[tuple(r) for r in behind]}"


async def _assert_published_once_in_order(deployment: Deployment, head: int) -> None:
    conn = await deployment.admin()
    try:
        rows = await conn.fetch(
            "SELECT e.event_id FROM event_log l JOIN events e ON e.seq = l.seq ORDER BY l.log_position"
        )
    finally:
        await conn.close()
    log_ids = [str(r["event_id"]) for r in rows]
    nc = await connect(deployment.nats.urls)
    try:
        await wait_published(nc, STREAM, head, timeout=120)
        info = await nc.jetstream().stream_info(STREAM)
        assert info.config.num_replicas == 3
        assert_log_published_once_in_order(await stream_contents(nc, STREAM), log_ids)
    finally:
        await nc.close()
