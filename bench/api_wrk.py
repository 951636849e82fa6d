"""modelreg's HTTP API measured with a compiled load generator (wrk), beside the ceiling.

    python -m bench.api_wrk [--seconds 5] [--connections 16] [--versions 500]
                            [--checkout DIR] [--database-url URL] [--json]

A Python client tops out far below the server on a 2-core machine (httpx measured a
Litestar hello-world at ~790 req/s where wrk measured ~11,600), so every figure here comes
from ``wrk``: installed with ``apt-get install -y wrk`` when missing (the script says so
and stops if it cannot). The ceiling is a Litestar hello-world served the way modelreg is
served (uvicorn, uvloop, httptools), measured by the same wrk in the same run.

``modelreg serve`` (role ``all``) runs on a fresh database with an embedded NATS; one model
is seeded with ``--versions`` versions and an alias. Workloads, each for ``--seconds``:
get one version, get by alias, one page of 100 versions, and registering new versions
(a wrk Lua script gives every request its own artifact digest) with 1 connection and with
``--connections``. For each: requests/s, p50, p99, non-2xx answers, and wrk's own CPU use
(CPU seconds per wall second; near 1.0 means the generator, not the server, is the limit),
and the CPU ms per request of the server's process group and of its Postgres backends
(from /proc, less the idle burn measured for 3 s before the first workload): on a machine
shared with other jobs these move far less than req/s.

``--checkout DIR`` serves another checkout of modelreg (e.g. a ``git worktree`` at an
older commit) with this venv's packages: the before/after comparison of a change.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import asyncpg
import httpx

from bench.api_vs_mlflow import (
    REPO,
    SERVING,
    CpuMeter,
    Process,
    _proc_ticks,
    log,
    on_database,
    start_hello,
    wait_ready,
)
from bench.common import postgres

DATABASE = "modelreg_wrk"
MODEL = "wrkbench"
PAGE = 100

# Each request registers a new version: its artifact digest is the request counter.
CREATE_VERSION_LUA = """
local counter = 0
local thread_id = 0
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  thread_id = id
  -- wrk.format drops wrk.headers (the -H Authorization) when given its own table.
  wrk.headers["Content-Type"] = "application/json"
end
request = function()
  counter = counter + 1
  local digest = string.format("%016x%048x", thread_id + 1, counter)
  local body = '{"artifacts":[{"path":"model.bin",EXTERNAL'
    .. '"uri":"s3://bench/model.bin","sha256":"' .. digest .. '","size":1}]}'
  return wrk.format("POST", nil, nil, body)
