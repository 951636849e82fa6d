"""Benchmark modelreg's HTTP API against MLflow's model registry server, in one run (issue 6).

    python -m bench.api_vs_mlflow [--quick] [--json] [--concurrency 1 16] [--pg-url URL]

Both registries run as real servers on this machine against the same Postgres and are driven
over real HTTP by the same client code (one ``httpx.AsyncClient`` per system, with a pool of
as many connections as there are concurrent callers):

* modelreg: ``modelreg serve`` (role ``all``: API, sealer, projections, relay) on a fresh
  database ``modelreg_bench``, with an embedded NATS on a free port and a temp data dir.
* MLflow 3.17.2: ``mlflow server --workers 1`` on a fresh database ``mlflow_bench``, from
  its own venv in ``.bench-venvs/mlflow`` (made on first use: ``pip install mlflow==3.17.2
  psycopg2-binary``). One worker, because MLflow's default of 4 uvicorn workers on the plain
  asyncio loop adds ~43 ms to every reused keep-alive connection (uvicorn #3149). Its REST
  endpoints are called directly, not through ``MlflowClient``, so the client cost is the same.
* The ceiling: a Litestar hello-world (one GET returning JSON) served by uvicorn with uvloop
  and httptools, as modelreg serves, measured by the same client.

At each concurrency (default 1 and 16) every operation runs a fixed number of calls on
modelreg, then on MLflow (alternating who goes first), and prints ops/s, p50 and p99:
create model, create version (x1,000 on one model), set version tag, set alias, transition
stage (modelreg development<->staging, MLflow None<->Staging), get version, get by alias,
and search the versions of the 1,000-version model: one page of 500 (modelreg's largest
page) and all 1,000 (modelreg: two pages of 500 following the cursor; MLflow: one call
with max_results=1000). Create version also compares the p50 of its first 50 calls with
the p50 of its last 50 (the 1st versus the 1,000th version of one model).

Under each table, the CPU time per call of each server's process group and of its
Postgres backends (from /proc, less the idle burn): on a loaded machine it is steadier
than wall-clock rates. The run starts measuring only once MLflow is quiet: it answers
/health while its job consumers are still importing for another 10-30 s.

Progress goes to stderr, the tables to stdout (``--json``: one JSON object per line).
``--quick`` scales the counts down for a smoke run (its 1st-vs-last row then compares the
1st with the 100th version only). The databases ``modelreg_bench`` and ``mlflow_bench`` are
dropped and recreated at the start of a run and dropped at its end. ``--private-postgres``
puts both on a throwaway embedded Postgres instead: modelreg's sealer waits for every
older write transaction in the whole cluster, so other users' long transactions on a
shared server slow modelreg's writes (the run reports how often it saw any).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from bench.common import percentile, postgres

REPO = Path(__file__).resolve().parents[1]
MLFLOW_VERSION = "3.17.2"
MLFLOW_VENV = REPO / ".bench-venvs" / "mlflow"
MODELREG_DB = "modelreg_bench"
MLFLOW_DB = "mlflow_bench"
SERVING = re.compile(r"serving http://127\.0\.0\.1:(\d+) ")
PAGE = 500  # modelreg's largest page of a version search
SEARCH_TARGET_MS = 20.0
SPEEDUP_TARGET = 10.0
FIRST_LAST_TOLERANCE = 0.20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- counts


@dataclass(frozen=True)
class Counts:
    models: int = 200  # create model
    versions: int = 1000  # create version, all on one model
    writes: int = 200  # set tag, set alias, transition stage
    reads: int = 1000  # get version, get by alias
    searches: int = 50  # each search workload
    hello: int = 3000  # the ceiling
    edge: int = 50  # calls compared at the start and the end of create version


FULL = Counts()
QUICK = Counts(models=20, versions=100, writes=30, reads=100, searches=5, hello=300, edge=10)


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Process:
    """A server we started, in its own process group, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def wait_ready(
    process: Process, url_of: Callable[[], str | None], path: str, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.check_alive()
        url = url_of()
        if url is not None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + path, timeout=2.0).status_code == 200:
                    return url
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} was not ready in {timeout:.0f} s; see {process.log_path}")


def ensure_mlflow(venv: Path) -> Path:
    """The ``mlflow`` executable of a venv of its own, made on first use."""
    exe = venv / "bin" / "mlflow"
    if exe.exists():
        return exe
    log(f"creating {venv} and installing mlflow=={MLFLOW_VERSION} (a few minutes, once) ...")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            f"mlflow=={MLFLOW_VERSION}",
            "psycopg2-binary",
        ],
        check=True,
        stdout=sys.stderr,
    )
    return exe


