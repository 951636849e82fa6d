"""Two checkouts of modelreg served at once, measured in turn with wrk: a change's before
and after in the same minutes.

    python -m bench.side_by_side --base ../before [--rounds 4] [--seconds 4] [--versions 120]
                                 [WORKLOAD ...]

On a machine shared with other jobs the rate of one checkout swings by half from one
minute to the next, so a before run followed by an after run measures the machine as much
as the change. Here both ``modelreg serve`` processes (``--base DIR``: a ``git archive``
or worktree of the older commit, served with this venv's packages; and this checkout)
run side by side, each on its own database with the same seed (bench.mlflow_compat's: one
model with ``--versions`` versions, the files of a small MLflow model on version 1, two
aliases), and each workload is measured on one, then the other, for ``--rounds`` rounds
(the order flips every round). Printed per run: req/s, p99, non-2xx answers and CPU per
request (from /proc: it moves less than req/s) of the server process, of the whole side
(the server, its children: the projection worker and the embedded NATS server, and the
Postgres backends serving its database); then the medians and the change.

A WORKLOAD is one of bench.mlflow_compat's operation names (``"get version"``, ``"search
versions (100)"``, ``"create version"``, ...), ``"tag, then read it (latest)"`` (every
other request a write, every read waiting for the views to show the writes before it), or
a path of the API (``/api/v1/me``);
without any, a default set of reads and the MLflow create. The hello-world ceiling is not
measured: this compares two servers with each other, not with it.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import api_wrk, mlflow_compat
from bench.api_vs_mlflow import CpuMeter, Process, _proc_ticks, log
from bench.common import parser, postgres
from events.mlflow_artifacts import download_uri
from tests.support.mlflow_models import save_model

REPO = Path(__file__).resolve().parents[1]
# Workloads of their own: a wrk script that writes every other request, each connection
# then reading with ``Modelreg-Consistency: latest``, so every read waits for the views to
# show the writes made before it (what a client reading its own writes does).
VERSION_1 = f"/api/v1/models/{mlflow_compat.MODEL}/versions/1"
MIXED = {
    "tag, then read it (latest)": f"""
local i = 0
local reading = {{}}
function init(args)
  for name, value in pairs(wrk.headers) do reading[name] = value end
  reading["Modelreg-Consistency"] = "latest"
end
request = function()
  i = i + 1
  if i % 2 == 1 then
    local body = string.format('{{"value":"v%d"}}', i)
    return wrk.format("PUT", "{VERSION_1}/tags/bench",
                      {{["Content-Type"] = "application/json",
                        ["Authorization"] = wrk.headers["Authorization"]}}, body)
  end
  return wrk.format("GET", "{VERSION_1}", reading)