end
"""


@dataclass(frozen=True)
class Figure:
    workload: str
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    wrk_cpu: float  # CPU seconds wrk used per wall-clock second
    # CPU ms per request of the server's process group and of its Postgres backends, less
    # their idle burn (None: the ceiling, or not measured). Steadier than req/s on a
    # machine shared with other jobs, since waiting for a core costs no CPU.
    server_cpu_ms: float | None = None
    postgres_cpu_ms: float | None = None


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk is missing; installing it with apt-get (Debian package 'wrk') ...")
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, stdout=sys.stderr)
    found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is not installed and apt-get could not install it: apt-get install -y wrk")
    return found


_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: (.*)")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(
    wrk: str,
    url: str,
    *,
    workload: str,
    connections: int,
    seconds: float,
    token: str | None,
    script: Path | None = None,
    timeout: float | None = None,
    cookie: str | None = None,
) -> Figure:
    """``timeout``: seconds before wrk gives up on an answer (its default, 2 s, would drop
    a slow server's slowest answers from the latencies instead of counting them)."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--latency"]
    if timeout is not None:
        argv.append(f"--timeout={round(timeout)}s")
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    if cookie:
        argv += ["-H", f"Cookie: {cookie}"]
    if script is not None:
        argv += ["-s", str(script)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run([*argv, url], check=True, capture_output=True, text=True).stdout
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    latencies = {q: float(v) * _UNIT_MS[unit] for q, v, unit in _LATENCY.findall(out)}
    rate = _RATE.search(out)
    if rate is None or "50" not in latencies or "99" not in latencies:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    errors = _SOCKET_ERRORS.search(out)
    if errors:
        log(f"  {workload}: socket errors {errors.group(1)}")
    non_2xx = _NON_2XX.search(out)
    return Figure(
        workload=workload,
        connections=connections,
        requests_per_s=float(rate.group(1)),
        p50_ms=latencies["50"],
        p99_ms=latencies["99"],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        wrk_cpu=cpu / wall,
    )


def start_modelreg(
    pg_url: str, workdir: Path, token: str, checkout: Path, settings: Sequence[str] = ()
) -> tuple[Process, str]:
    """``settings``: extra ``NAME=VALUE`` pairs, each served as ``MODELREG_NAME``."""
    extra = {f"MODELREG_{n.upper()}": v for n, _, v in (s.partition("=") for s in settings)}
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")}
        | {
            "MODELREG_DATABASE_URL": on_database(pg_url, DATABASE),
            "MODELREG_DATA_DIR": str(workdir / "modelreg-data"),
            "MODELREG_NATS_PORT": "0",
            "MODELREG_PORT": "0",
            "MODELREG_BOOTSTRAP_TOKEN": token,
            # The checkout's own packages come first, ahead of this venv's editable install.
            "PYTHONPATH": str(checkout),
        }
        | extra
    )
    argv = [sys.executable, "-m", "service", "serve"]
    process = Process("modelreg serve", argv, workdir / "modelreg.log", env=env, cwd=checkout)

    def url_of() -> str | None:
        found = SERVING.search(process.log_path.read_text(errors="replace"))
        return f"http://127.0.0.1:{found.group(1)}" if found else None

    return process, wait_ready(process, url_of, "/health/ready", 120)


async def recreate_database(pg_url: str, *, drop_only: bool = False) -> None:
    conn = await asyncpg.connect(on_database(pg_url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        if not drop_only:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()


def seed(url: str, token: str, versions: int, model: str = MODEL) -> bool:
    """One model (``model``) with ``versions`` versions and the alias ``champion`` on version 1.

    Answers whether the server takes the ``external`` marker: checkouts older than the
    artifact store (0.2) refuse it as an unknown field, and need none for a ``uri``.
    """

    def artifact(i: int, marker: bool) -> dict[str, object]:
        entry: dict[str, object] = {"path": "model.bin", "uri": "s3://bench/model.bin"}
        entry |= {"sha256": f"{i:064x}", "size": 1}
        return entry | {"external": True} if marker else entry

    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        client.post("/api/v1/models", json={"name": model}).raise_for_status()
        versions_url = f"/api/v1/models/{model}/versions"
        first = client.post(versions_url, json={"artifacts": [artifact(0, True)]})
        marker = not (first.status_code == 400 and "external" in first.text)
        if not marker:
            first = client.post(versions_url, json={"artifacts": [artifact(0, False)]})
        first.raise_for_status()
        for i in range(1, versions):
            client.post(versions_url, json={"artifacts": [artifact(i, marker)]}).raise_for_status()
            if i % 100 == 99:
                log(f"  seeded {i + 1}/{versions} versions")
        client.put(f"/api/v1/models/{model}/aliases/champion", json={"version": 1})
        # Reads wait for the views; one read makes sure the seed is visible before timing.
        client.get(f"/api/v1/models/{model}/versions/by-alias/champion").raise_for_status()
    return marker


def ui_session(url: str, token: str) -> str | None:
    """The web UI's session cookie for ``token`` (None: the served checkout has no UI)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        form = client.get("/ui/login")
        found = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
        if form.status_code != 200 or found is None:
            return None
        client.post("/ui/login", data={"token": token, "_csrf_token": found.group(1)})
        session = client.cookies.get("modelreg_session")
    return f"modelreg_session={session}" if session else None


async def _backends(pg_url: str, database: str | None = None) -> set[int]:
    """The pids of the Postgres backends serving ``database`` (the bench's, by default)."""
    conn = await asyncpg.connect(on_database(pg_url, "postgres"))
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", database or DATABASE
        )
    finally:
        await conn.close()
    return {r["pid"] for r in rows}


class _Cpu:
    """CPU ms used by the server's process group and its Postgres backends (from /proc)."""

    def __init__(self, pg_url: str, group: int) -> None:
        self.pg_url = pg_url
        self.group = group
        self.idle = (0.0, 0.0)  # ms per second while nothing is asked of the server

    def read(self) -> tuple[dict[int, int], dict[int, int]]:
        import asyncio

        return _proc_ticks(self.group, asyncio.run(_backends(self.pg_url)))

    @staticmethod
    def used(
        before: tuple[dict[int, int], dict[int, int]], after: tuple[dict[int, int], dict[int, int]]
    ) -> tuple[float, float]:
        def one(b: dict[int, int], a: dict[int, int]) -> float:
            return sum(t - b.get(pid, 0) for pid, t in a.items()) * CpuMeter.TICK_MS

        return one(before[0], after[0]), one(before[1], after[1])

    def calibrate(self, seconds: float = 3.0) -> None:
        before = self.read()
        time.sleep(seconds)
        server, pg = self.used(before, self.read())
        self.idle = (server / seconds, pg / seconds)
        log(f"  idle burn: server {self.idle[0]:.0f} ms/s, its Postgres {self.idle[1]:.0f} ms/s")


def measure(args: argparse.Namespace, pg_url: str) -> list[Figure]:
    import asyncio

    wrk = ensure_wrk()
    token = "bench-" + os.urandom(12).hex()
    checkout = Path(args.checkout).resolve() if args.checkout else REPO
    asyncio.run(recreate_database(pg_url))
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="modelreg-wrk-") as tmp:
        workdir = Path(tmp)
        script = workdir / "create_version.lua"
        hello, hello_url = start_hello(workdir)
        log(f"serving {checkout} ...")
        server, url = start_modelreg(pg_url, workdir, token, checkout, args.set)
        try:
            log(f"seeding {args.versions} versions ...")
            marker = seed(url, token, args.versions)
            script.write_text(
                CREATE_VERSION_LUA.replace("EXTERNAL", '"external":true,' if marker else "")
            )
            c, s = args.connections, args.seconds
            base = f"{url}/api/v1/models/{MODEL}"
            cookie = ui_session(url, token)
            plan: list[tuple[str, str, int, Path | None, str | None]] = [
                ("hello-world (ceiling)", hello_url + "/", c, None, None),
                ("get version", f"{base}/versions/1", c, None, token),
                ("get by alias", f"{base}/versions/by-alias/champion", c, None, token),
                (f"page of {PAGE} versions", f"{base}/versions?limit={PAGE}", c, None, token),
                *(
                    [
                        ("UI: models page", f"{url}/ui/", c, None, None),
                        (
                            f"UI: model page ({PAGE} vers.)",
                            f"{url}/ui/models/{MODEL}",
                            c,
                            None,
                            None,
                        ),
                        ("UI: version page", f"{url}/ui/models/{MODEL}/versions/1", c, None, None),
                    ]
                    if cookie
                    else []
                ),
                ("register version", f"{base}/versions", 1, script, token),
                ("register version", f"{base}/versions", c, script, token),
            ]
            cpu = _Cpu(pg_url, server.proc.pid)  # the server leads its own process group
            cpu.calibrate()
            for workload, target, connections, lua, bearer in plan:
                log(f"wrk: {workload}, {connections} connection(s), {s} s ...")
                before = cpu.read()
                started = time.monotonic()
                figure = run_wrk(
                    wrk,
                    target,
                    workload=workload,
                    connections=connections,
                    seconds=s,
                    token=bearer,
                    script=lua,
                    cookie=cookie if target.startswith(f"{url}/ui/") else None,
                )
                window = time.monotonic() - started
                if target.startswith(url):
                    srv, pg = cpu.used(before, cpu.read())
                    calls = max(1.0, figure.requests_per_s * window)
                    figure = replace(
                        figure,
                        server_cpu_ms=max(0.0, srv - cpu.idle[0] * window) / calls,
                        postgres_cpu_ms=max(0.0, pg - cpu.idle[1] * window) / calls,
                    )
                figures.append(figure)
                server.check_alive()
        finally:
            server.stop()
            hello.stop()
            asyncio.run(recreate_database(pg_url, drop_only=True))
    return figures


def print_table(figures: list[Figure], ceiling: float) -> None:
    print(
        f"{'workload':<24}{'conns':>6}{'req/s':>10}{'% ceil':>8}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'non-2xx':>9}{'wrk cpu':>9}{'srv ms/r':>10}{'pg ms/r':>9}"
    )
    for f in figures:
        share = 100.0 * f.requests_per_s / ceiling if ceiling else 0.0
        srv = f"{f.server_cpu_ms:>10.2f}" if f.server_cpu_ms is not None else f"{'':>10}"
        pg = f"{f.postgres_cpu_ms:>9.2f}" if f.postgres_cpu_ms is not None else f"{'':>9}"
        print(
            f"{f.workload:<24}{f.connections:>6}{f.requests_per_s:>10,.0f}{share:>7.0f}%"
            f"{f.p50_ms:>9.2f}{f.p99_ms:>9.2f}{f.non_2xx:>9}{f.wrk_cpu:>9.2f}{srv}{pg}"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--versions", type=int, default=500)
    parser.add_argument("--checkout", help="serve this checkout of modelreg instead of this one")
    parser.add_argument("--database-url", help="Postgres server (default: an embedded one)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="serve with MODELREG_NAME=VALUE (e.g. --set worker_process=false); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    args = parser.parse_args()
    with postgres(args.database_url) as pg_url:
        figures = measure(args, pg_url)
    if args.json:
        for figure in figures:
            print(json.dumps(asdict(figure)))
    else:
        print_table(figures, figures[0].requests_per_s)


if __name__ == "__main__":
    main()