def start_mlflow(exe: Path, pg_url: str, workdir: Path) -> tuple[Process, str]:
    port = free_port()
    backend = on_database(pg_url, MLFLOW_DB).replace("postgresql://", "postgresql+psycopg2://", 1)
    (workdir / "mlartifacts").mkdir()
    process = Process(
        "mlflow server",
        [
            str(exe),
            "server",
            "--backend-store-uri",
            backend,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--artifacts-destination",
            str(workdir / "mlartifacts"),
        ],
        workdir / "mlflow.log",
        cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}"
    return process, wait_ready(process, lambda: url, "/health", 240)


def start_modelreg(pg_url: str, workdir: Path, token: str) -> tuple[Process, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")} | {
        "MODELREG_DATABASE_URL": on_database(pg_url, MODELREG_DB),
        "MODELREG_DB_SCHEMA": "modelreg",
        "MODELREG_DB_APP_ROLE": "modelreg_bench_app",
        "MODELREG_DATA_DIR": str(workdir / "modelreg-data"),
        "MODELREG_NATS_PORT": "0",
        "MODELREG_PORT": "0",
        "MODELREG_BOOTSTRAP_TOKEN": token,
    }
    exe = Path(sys.executable).with_name("modelreg")
    argv = [str(exe), "serve"] if exe.exists() else [sys.executable, "-m", "service", "serve"]
    process = Process("modelreg serve", argv, workdir / "modelreg.log", env=env, cwd=REPO)

    def url_of() -> str | None:
        found = SERVING.search(process.log_path.read_text(errors="replace"))
        return f"http://127.0.0.1:{found.group(1)}" if found else None

    return process, wait_ready(process, url_of, "/health/ready", 120)


def hello_app() -> Any:
    """The ceiling: Litestar's smallest JSON endpoint (``uvicorn --factory`` entry point)."""
    from litestar import Litestar, get

    @get("/")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    return Litestar([hello])


