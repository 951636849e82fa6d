"""One process against several: how modelreg's throughput moves with API replicas.

    python -m bench.topologies [--seconds 5] [--connections 16] [--versions 200]
                               [--database-url URL] [--json]

Serves the same registry three ways against one Postgres and one NATS (embedded ones by
default), each on a fresh database: one process in role ``all`` (what ``modelreg serve``
runs), one ``api`` process beside one ``worker`` (sealer, projections, relay and the other
background loops), and two ``api`` processes beside one ``worker``. The API processes share
the token pepper, so one token works on every replica, as in deploy/.

Two models are seeded with ``--versions`` versions each. Every workload runs two ``wrk``
processes at once, each with half the connections, one per model; with two API replicas
each ``wrk`` talks to its own replica, as a load balancer would spread them. Workloads: get
one version, one page of 100 versions, and registering versions (the ``bench.api_wrk`` Lua
script). Printed per topology and workload: the summed requests/s, the worse p50 and p99 of
the two, non-2xx answers, and the Litestar hello-world ceiling measured by the same wrk in
the same run. On a 2-core machine a second API process competes for the cores with the
first, with Postgres and with wrk: the figures show what replicas buy when the CPU is
already shared, which is the case to read them for; deploy/README.md reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.api_vs_mlflow import REPO, SERVING, Process, log, on_database, start_hello, wait_ready
from bench.api_wrk import (
    CREATE_VERSION_LUA,
    DATABASE,
    Figure,
    ensure_wrk,
    recreate_database,
    run_wrk,
    seed,
)
from bench.common import embedded_nats, postgres

MODELS = ("wrkbench", "wrkbench2")
TOPOLOGIES: dict[str, tuple[str, ...]] = {
    "1 process (all)": ("all",),
    "1 api + 1 worker": ("worker", "api"),
    "2 api + 1 worker": ("worker", "api", "api"),
}


@dataclass(frozen=True)
class Result:
    topology: str
    workload: str
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int


def start(
    role: str, index: int, pg_url: str, nats_url: str, work: Path, token: str
) -> tuple[Process, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")} | {
        "MODELREG_DATABASE_URL": on_database(pg_url, DATABASE),
        "MODELREG_NATS_URL": nats_url,
        "MODELREG_DATA_DIR": str(work / f"data-{index}"),
        "MODELREG_PORT": "0",
        "MODELREG_ROLE": role,
        "MODELREG_BOOTSTRAP_TOKEN": token,
        "MODELREG_TOKEN_PEPPER": "bench-pepper-" + "0" * 32,
        "PYTHONPATH": str(REPO),
    }
    log_path = work / f"{role}-{index}.log"
    process = Process(
        f"modelreg serve --role {role}",
        [sys.executable, "-m", "service", "serve"],
        log_path,
        env=env,
        cwd=REPO,
    )

    def url_of() -> str | None:
        found = SERVING.search(log_path.read_text(errors="replace"))
        return f"http://127.0.0.1:{found.group(1)}" if found else None

    return process, wait_ready(process, url_of, "/health/live", 120)


def both(
    wrk: str,
    targets: list[str],
    *,
    workload: str,
    connections: int,
    seconds: float,
    token: str,
    script: Path | None,
) -> Figure:
    """Two wrk at once, half the connections each; rates summed, latencies the worse."""
    half = max(1, connections // 2)
    with ThreadPoolExecutor(len(targets)) as pool:
        figures = list(
            pool.map(
                lambda url: run_wrk(
                    wrk,
                    url,
                    workload=workload,
                    connections=half,
                    seconds=seconds,
                    token=token,
                    script=script,
                ),
                targets,
            )
        )
    return Figure(
        workload=workload,
        connections=half * len(targets),
        requests_per_s=sum(f.requests_per_s for f in figures),
        p50_ms=max(f.p50_ms for f in figures),
        p99_ms=max(f.p99_ms for f in figures),
        non_2xx=sum(f.non_2xx for f in figures),
        wrk_cpu=sum(f.wrk_cpu for f in figures),
    )


def measure_topology(
    name: str, roles: tuple[str, ...], args: argparse.Namespace, pg_url: str, wrk: str
) -> list[Result]:
    token = "bench-" + os.urandom(12).hex()
    asyncio.run(recreate_database(pg_url))
    processes: list[Process] = []
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="modelreg-topo-") as tmp:
        work = Path(tmp)
        with embedded_nats(work / "nats") as nats_url:
            try:
                apis: list[str] = []
                for index, role in enumerate(roles):
                    log(f"{name}: starting role {role} ...")
                    process, url = start(role, index, pg_url, nats_url, work, token)
                    processes.append(process)
                    if role != "worker":
                        apis.append(url)
                for model in MODELS:
                    log(f"{name}: seeding {args.versions} versions of {model} ...")
                    seed(apis[0], token, args.versions, model)
                script = work / "create_version.lua"
                script.write_text(CREATE_VERSION_LUA.replace("EXTERNAL", '"external":true,'))
                # With one API both wrk talk to it; with two, each to its own replica.
                hosts = [apis[i % len(apis)] for i in range(len(MODELS))]
                plan = [
                    ("get version", "/versions/1", args.connections, None),
                    ("page of 100 versions", "/versions?limit=100", args.connections, None),
                    ("register version", "/versions", 2, script),
                    ("register version", "/versions", args.connections, script),
                ]
                for workload, suffix, connections, lua in plan:
                    log(f"{name}: {workload}, {connections} connections ...")
                    targets = [
                        f"{host}/api/v1/models/{model}{suffix}"
                        for host, model in zip(hosts, MODELS, strict=True)
                    ]
                    figure = both(
                        wrk,
                        targets,
                        workload=workload,
                        connections=connections,
                        seconds=args.seconds,
                        token=token,
                        script=lua,
                    )
                    for process in processes:
                        process.check_alive()
                    results.append(
                        Result(
                            topology=name,
                            workload=workload,
                            connections=figure.connections,
                            requests_per_s=figure.requests_per_s,
                            p50_ms=figure.p50_ms,
                            p99_ms=figure.p99_ms,
                            non_2xx=figure.non_2xx,
                        )
                    )
            finally:
                for process in reversed(processes):
                    process.stop()
    asyncio.run(recreate_database(pg_url, drop_only=True))
    return results


def ceiling(wrk: str, seconds: float, connections: int) -> Figure:
    with tempfile.TemporaryDirectory(prefix="modelreg-hello-") as tmp:
        hello, url = start_hello(Path(tmp))
        try:
            return run_wrk(
                wrk,
                url + "/",
                workload="hello-world (ceiling)",
                connections=connections,
                seconds=seconds,
                token=None,
            )
        finally:
            hello.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--database-url", help="Postgres server (default: an embedded one)")
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    args = parser.parse_args()
    wrk = ensure_wrk()
    results: list[Result] = []
    with postgres(args.database_url) as pg_url:
        top = ceiling(wrk, args.seconds, args.connections)
        for name, roles in TOPOLOGIES.items():
            results += measure_topology(name, roles, args, pg_url, wrk)
    if args.json:
        print(json.dumps(asdict(top)))
        for result in results:
            print(json.dumps(asdict(result)))
        return
    print(
        f"hello-world ceiling, {top.connections} connections: {top.requests_per_s:,.0f} req/s"
        f" (p99 {top.p99_ms:.2f} ms)"
    )
    print(
        f"{'topology':<20}{'workload':<24}{'conns':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}"
    )
    for r in results:
        print(
            f"{r.topology:<20}{r.workload:<24}{r.connections:>6}{r.requests_per_s:>9,.0f}"
            f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.non_2xx:>9}"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