end
""",
}
FILES_ROOT = download_uri(mlflow_compat.MODEL, 1).removeprefix("mlflow-artifacts:/")
DEFAULT = [
    "/api/v1/me",
    f"/api/v1/models/{mlflow_compat.MODEL}/versions/1",
    "get version",
    "search versions (100)",
    "download MLmodel",
    "create version",
]


@dataclass
class Served:
    name: str
    process: Process
    url: str
    database: str


Ticks = tuple[dict[int, int], dict[int, int]]  # CPU clock ticks by pid: side, its Postgres


def side_ticks(pg_url: str, side: Served) -> Ticks:
    """CPU ticks of the side's processes (the server's process group, its worker and NATS
    children) and of the Postgres backends serving its database."""
    backends = asyncio.run(api_wrk._backends(pg_url, side.database))
    return _proc_ticks(side.process.proc.pid, backends)


def used_ms(before: Ticks, after: Ticks, pid: int | None = None) -> float:
    """CPU ms between two readings: of ``pid`` alone, or of every process of the side (a
    process that came or went in between counts from what was seen)."""
    if pid is not None:
        return (after[0].get(pid, 0) - before[0].get(pid, 0)) * CpuMeter.TICK_MS
    ticks = sum(t - b.get(p, 0) for b, a in zip(before, after, strict=True) for p, t in a.items())
    return ticks * CpuMeter.TICK_MS


def lua_for(body: str, salt: int) -> str:
    """A wrk script POSTing ``body`` (bench.mlflow_compat's Lua format string) afresh each
    time. ``salt`` differs per run: wrk's ``math.random`` repeats its sequence every run,
    and a create sent again is a retry (modelreg answers it from what it recorded)."""
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        "local i = 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        f"  local body = string.format('{body}', i % 2 + 1, {salt} + i)\n"
        "  return wrk.format(nil, nil, nil, body)\n"
        "end\n"
    )


def main() -> None:
    p = parser(__doc__.splitlines()[0] if __doc__ else "")
    p.set_defaults(seconds=4.0)
    p.add_argument("--base", type=Path, required=True, help="the checkout to compare with")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--versions", type=int, default=120)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("workloads", nargs="*", default=DEFAULT)
    args = p.parse_args()
    wrk = api_wrk.ensure_wrk()
    operations = {o.name: o for o in mlflow_compat.operations(FILES_ROOT)}
    token = "mr_" + secrets.token_urlsafe(32)
    with postgres(args.database_url) as pg, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = save_model(workdir / "model")
        served: list[Served] = []
        try:
            for name, checkout in (("before", args.base.resolve()), ("after", REPO)):
                api_wrk.DATABASE = f"modelreg_side_{name}"
                asyncio.run(api_wrk.recreate_database(pg))
                (workdir / name).mkdir()
                process, url = api_wrk.start_modelreg(pg, workdir / name, token, checkout)
                served.append(Served(name, process, url, api_wrk.DATABASE))
                log(f"{name}: {checkout} at {url}; seeding {args.versions} versions ...")
                mlflow_compat.seed_modelreg(url, token, model_dir, args.versions)
            results = measure(args, pg, wrk, operations, served, token, workdir)
        finally:
            for side in served:
                side.process.stop()
            for name in ("before", "after"):
                api_wrk.DATABASE = f"modelreg_side_{name}"
                asyncio.run(api_wrk.recreate_database(pg, drop_only=True))
    print(f"\nmedians of {args.rounds} rounds, wrk {args.connections} connections")
    print("CPU: us per request, of the server process / of the whole side")
    print(f"{'workload':30s} {'before req/s':>12s} {'CPU':>13s} {'after req/s':>12s} {'CPU':>13s}")
    for workload, (before, after) in results.items():
        b_rate, b_cpu, b_all = (statistics.median(x) for x in zip(*before, strict=True))
        a_rate, a_cpu, a_all = (statistics.median(x) for x in zip(*after, strict=True))
        print(
            f"{workload[:30]:30s} {b_rate:12,.0f} {b_cpu:6,.0f}/{b_all:6,.0f}"
            f" {a_rate:12,.0f} {a_cpu:6,.0f}/{a_all:6,.0f}"
            f"   {a_rate / b_rate - 1:+.0%} rate, {a_cpu / b_cpu - 1:+.0%} server CPU,"
            f" {a_all / b_all - 1:+.0%} side CPU"
        )


Run = tuple[float, float, float]  # req/s; CPU us per request: server, whole side


def measure(
    args: argparse.Namespace,
    pg_url: str,
    wrk: str,
    operations: dict[str, mlflow_compat.Operation],
    served: list[Served],
    token: str,
    workdir: Path,
) -> dict[str, tuple[list[Run], list[Run]]]:
    rounds, seconds, connections = args.rounds, args.seconds, args.connections
    results: dict[str, tuple[list[Run], list[Run]]] = {}
    for workload in args.workloads:
        operation = operations.get(workload)
        path = operation.path if operation else VERSION_1 if workload in MIXED else workload
        script = None
        if workload in MIXED:
            script = workdir / "mixed.lua"
            script.write_text(MIXED[workload])
        runs: dict[str, list[Run]] = {"before": [], "after": []}
        for round_ in range(rounds):
            for side in served if round_ % 2 == 0 else served[::-1]:
                if operation and operation.body:
                    script = workdir / "write.lua"
                    if operation.lua == mlflow_compat.WRITE_LUA:
                        script.write_text(lua_for(operation.body, secrets.randbelow(10**12)))
                    else:  # its own script (a transition's stages), as mlflow_compat runs it
                        script.write_text(f"BODY = '{operation.body}'\n{operation.lua}")
                before = side_ticks(pg_url, side)
                figure = api_wrk.run_wrk(
                    wrk,
                    side.url + path,
                    workload=workload,
                    connections=connections,
                    seconds=seconds,
                    token=token,
                    script=script,
                )
                after = side_ticks(pg_url, side)
                served_requests = max(1.0, figure.requests_per_s * seconds)
                server = 1e3 * used_ms(before, after, side.process.proc.pid) / served_requests
                whole = 1e3 * used_ms(before, after) / served_requests
                runs[side.name].append((figure.requests_per_s, server, whole))
                print(
                    f"{side.name:6s} {figure.requests_per_s:8,.0f} req/s  p99 {figure.p99_ms:7.1f} ms"
                    f"  non-2xx {figure.non_2xx:<4d} {server:6,.0f} / {whole:6,.0f} us/req"
                    f"  {workload}",
                    flush=True,
                )
        results[workload] = (runs["before"], runs["after"])
    return results


if __name__ == "__main__":
    main()