def start_hello(workdir: Path) -> tuple[Process, str]:
    port = free_port()
    process = Process(
        "hello-world",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.api_vs_mlflow:hello_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            "none",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        workdir / "hello.log",
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    return process, wait_ready(process, lambda: url, "/", 60)


def on_database(url: str, database: str) -> str:
    """``url`` naming ``database`` (the query, e.g. a Unix socket's ``host=``, is kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


async def recreate_databases(pg_url: str, *, drop_only: bool = False) -> None:
    conn = await asyncpg.connect(on_database(pg_url, "postgres"))
    try:
        for name in (MODELREG_DB, MLFLOW_DB):
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if not drop_only:
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


# ---------------------------------------------------------------- the two APIs


class CallError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}: {response.text[:300]}")


def ok(response: httpx.Response) -> httpx.Response:
    if response.status_code not in (200, 201):
        raise CallError(response)
    return response


def sha256_of(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


class ModelregAPI:
    label = "modelreg"
    dev, staging = "development", "staging"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.c = client

    async def create_model(self, name: str) -> None:
        ok(await self.c.post("/api/v1/models", json={"name": name}))

    async def create_version(self, model: str, i: int) -> None:
        artifact = {
            "path": "model.pkl",
            "external": True,
            "uri": f"s3://bench/{model}/{i}/model.pkl",
            "sha256": sha256_of(i),
            "size": 1024 + i,
        }
        ok(await self.c.post(f"/api/v1/models/{model}/versions", json={"artifacts": [artifact]}))

    async def set_tag(self, model: str, version: int, key: str, value: str) -> None:
        ok(
            await self.c.put(
                f"/api/v1/models/{model}/versions/{version}/tags/{key}", json={"value": value}
            )
        )

    async def set_alias(self, model: str, alias: str, version: int) -> None:
        ok(await self.c.put(f"/api/v1/models/{model}/aliases/{alias}", json={"version": version}))

    async def transition(self, model: str, version: int, stage: str) -> None:
        # 202 would mean "a promotion request was opened", not a transition: ok() refuses it.
        ok(
            await self.c.post(
                f"/api/v1/models/{model}/versions/{version}/stage", json={"to": stage}
            )
        )

    async def get_version(self, model: str, version: int) -> None:
        ok(await self.c.get(f"/api/v1/models/{model}/versions/{version}"))

    async def get_by_alias(self, model: str, alias: str) -> None:
        ok(await self.c.get(f"/api/v1/models/{model}/versions/by-alias/{alias}"))

    async def search_page(self, model: str) -> None:
        ok(await self.c.get(f"/api/v1/models/{model}/versions", params={"limit": PAGE}))

    async def search_all(self, model: str) -> None:
        """Every version, following the cursor (two pages of 500 for 1,000 versions)."""
        await self.list_versions(model, parse=False)

    async def list_versions(self, model: str, *, parse: bool = True) -> int:
        params: dict[str, Any] = {"limit": PAGE}
        count = 0
        while True:
            response = ok(await self.c.get(f"/api/v1/models/{model}/versions", params=params))
            # The cursor is all a timed call needs; a full decode is done only when counting.
            if parse:
                page = response.json()
                count += len(page["items"])
                cursor = page.get("next_cursor")
            else:
                found = re.search(rb'"next_cursor":("([^"]*)"|null)', response.content)
                cursor = found.group(2).decode() if found and found.group(2) is not None else None
            if not cursor:
                return count
            params["cursor"] = cursor

    async def settle(self, model: str) -> None:
        """Wait until the views show the model's latest write (reads wait for it anyway)."""
        ok(await self.c.get(f"/api/v1/models/{model}"))


class MlflowAPI:
    label = "MLflow"
    dev, staging = "None", "Staging"
    base = "/api/2.0/mlflow"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.c = client

    async def create_model(self, name: str) -> None:
        ok(await self.c.post(f"{self.base}/registered-models/create", json={"name": name}))

    async def create_version(self, model: str, i: int) -> None:
        ok(
            await self.c.post(
                f"{self.base}/model-versions/create",
                json={"name": model, "source": f"s3://bench/{model}/{i}/model"},
            )
        )

    async def set_tag(self, model: str, version: int, key: str, value: str) -> None:
        ok(
            await self.c.post(
                f"{self.base}/model-versions/set-tag",
                json={"name": model, "version": str(version), "key": key, "value": value},
            )
        )

    async def set_alias(self, model: str, alias: str, version: int) -> None:
        ok(
            await self.c.post(
                f"{self.base}/registered-models/alias",
                json={"name": model, "alias": alias, "version": str(version)},
            )
        )

    async def transition(self, model: str, version: int, stage: str) -> None:
        ok(
            await self.c.post(
                f"{self.base}/model-versions/transition-stage",
                json={
                    "name": model,
                    "version": str(version),
                    "stage": stage,
                    "archive_existing_versions": False,
                },
            )
        )

    async def get_version(self, model: str, version: int) -> None:
        ok(
            await self.c.get(
                f"{self.base}/model-versions/get", params={"name": model, "version": str(version)}
            )
        )

    async def get_by_alias(self, model: str, alias: str) -> None:
        ok(
            await self.c.get(
                f"{self.base}/registered-models/alias", params={"name": model, "alias": alias}
            )
        )

    async def search_page(self, model: str) -> None:
        ok(
            await self.c.get(
                f"{self.base}/model-versions/search",
                params={"filter": f"name='{model}'", "max_results": str(PAGE)},
            )
        )

    async def search_all(self, model: str) -> None:
        ok(
            await self.c.get(
                f"{self.base}/model-versions/search",
                params={"filter": f"name='{model}'", "max_results": "1000"},
            )
        )

    async def list_versions(self, model: str) -> int:
        params = {"filter": f"name='{model}'", "max_results": "1000"}
        count = 0
        while True:
            page = ok(await self.c.get(f"{self.base}/model-versions/search", params=params)).json()
            count += len(page.get("model_versions", []))
            if not page.get("next_page_token"):
                return count
            params["page_token"] = page["next_page_token"]

    async def settle(self, model: str) -> None:
        ok(await self.c.get(f"{self.base}/registered-models/get", params={"name": model}))


API = ModelregAPI | MlflowAPI


# ---------------------------------------------------------------- running and results


@dataclass
class Result:
    system: str
    operation: str
    concurrency: int
    calls: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)  # indexed by call number; failed calls included
    error_samples: list[str] = field(default_factory=list)
    planned: int = 0  # calls asked for; ``calls`` is fewer when the time cap stopped it
    cpu_ms: tuple[float, float] | None = (
        None  # CPU per call: the server's processes, its Postgres backends
    )

    @property
    def rate(self) -> float:
        return (self.calls - self.errors) / self.seconds if self.seconds else float("nan")

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99)

    def summary(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "operation": self.operation,
            "concurrency": self.concurrency,
            "calls": self.calls,
            "planned": self.planned,
            "errors": self.errors,
            "ops_per_s": round(self.rate, 1),
            "p50_ms": round(self.p50, 2),
            "p99_ms": round(self.p99, 2),
            "server_cpu_ms_per_call": round(self.cpu_ms[0], 3) if self.cpu_ms else None,
            "postgres_cpu_ms_per_call": round(self.cpu_ms[1], 3) if self.cpu_ms else None,
            "error_samples": self.error_samples,
        }


