"""Where one registering client's time goes (issue 17): wall-clock phases and CPU samples.

    python -m bench.write_profile [--seconds 15] [--checkout DIR] [--database-url URL]
                                  [--no-py-spy] [--raw-out FILE]

Starts ``modelreg serve`` (role ``all``, embedded NATS, a fresh database) through
``bench.write_probe``, which times the phases of each write in the server itself, seeds
one model, and registers versions with ``wrk`` on one connection (the ``bench.api_wrk``
Lua script) for ``--seconds``. Meanwhile ``py-spy record`` (``pip install py-spy``) samples
the server's Python stacks; the samples are grouped by what the stack is doing. Prints
the mean and p50 of every phase per request and the share of the server's CPU samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.api_vs_mlflow import REPO, SERVING, Process, on_database, wait_ready
from bench.api_wrk import (
    CREATE_VERSION_LUA,
    DATABASE,
    MODEL,
    ensure_wrk,
    recreate_database,
    run_wrk,
    seed,
)
from bench.common import postgres

# (substring of a sampled stack, what it is doing): the first that matches names it.
_CATEGORIES = [
    ("sealer.py", "sealer (background task)"),
    ("projections/", "projections (background task)"),
    ("publication/", "relay to NATS (background task)"),
    ("webhooks/", "other background tasks"),
    ("denials/", "other background tasks"),
    ("snapshots", "other background tasks"),
    ("signin.py", "authentication"),
    ("positions.py", "waiting for the seal (looks at the log)"),
    ("eventlog/store.py", "append"),
    ("executor.py", "load state, decide"),
    ("json_body.py", "request body: screening, JSON decode"),
    ("routes_", "route handler (the rest)"),
    ("service/commands", "route handler (the rest)"),
    ("serialization", "response: JSON encoding"),
    ("litestar/response", "response: JSON encoding"),
    ("service/api", "middleware (limits, telemetry, problems)"),
    ("litestar", "litestar (routing, DI, middleware)"),
    ("uvicorn", "HTTP server (uvicorn, httptools)"),
    ("asyncpg", "asyncpg (elsewhere)"),
]


def categorise(raw: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        label = next(
            (name for key, name in _CATEGORIES if key in stack),
            "event loop and C extensions (uvloop I/O, asyncpg protocol, httptools)",
        )
        counts[label] += int(n)
    return counts


def start_probed(
    pg_url: str, workdir: Path, token: str, checkout: Path
) -> tuple[Process, str, Path]:
    out = workdir / "probe.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")} | {
        "MODELREG_DATABASE_URL": on_database(pg_url, DATABASE),
        "MODELREG_DATA_DIR": str(workdir / "modelreg-data"),
        "MODELREG_NATS_PORT": "0",
        "MODELREG_PORT": "0",
        "MODELREG_BOOTSTRAP_TOKEN": token,
        "MODELREG_PROBE_OUT": str(out),
        "PYTHONPATH": str(checkout),
    }
    # -P: the probe's folder (bench/, whose modules shadow packages) stays off sys.path.
    argv = [sys.executable, "-P", str(REPO / "bench" / "write_probe.py")]
    process = Process(
        "modelreg serve (probed)", argv, workdir / "modelreg.log", env=env, cwd=checkout
    )

    def url_of() -> str | None:
        found = SERVING.search(process.log_path.read_text(errors="replace"))
        return f"http://127.0.0.1:{found.group(1)}" if found else None

    return process, wait_ready(process, url_of, "/health/ready", 120), out


def probe_dump(process: Process, out: Path) -> dict[str, list[float]]:
    out.unlink(missing_ok=True)
    os.kill(process.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    data: dict[str, list[float]] = json.loads(out.read_text())
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--database-url")
    parser.add_argument("--no-py-spy", action="store_true")
    parser.add_argument("--raw-out", help="keep py-spy's raw samples in this file")
    parser.add_argument("--checkout", help="serve this checkout of modelreg instead of this one")
    args = parser.parse_args()
    wrk = ensure_wrk()
    py_spy = None if args.no_py_spy else shutil.which("py-spy")
    token = "bench-" + os.urandom(12).hex()
    with postgres(args.database_url) as pg_url, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        asyncio.run(recreate_database(pg_url))
        checkout = Path(args.checkout).resolve() if args.checkout else REPO
        server, url, out = start_probed(pg_url, workdir, token, checkout)
        try:
            marker = seed(url, token, 50)
            script = workdir / "create_version.lua"
            script.write_text(
                CREATE_VERSION_LUA.replace("EXTERNAL", '"external":true,' if marker else "")
            )
            probe_dump(server, out)  # forget the seeding
            spy = None
            if py_spy:
                argv = [py_spy, "record", "-p", str(server.proc.pid), "-r", "250"]
                argv += ["--nonblocking", "-d", str(round(args.seconds)), "-f", "raw"]
                spy = subprocess.Popen(
                    [*argv, "-o", str(workdir / "spy.txt")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            fig = run_wrk(
                wrk,
                f"{url}/api/v1/models/{MODEL}/versions",
                workload="register version",
                connections=1,
                seconds=args.seconds,
                token=token,
                script=script,
            )
            phases = probe_dump(server, out)
            if spy is not None:
                spy.wait(timeout=60)
        finally:
            server.stop()
            asyncio.run(recreate_database(pg_url, drop_only=True))
        requests = len(phases.get("request (ASGI app, all of it)", [])) or 1
        print(
            f"register version, 1 connection, {args.seconds:g} s: {fig.requests_per_s:,.0f} req/s,"
            f" wrk p50 {fig.p50_ms:.2f} ms, p99 {fig.p99_ms:.2f} ms, {fig.non_2xx} non-2xx"
        )
        print(
            f"\n{'phase (wall clock, in the server)':58} {'calls':>6} {'ms/req':>7} {'p50 ms':>7}"
        )
        for label, times in phases.items():
            per_request = sum(times) / requests * 1000
            p50 = statistics.median(times) * 1000
            print(f"{label:58} {len(times):6} {per_request:7.2f} {p50:7.2f}")
        spy_file = workdir / "spy.txt"
        if spy_file.exists():
            if args.raw_out:
                shutil.copyfile(spy_file, args.raw_out)
            counts = categorise(spy_file.read_text())
            total = sum(counts.values())
            possible = 250 * args.seconds
            print(
                f"\npy-spy: {total} busy samples of ~{possible:.0f} (server main thread"
                f" busy {total / possible:.0%} of the time); per request"
                f" {total / 250 / requests * 1000:.2f} ms of server CPU"
            )
            for label, n in counts.most_common():
                print(f"  {label:52} {n / total:6.1%} {n / 250 / requests * 1000:6.2f} ms/req")


if __name__ == "__main__":
    main()