async def run_calls(
    system: str,
    operation: str,
    calls: int,
    concurrency: int,
    call: Callable[[int, int], Awaitable[None]],
    max_seconds: float | None = None,
) -> Result:
    """``call(worker, i)`` for i in 0..calls-1, ``concurrency`` at a time; count failures.

    With ``max_seconds``, no call starts after that long (a slow system on a loaded machine
    then makes fewer calls; its rate is over the calls it made)."""
    latencies = [0.0] * calls
    errors = 0
    samples: list[str] = []
    next_call = 0
    deadline = time.perf_counter() + max_seconds if max_seconds else float("inf")

    async def worker(w: int) -> None:
        nonlocal next_call, errors
        while next_call < calls and time.perf_counter() < deadline:
            i = next_call
            next_call += 1
            t0 = time.perf_counter()
            try:
                await call(w, i)
            except Exception as exc:
                errors += 1
                text = f"{type(exc).__name__}: {exc}"[:300]
                if len(samples) < 3 and text not in samples:
                    samples.append(text)
            latencies[i] = (time.perf_counter() - t0) * 1000

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - start
    result = Result(
        system,
        operation,
        concurrency,
        next_call,
        errors,
        elapsed,
        latencies[:next_call],
        samples,
        planned=calls,
    )
    log(
        f"  {system:8} {operation:32} c={concurrency:<2} {result.rate:8.1f} ops/s  p50 {result.p50:8.1f} ms"
        f"  p99 {result.p99:8.1f} ms  errors {errors}" + (f"  e.g. {samples[0]}" if samples else "")
    )
    return result


@dataclass
class Comparison:
    operation: str
    modelreg: Result
    mlflow: Result
    search: bool = False
    note: str = ""


@dataclass
class Level:
    concurrency: int
    comparisons: list[Comparison] = field(default_factory=list)
    ceiling: Result | None = None
    first_last: dict[str, tuple[float, float]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)


async def measure_level(
    apis: tuple[ModelregAPI, MlflowAPI],
    hello: httpx.AsyncClient,
    counts: Counts,
    concurrency: int,
    max_seconds: float | None,
    meter: CpuMeter,
) -> Level:
    level = Level(concurrency)
    c = concurrency
    log(f"\n== concurrency {c} ==")

    async def hello_call(_w: int, _i: int) -> None:
        ok(await hello.get("/"))

    await run_calls("ceiling", "warm-up", 50, c, hello_call)
    level.ceiling = await run_calls(
        "ceiling", "hello-world GET", counts.hello, c, hello_call, max_seconds
    )

    order = 0

    async def both(
        operation: str,
        calls: int,
        make: Callable[[API], Callable[[int, int], Awaitable[None]]],
        *,
        search: bool = False,
        note: str = "",
        capped: bool = True,
    ) -> Comparison:
        """Run one workload on both systems, alternating which goes first."""
        nonlocal order
        results: dict[str, Result] = {}
        pair = apis if order % 2 == 0 else (apis[1], apis[0])
        order += 1
        for api in pair:
            before, t0 = await meter.read(api.label), time.perf_counter()
            result = await run_calls(
                api.label, operation, calls, c, make(api), max_seconds if capped else None
            )
            await api.settle(
                big
            )  # modelreg: its views have caught up, so their work is counted too
            after, window = await meter.read(api.label), time.perf_counter() - t0
            result.cpu_ms = meter.per_call(api.label, before, after, window, result.calls)
            results[api.label] = result
        comparison = Comparison(operation, results["modelreg"], results["MLflow"], search, note)
        level.comparisons.append(comparison)
        return comparison

    big = f"big-c{c}"
    for api in apis:  # untimed: a first call each, and the model that gets all the versions
        await api.create_model(f"warmup-c{c}")
        await api.create_model(big)

    await both(
        "create model", counts.models, lambda api: lambda _w, i: api.create_model(f"m-c{c}-{i}")
    )

    create = await both(
        f"create version (x{counts.versions}, one model)",
        counts.versions,
        lambda api: lambda _w, i: api.create_version(big, i),
        capped=False,
    )
    for api, result in ((apis[0], create.modelreg), (apis[1], create.mlflow)):
        # By call number: the first and the last `edge` calls of the run.
        first = percentile(result.latencies_ms[: counts.edge], 0.5)
        last = percentile(result.latencies_ms[-counts.edge :], 0.5)
        level.first_last[api.label] = (first, last)
        level.versions[api.label] = await api.list_versions(big)
    log(f"  versions on {big}: {level.versions}")
    n = {label: max(1, count) for label, count in level.versions.items()}

    await both(
        "set version tag",
        counts.writes,
        lambda api: (
            lambda _w, i: api.set_tag(big, 1 + (i * 37) % n[api.label], f"k{i % 5}", f"v{i}")
        ),
    )

    aliases = 8
    await both(
        "set alias (8 aliases, concurrent)",
        counts.writes,
        lambda api: lambda _w, i: api.set_alias(big, f"a{i % aliases}", 1 + (i * 7) % n[api.label]),
    )

    def transition(api: API) -> Callable[[int, int], Awaitable[None]]:
        # Each worker owns the versions congruent to it mod c, so no two calls race on one
        # version and each call is a real move (development<->staging, None<->Staging).
        count = n[api.label]
        owned = [list(range(1 + w, count + 1, c)) or [1] for w in range(c)]
        done = [0] * c
        staged: set[int] = set()

        async def call(w: int, _i: int) -> None:
            version = owned[w][done[w] % len(owned[w])]
            done[w] += 1
            to = api.dev if version in staged else api.staging
            await api.transition(big, version, to)
            staged.symmetric_difference_update({version})

        return call

    await both("transition stage", counts.writes, transition)

    for api in apis:  # untimed warm-up of the read paths
        await api.get_version(big, 1)
        await api.get_by_alias(big, "a0")
        await api.search_all(big)

    await both(
        "get version",
        counts.reads,
        lambda api: lambda _w, i: api.get_version(big, 1 + (i * 13) % n[api.label]),
    )
    await both(
        "get by alias",
        counts.reads,
        lambda api: lambda _w, i: api.get_by_alias(big, f"a{i % aliases}"),
    )
    await both(
        f"search versions: 1 page (limit {PAGE})",
        counts.searches,
        lambda api: lambda _w, _i: api.search_page(big),
        search=True,
    )
    pages = "1 page" if counts.versions <= PAGE else f"{-(-counts.versions // PAGE)} pages"
    await both(
        f"search versions: all {counts.versions}",
        counts.searches,
        lambda api: lambda _w, _i: api.search_all(big),
        search=True,
        note=f"modelreg: {pages} of {PAGE} following the cursor; MLflow: 1 call, max_results=1000",
    )
    return level


# ---------------------------------------------------------------- reporting


def verdict(comp: Comparison, concurrency: int) -> str:
    mr, ml = comp.modelreg, comp.mlflow
    misses: list[str] = []
    if mr.errors:
        misses.append(f"{mr.errors} errors")
    if comp.search and mr.p99 > SEARCH_TARGET_MS:
        misses.append(f"p99 {mr.p99:.0f} > {SEARCH_TARGET_MS:.0f} ms")
    if concurrency >= 16:
        ratio = mr.rate / ml.rate if ml.rate else float("inf")
        if ratio < SPEEDUP_TARGET:
            misses.append(f"{ratio:.1f}x < {SPEEDUP_TARGET:.0f}x")
        if mr.p99 >= ml.p99:
            misses.append("p99 not lower")
    if misses:
        return "NO: " + ", ".join(misses)
    return "yes" if concurrency >= 16 or comp.search else "(10x judged at c=16)"


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def print_level(level: Level, counts: Counts) -> None:
    # "ceiling/MLflow": the largest ratio this client could show on this machine (an endpoint
    # doing nothing, divided by MLflow's rate); a 10x target above it cannot be shown here.
    headers = [
        "operation",
        "modelreg ops/s",
        "p50 ms",
        "p99 ms",
        "MLflow ops/s",
        "p50 ms",
        "p99 ms",
        "ratio",
        "ceiling/MLflow",
        "errors mr/ml",
        "target met?",
    ]
    rows: list[list[str]] = []
    ceiling = level.ceiling.rate if level.ceiling is not None else float("nan")
    for comp in level.comparisons:
        mr, ml = comp.modelreg, comp.mlflow
        ratio = mr.rate / ml.rate if ml.rate else float("inf")
        room = ceiling / ml.rate if ml.rate else float("inf")
        rows.append(
            [
                comp.operation,
                f"{mr.rate:,.0f}",
                _ms(mr.p50),
                _ms(mr.p99),
                f"{ml.rate:,.1f}",
                _ms(ml.p50),
                _ms(ml.p99),
                f"{ratio:,.1f}x",
                f"{room:,.0f}x",
                f"{mr.errors}/{ml.errors}",
                verdict(comp, level.concurrency),
            ]
        )
    if level.first_last:
        f_mr, l_mr = level.first_last["modelreg"]
        f_ml, l_ml = level.first_last["MLflow"]
        growth = l_mr / f_mr
        met = (
            "yes"
            if growth <= 1 + FIRST_LAST_TOLERANCE
            else f"NO: +{(growth - 1):.0%} > +{FIRST_LAST_TOLERANCE:.0%}"
        )
        if level.concurrency > 1:
            # The first calls of a concurrent run queue behind fewer others than the last.
            met = f"(judged at c=1; here {met})"
        rows.append(
            [
                f"create version: p50 of first {counts.edge} -> last {counts.edge} (1st vs {counts.versions}th)",
                "",
                f"{_ms(f_mr)} -> {_ms(l_mr)}",
                "",
                "",
                f"{_ms(f_ml)} -> {_ms(l_ml)}",
                "",
                f"{growth:.2f} / {l_ml / f_ml:.2f}",
                "",
                "",
                met,
            ]
        )
    if level.ceiling is not None:
        ce = level.ceiling
        rows.append(
            [
                "ceiling: Litestar hello-world GET (uvicorn, uvloop+httptools)",
                f"{ce.rate:,.0f}",
                _ms(ce.p50),
                _ms(ce.p99),
                "",
                "",
                "",
                "",
                "",
                f"{ce.errors}",
                "",
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(
        f"\nmodelreg vs MLflow {MLFLOW_VERSION}, concurrency {level.concurrency} (same client, same Postgres, same run)"
    )
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)) + " |")
    print_cpu(level)
    notes = [f"{comp.operation}: {comp.note}" for comp in level.comparisons if comp.note]
    if level.versions and level.versions.get("MLflow") != level.versions.get("modelreg"):
        notes.append(f"versions actually registered on the model: {level.versions}")
    for comp in level.comparisons:
        for result in (comp.modelreg, comp.mlflow):
            if result.calls < result.planned:
                notes.append(
                    f"{result.system} {comp.operation}: stopped by the time cap after {result.calls} of"
                    f" {result.planned} calls"
                )
            if result.error_samples:
                notes.append(
                    f"{result.system} {comp.operation} errors, e.g. {result.error_samples[0]}"
                )
    for note in notes:
        print(f"- {note}")


def print_cpu(level: Level) -> None:
    """CPU per call, which the machine's load does not inflate the way it inflates latency."""
    headers = [
        "CPU ms per call",
        "modelreg server",
        "its Postgres",
        "MLflow server",
        "its Postgres",
        "MLflow/modelreg (total)",
    ]
    rows: list[list[str]] = []
    for comp in level.comparisons:
        mr, ml = comp.modelreg.cpu_ms, comp.mlflow.cpu_ms
        if mr is None or ml is None:
            continue
        total = sum(ml) / sum(mr) if sum(mr) else float("inf")
        rows.append(
            [
                comp.operation,
                f"{mr[0]:.2f}",
                f"{mr[1]:.2f}",
                f"{ml[0]:.2f}",
                f"{ml[1]:.2f}",
                f"{total:.1f}x",
            ]
        )
    if not rows:
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)) + " |")


def print_json(levels: list[Level], counts: Counts, context: dict[str, Any]) -> None:
    print(json.dumps({"kind": "context", **context, "counts": asdict(counts)}))
    for level in levels:
        if level.ceiling is not None:
            print(json.dumps({"kind": "ceiling", **level.ceiling.summary()}))
        for comp in level.comparisons:
            for result in (comp.modelreg, comp.mlflow):
                print(
                    json.dumps(
                        {
                            "kind": "operation",
                            **result.summary(),
                            "target": verdict(comp, level.concurrency),
                        }
                    )
                )
        for system, (first, last) in level.first_last.items():
            print(
                json.dumps(
                    {
                        "kind": "first_vs_last",
                        "system": system,
                        "concurrency": level.concurrency,
                        "edge_calls": counts.edge,
                        "first_p50_ms": round(first, 2),
                        "last_p50_ms": round(last, 2),
                        "ratio": round(last / first, 3),
                        "versions": level.versions.get(system),
                    }
                )
            )


# ---------------------------------------------------------------- main


@contextlib.contextmanager
def servers(pg_url: str, workdir: Path, mlflow_exe: Path, token: str) -> Iterator[Servers]:
    started: list[Process] = []
    try:
        log("starting modelreg serve ...")
        t0 = time.monotonic()
        process, modelreg_url = start_modelreg(pg_url, workdir, token)
        started.append(process)
        log(f"  modelreg ready at {modelreg_url} in {time.monotonic() - t0:.1f} s")
        log("starting mlflow server --workers 1 ...")
        t0 = time.monotonic()
        process, mlflow_url = start_mlflow(mlflow_exe, pg_url, workdir)
        started.append(process)
        log(f"  MLflow ready at {mlflow_url} in {time.monotonic() - t0:.1f} s")
        process, hello_url = start_hello(workdir)
        started.append(process)
        for process in started:
            wait_quiet(process)
        yield Servers(
            modelreg_url,
            mlflow_url,
            hello_url,
            {"modelreg": started[0].proc.pid, "MLflow": started[1].proc.pid},
        )
    except BaseException:
        for process in started:
            alive = (
                "running" if process.proc.poll() is None else f"exited {process.proc.returncode}"
            )
            tail = process.log_path.read_text(errors="replace")[-2000:]
            log(f"--- {process.name} ({alive}), end of {process.log_path.name}:\n{tail}")
        raise
    finally:
        for process in reversed(started):
            process.stop()


def wait_quiet(
    process: Process, *, cores: float = 0.05, window: float = 2.0, timeout: float = 180.0
) -> None:
    """Wait until a server's process group uses less than ``cores`` of CPU.

    MLflow answers /health long before it is done starting: its job runner and four huey
    consumers then import mlflow for another 10-30 s, burning about a core.
    """
    t0 = time.monotonic()
    before = _proc_ticks(process.proc.pid, set())[0]
    while time.monotonic() - t0 < timeout:
        time.sleep(window)
        process.check_alive()
        after = _proc_ticks(process.proc.pid, set())[0]
        used = (
            sum(ticks - before.get(pid, 0) for pid, ticks in after.items())
            * CpuMeter.TICK_MS
            / 1000
        )
        before = after
        if used / window < cores:
            log(f"  {process.name} quiet after {time.monotonic() - t0:.0f} s")
            return
    log(f"  {process.name} still busy after {timeout:.0f} s; measuring anyway")


@dataclass
class Servers:
    modelreg: str
    mlflow: str
    hello: str
    groups: dict[str, int]  # system -> process group id of its server


async def drive(
    urls: Servers,
    token: str,
    counts: Counts,
    levels: list[int],
    max_seconds: float | None,
    pg_url: str,
) -> tuple[list[Level], dict[str, Any]]:
    modelreg_url, mlflow_url, hello_url = urls.modelreg, urls.mlflow, urls.hello
    results = []
    watcher = ClusterWatcher(pg_url)
    await watcher.start()
    meter = CpuMeter(watcher, urls.groups, {"modelreg": MODELREG_DB, "MLflow": MLFLOW_DB})
    try:
        await meter.calibrate()
        for c in levels:
            limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
            timeout = httpx.Timeout(120.0)
            async with (
                httpx.AsyncClient(
                    base_url=modelreg_url,
                    limits=limits,
                    timeout=timeout,
                    headers={"Authorization": f"Bearer {token}"},
                ) as mr,
                httpx.AsyncClient(base_url=mlflow_url, limits=limits, timeout=timeout) as ml,
                httpx.AsyncClient(base_url=hello_url, limits=limits, timeout=timeout) as hello,
            ):
                results.append(
                    await measure_level(
                        (ModelregAPI(mr), MlflowAPI(ml)), hello, counts, c, max_seconds, meter
                    )
                )
    finally:
        others = await watcher.stop()
    return results, others


class ClusterWatcher:
    """Samples the write transactions that other clients keep open on the Postgres cluster.

    modelreg's sealer only seals events of transactions older than the cluster-wide snapshot
    xmin, so a long write transaction in ANY database of the cluster delays every modelreg
    write (each waits for its seal). This says how much of that the run was exposed to.
    """

    def __init__(self, pg_url: str) -> None:
        self.pg_url = pg_url
        self.samples: list[
            float
        ] = []  # age in seconds of the oldest foreign write transaction, 0 if none
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._conn = await asyncpg.connect(on_database(self.pg_url, "postgres"))
        self._lock = asyncio.Lock()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            async with self._lock:
                age = await self._conn.fetchval(
                    "SELECT coalesce(extract(epoch FROM max(clock_timestamp() - xact_start)), 0)::float8"
                    " FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND datname <> ALL($1::text[])",
                    [MODELREG_DB, MLFLOW_DB],
                )
            self.samples.append(age)
            await asyncio.sleep(0.5)

    async def backends(self, database: str) -> set[int]:
        async with self._lock:
            rows = await self._conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1", database
            )
        return {r["pid"] for r in rows}

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._conn.close()
        busy = [a for a in self.samples if a > 0]
        share = len(busy) / len(self.samples) if self.samples else 0.0
        longest = max(busy, default=0.0)
        summary = (
            f"present in {share:.0%} of {len(self.samples)} samples, the oldest {longest:.1f} s old"
            if busy
            else f"none seen in {len(self.samples)} samples"
        )
        return {
            "samples": len(self.samples),
            "share_with_open_write_tx": round(share, 3),
            "oldest_seconds": round(longest, 2),
            "summary": summary,
        }


class CpuMeter:
    """CPU time (from /proc) of a system's server process group and of its Postgres backends.

    Wall-clock rates on a loaded machine say as much about the neighbours as about the
    servers; CPU per call does not depend on how long a process waited for a core.
    """

    TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")

    def __init__(
        self, watcher: ClusterWatcher, groups: dict[str, int], databases: dict[str, str]
    ) -> None:
        self.watcher = watcher
        self.groups = groups
        self.databases = databases
        # CPU ms per second each system burns while idle (pollers, MLflow's job consumers),
        # subtracted so that a slower run is not charged more of it per call.
        self.idle: dict[str, tuple[float, float]] = {}

    async def calibrate(self, windows: int = 8, seconds: float = 1.5) -> None:
        """The idle burn: the quietest of several windows, since a server that has just
        become ready may still be starting (MLflow's job consumers import for seconds)."""
        rates: dict[str, list[tuple[float, float]]] = {system: [] for system in self.groups}
        for _ in range(windows):
            before = {system: await self.read(system) for system in self.groups}
            await asyncio.sleep(seconds)
            for system in self.groups:
                server, postgres_ = self._used(before[system], await self.read(system))
                rates[system].append((server / seconds, postgres_ / seconds))
        self.idle = {system: min(found) for system, found in rates.items()}
        log(
            "  idle CPU (ms/s, server + its Postgres): "
            + ", ".join(f"{k} {v[0]:.0f} + {v[1]:.0f}" for k, v in self.idle.items())
        )

    async def read(self, system: str) -> tuple[dict[int, int], dict[int, int]]:
        backends = await self.watcher.backends(self.databases[system])
        return _proc_ticks(self.groups[system], backends)

    def _used(
        self,
        before: tuple[dict[int, int], dict[int, int]],
        after: tuple[dict[int, int], dict[int, int]],
    ) -> tuple[float, float]:
        def used(b: dict[int, int], a: dict[int, int]) -> float:
            return sum(ticks - b.get(pid, 0) for pid, ticks in a.items()) * self.TICK_MS

        return used(before[0], after[0]), used(before[1], after[1])

    def per_call(
        self,
        system: str,
        before: tuple[dict[int, int], dict[int, int]],
        after: tuple[dict[int, int], dict[int, int]],
        window: float,
        calls: int,
    ) -> tuple[float, float]:
        """CPU ms per call over a window of ``window`` seconds, less the idle burn."""
        server, postgres_ = self._used(before, after)
        idle_server, idle_postgres = self.idle.get(system, (0.0, 0.0))
        return (
            max(0.0, server - idle_server * window) / max(calls, 1),
            max(0.0, postgres_ - idle_postgres * window) / max(calls, 1),
        )


def _proc_ticks(group: int, backends: set[int]) -> tuple[dict[int, int], dict[int, int]]:
    """utime + stime (clock ticks) of the processes in ``group`` (and of their children in
    sessions of their own: modelreg's worker process) and of the ``backends`` pids."""
    server: dict[int, int] = {}
    postgres_: dict[int, int] = {}
    others: dict[int, tuple[int, int]] = {}  # pid -> (parent, ticks)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is the state (field 3)
        pid, ticks = int(entry.name), int(fields[11]) + int(fields[12])
        if int(fields[2]) == group:
            server[pid] = ticks
        elif pid in backends:
            postgres_[pid] = ticks
        else:
            others[pid] = (int(fields[1]), ticks)
    for pid, (parent, ticks) in others.items():
        if parent in server:
            server[pid] = ticks
    return server, postgres_


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="small counts: a smoke run of a minute or two"
    )
    p.add_argument("--json", action="store_true", help="print results as JSON lines")
    p.add_argument("--json-out", type=Path, help="also write the JSON lines to this file")
    p.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 16], help="client concurrency levels"
    )
    p.add_argument(
        "--pg-url",
        default=os.environ.get("MODELREG_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="Postgres server both systems use (its databases "
        f"{MODELREG_DB!r} and {MLFLOW_DB!r} are dropped and recreated)",
    )
    p.add_argument(
        "--private-postgres",
        action="store_true",
        help="instead of --pg-url, start an embedded Postgres for this run only (both systems use it)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=90.0,
        help="no call of a workload starts after this long (0: no cap); create version is never capped",
    )
    p.add_argument(
        "--mlflow-venv",
        type=Path,
        default=MLFLOW_VENV,
        help="venv holding mlflow (made if missing)",
    )
    args = p.parse_args()
    counts = QUICK if args.quick else FULL
    mlflow_exe = ensure_mlflow(args.mlflow_venv)
    token = "bench-" + secrets.token_urlsafe(24)
    load_before = load_average()
    if args.private_postgres:
        log("starting a private embedded Postgres ...")
    with postgres(None if args.private_postgres else args.pg_url) as pg_url:
        asyncio.run(recreate_databases(pg_url))
        try:
            with (
                tempfile.TemporaryDirectory(prefix="modelreg-vs-mlflow-") as tmp,
                servers(pg_url, Path(tmp), mlflow_exe, token) as urls,
                asyncio.Runner(loop_factory=_loop_factory()) as runner,
            ):
                levels, others = runner.run(
                    drive(urls, token, counts, args.concurrency, args.max_seconds or None, pg_url)
                )
        finally:
            asyncio.run(recreate_databases(pg_url, drop_only=True))
    where = (
        "a private embedded Postgres"
        if args.private_postgres
        else f"the Postgres at {urlsplit(args.pg_url).netloc}"
    )
    context = {
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "cores": os.cpu_count(),
        "quick": args.quick,
        "mlflow": MLFLOW_VERSION,
        "postgres": where,
        "other_write_transactions": others,
    }
    if args.json_out:
        with args.json_out.open("w") as out, contextlib.redirect_stdout(out):
            print_json(levels, counts, context)
    if args.json:
        print_json(levels, counts, context)
        return
    for level in levels:
        print_level(level, counts)
    print(
        f"\n{os.cpu_count()} cores; load average (1/5/15 min) before {load_before}, after {context['load_average_after']};"
        f" client, servers and Postgres ({where}) share the machine."
    )
    print(
        f"Write transactions of other clients of that Postgres cluster (sampled every 0.5 s): {others['summary']}"
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
