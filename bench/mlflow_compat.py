"""The same MLflow calls against modelreg's MLflow compatibility layer and against
``mlflow server`` 3.17.2, in one run, with a compiled load generator and with MLflow's own
Python client (issue 14).

    python -m bench.mlflow_compat [--seconds 5] [--connections 16] [--versions 500]
                                  [--only "transition stage" "log metric" ...]
                                  [--pg-url URL | --private-postgres] [--json]

What it starts, as ``bench/api_vs_mlflow.py`` does (its helpers, not copies): ``modelreg
serve`` on the database ``modelreg_bench``, ``mlflow server --workers 1`` 3.17.2 from
``.bench-venvs/mlflow`` on ``mlflow_bench`` (both dropped and recreated), and the ceiling,
a Litestar hello-world served like modelreg. The load generator is ``wrk`` (``apt-get
install -y wrk`` when missing: ``bench.api_wrk.ensure_wrk`` installs it or says so).

Seeding: on each system one model ``churn`` with ``--versions`` versions and the alias
``champion`` on version 1, whose files are a small saved pyfunc model (MLmodel, code,
environment files, an artifact in a sub-directory). modelreg gets them through its own
API (upload + register: MLflow cannot write files to modelreg); MLflow through its
client (artifacts logged to a run through its proxy, version 1 created from them).

Each operation runs for ``--seconds`` at ``--connections`` concurrent callers, first with
wrk (the same request on both: path, query, body, headers), then with 16 threads of
``MlflowClient`` (``--connections`` threads): reads (get model, get version, get by alias,
get download URI, search versions (pages of 100 and 500), list the version's files,
download MLmodel) and writes (set a version tag, move an alias, transition a version's
stage, create a version, log a metric; a wrk Lua script gives every write its own value,
so no request repeats another, and makes every transition a real move: None <-> Staging,
each version in turn). MLflow logs metrics to a run, not to a model version, so "log a
metric" is ``runs/log-metric`` there and modelreg's own ``POST .../versions/1/metrics``
(one point) here, and modelreg's own Python client in the client view. The tables print ops/s and p99 for both
systems side by side, the ratio, and whether the issue's target holds: >= 10x MLflow's
throughput and a lower p99. An operation modelreg does not answer yet (its route is
missing on this build) is reported as such, not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from bench.api_vs_mlflow import (
    MLFLOW_VENV,
    MLFLOW_VERSION,
    Servers,
    ensure_mlflow,
    load_average,
    log,
    recreate_databases,
    servers,
)
from bench.api_wrk import Figure, ensure_wrk, run_wrk
from bench.common import percentile, postgres
from events.mlflow_artifacts import download_uri
from service.client import NO_RETRIES, Client
from tests.support.mlflow_models import register_directory, save_model

MODEL = "churn"
ALIAS = "champion"
MOVED_ALIAS = "candidate"
TARGET_SPEEDUP = 10.0
WRK_TIMEOUT = 30.0
API = "/api/2.0/mlflow"

# A write whose body differs on every request: BODY's first %d is 1 or 2 in turn, its
# second (if any) the request counter (Lua's string.format ignores arguments left over).
WRITE_LUA = """
local counter = 0
function init(args)
  wrk.headers["Content-Type"] = "application/json"
end
request = function()
  counter = counter + 1
  return wrk.format("POST", nil, nil, string.format(BODY, 1 + counter % 2, counter))
end
"""


# A stage transition that is a real move every time: each wrk thread owns SPAN versions
# from FIRST on and takes them in turn, to Staging on even rounds and back to None on odd
# ones (BODY's %d is the version, its %s the stage). The previous move of a version was
# sent SPAN requests earlier on that thread, more than it has connections in flight.
TRANSITION_LUA = """
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
local counter = 0
function init(args)
  wrk.headers["Content-Type"] = "application/json"
end
request = function()
  local slot = counter % SPAN
  local round = math.floor(counter / SPAN)
  counter = counter + 1
  local stage = "None"
  if round % 2 == 0 then stage = "Staging" end
  return wrk.format("POST", nil, nil, string.format(BODY, FIRST + id * SPAN + slot, stage))
end
"""
TRANSITION_FIRST = 3  # versions 1 and 2 carry the aliases and the tags
# More than the connections in flight (16 by default), on wrk's one thread (run_wrk).
TRANSITION_SPAN = 48


@dataclass(frozen=True)
class Operation:
    name: str
    path: str  # with its query; the same on both systems but for the files' root
    body: str | None = None  # a Lua format string (writes), for ``lua``
    lua: str = WRITE_LUA


@dataclass
class Side:
    """One system's figures for one operation (None: not measured)."""

    wrk: Figure | None = None
    client_rate: float | None = None
    client_p99_ms: float | None = None
    client_errors: int = 0
    note: str = ""


@dataclass
class Row:
    operation: str
    modelreg: Side
    mlflow: Side


def operations(files_root: str, run_id: str | None = None) -> list[Operation]:
    """The operations on one system: modelreg's when ``run_id`` is None, else MLflow's
    (whose metrics go to a run: MLflow has no metrics on model versions)."""
    name = f"name={MODEL}"
    search = urlencode({"filter": f"name='{MODEL}'", "max_results": 100})
    search_500 = urlencode({"filter": f"name='{MODEL}'", "max_results": 500})
    if run_id is None:
        log_metric = Operation(
            "log metric",
            f"/api/v1/models/{MODEL}/versions/1/metrics",
            '{"metrics":[{"key":"bench","value":%d,"step":%d}]}',
        )
    else:
        log_metric = Operation(
            "log metric",
            f"{API}/runs/log-metric",
            f'{{"run_id":"{run_id}","key":"bench","value":%d,"timestamp":1,"step":%d}}',
        )
    return [
        Operation("get registered model", f"{API}/registered-models/get?{name}"),
        Operation("get version", f"{API}/model-versions/get?{name}&version=1"),
        Operation("get version by alias", f"{API}/registered-models/alias?{name}&alias={ALIAS}"),
        Operation("get download uri", f"{API}/model-versions/get-download-uri?{name}&version=1"),
        Operation("search versions (100)", f"{API}/model-versions/search?{search}"),
        Operation("search versions (500)", f"{API}/model-versions/search?{search_500}"),
        Operation(
            "list version files", f"/api/2.0/mlflow-artifacts/artifacts?path={quote(files_root)}"
        ),
        Operation("download MLmodel", f"/api/2.0/mlflow-artifacts/artifacts/{files_root}/MLmodel"),
        Operation(
            "set version tag",
            f"{API}/model-versions/set-tag",
            f'{{"name":"{MODEL}","version":"1","key":"bench","value":"v%d-%d"}}',
        ),
        Operation(
            "move alias",
            f"{API}/registered-models/alias",
            # Between versions 1 and 2 in turn, so every call is a real move.
            f'{{"name":"{MODEL}","alias":"{MOVED_ALIAS}","version":"%d"}}',
        ),
        Operation(
            "transition stage",
            f"{API}/model-versions/transition-stage",
            f'{{"name":"{MODEL}","version":"%d","stage":"%s","archive_existing_versions":false}}',
            TRANSITION_LUA.replace("FIRST", str(TRANSITION_FIRST)).replace(
                "SPAN", str(TRANSITION_SPAN)
            ),
        ),
        Operation(
            "create version",
            f"{API}/model-versions/create",
            f'{{"name":"{MODEL}","source":"s3://bench/churn/%d-%d"}}',
        ),
        log_metric,
    ]


# ---------------------------------------------------------------- seeding


def seed_modelreg(url: str, token: str, model_dir: Path, versions: int) -> None:
    """Through modelreg's own API: MLflow has no way to give modelreg files."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        http.post("/api/v1/models", json={"name": MODEL}).raise_for_status()
        register_directory(url, token, MODEL, model_dir)
        for i in range(2, versions + 1):
            entry = {
                "path": "model.pkl",
                "external": True,
                "uri": f"s3://bench/churn/{i}/model.pkl",
                "sha256": f"{i:064x}",
                "size": 1,
            }
            created = http.post(f"/api/v1/models/{MODEL}/versions", json={"artifacts": [entry]})
            created.raise_for_status()
        for alias, version in ((ALIAS, 1), (MOVED_ALIAS, 1)):
            moved = http.put(f"/api/v1/models/{MODEL}/aliases/{alias}", json={"version": version})
            moved.raise_for_status()
        # Reads wait for the views; one read makes sure the seed is visible before timing.
        http.get(f"/api/v1/models/{MODEL}/versions/by-alias/{ALIAS}").raise_for_status()


def seed_mlflow(url: str, model_dir: Path, versions: int) -> tuple[str, str]:
    """Through MLflow's client: the files as a run's artifacts (MLflow accepts a proxied
    source only inside the run that holds it); answers where version 1's files are, and
    the run (where MLflow logs metrics)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    run = client.create_run("0")
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    files = f"{run.info.artifact_uri}/model"
    client.create_registered_model(MODEL)
    client.create_model_version(MODEL, files, run_id=run.info.run_id)
    for i in range(2, versions + 1):
        client.create_model_version(MODEL, f"s3://bench/churn/{i}/model")
    client.set_registered_model_alias(MODEL, ALIAS, "1")
    client.set_registered_model_alias(MODEL, MOVED_ALIAS, "1")
    return files, run.info.run_id


# ---------------------------------------------------------------- the Python client


def client_call(
    system_url: str, files_uri: str, operation: str, workdir: Path, run_id: str | None
) -> Callable[[int], None]:
    """The MlflowClient call behind ``operation``; its argument is the call's counter.

    ``run_id``: MLflow's run, where it logs a metric; None on modelreg, where a metric
    belongs to a model version and is logged with modelreg's own client (MLflow's has no
    call for that)."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    client = MlflowClient(tracking_uri=system_url, registry_uri=system_url)
    own = threading.local()

    def log_metric(n: int) -> object:
        if run_id is not None:
            return client.log_metric(run_id, "bench", float(n), timestamp=1, step=n)
        if not hasattr(own, "client"):  # one per thread: its metrics buffer is its own
            own.client = Client(
                system_url, token=os.environ["MLFLOW_TRACKING_TOKEN"], retry=NO_RETRIES
            )
        own.client.log_metric(MODEL, 1, "bench", float(n), step=n)
        return own.client.flush()

    def transition(n: int) -> object:
        slot, round_ = n % TRANSITION_SPAN, n // TRANSITION_SPAN
        stage = "Staging" if round_ % 2 == 0 else "None"
        return client.transition_model_version_stage(
            MODEL, str(TRANSITION_FIRST + slot), stage, archive_existing_versions=False
        )

    repo: Any = MlflowArtifactsRepository(files_uri, tracking_uri=system_url)  # untyped methods
    scratch = Path(tempfile.mkdtemp(dir=workdir))
    calls: dict[str, Callable[[int], object]] = {
        "get registered model": lambda n: client.get_registered_model(MODEL),
        "get version": lambda n: client.get_model_version(MODEL, "1"),
        "get version by alias": lambda n: client.get_model_version_by_alias(MODEL, ALIAS),
        "get download uri": lambda n: client.get_model_version_download_uri(MODEL, "1"),
        "search versions (100)": lambda n: client.search_model_versions(
            f"name='{MODEL}'", max_results=100
        ),
        "search versions (500)": lambda n: client.search_model_versions(
            f"name='{MODEL}'", max_results=500
        ),
        "list version files": lambda n: repo.list_artifacts(),
        "download MLmodel": lambda n: repo.download_artifacts(
            "MLmodel", str(scratch / f"{threading.get_ident()}-{n}")
        ),
        "set version tag": lambda n: client.set_model_version_tag(MODEL, "1", "bench", f"c{n}"),
        "move alias": lambda n: client.set_registered_model_alias(
            MODEL, MOVED_ALIAS, "1" if n % 2 else "2"
        ),
        "transition stage": transition,
        "create version": lambda n: client.create_model_version(
            MODEL, f"s3://bench/churn/client-{n}"
        ),
        "log metric": log_metric,
    }

    def call(n: int) -> None:
        if operation == "download MLmodel":
            (scratch / f"{threading.get_ident()}-{n}").mkdir()
        calls[operation](n)

    return call


def run_client(
    call: Callable[[int], None], seconds: float, threads: int
) -> tuple[float, float, int]:
    """ops/s, p99 ms and errors of ``call`` in ``threads`` loops for ``seconds``."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    lock = threading.Lock()

    def loop() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            with lock:
                n = next(counter)
            t0 = time.perf_counter()
            try:
                call(n)
            except Exception:
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return len(latencies) / (time.perf_counter() - started), percentile(latencies, 0.99), errors


# ---------------------------------------------------------------- one run


def answered(url: str, token: str, operation: Operation) -> str:
    """ "" when ``url`` serves the operation; else why not (a route missing on this build)."""
    method = "POST" if operation.body else "GET"
    response = httpx.request(
        method, url + operation.path, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    if response.status_code == 404 and "error_code" not in response.text:
        return "route missing on this build"
    return ""


def measure(
    args: argparse.Namespace, urls: Servers, token: str, workdir: Path
) -> tuple[Figure, list[Row]]:
    wrk = ensure_wrk()
    model_dir = save_model(workdir / "model")
    log(f"seeding {args.versions} versions on each system ...")
    seed_modelreg(urls.modelreg, token, model_dir, args.versions)
    mlflow_files, run_id = seed_mlflow(urls.mlflow, model_dir, args.versions)
    c, s = args.connections, args.seconds
    ceiling = run_wrk(
        wrk,
        urls.hello + "/",
        workload="hello-world (ceiling)",
        connections=c,
        seconds=s,
        token=None,
    )
    log(f"ceiling: {ceiling.requests_per_s:,.0f} req/s")
    modelreg_root = download_uri(MODEL, 1).removeprefix("mlflow-artifacts:/")
    mlflow_root = mlflow_files.removeprefix("mlflow-artifacts:/")
    rows = []
    pairs = zip(operations(modelreg_root), operations(mlflow_root, run_id), strict=True)
    for mine, theirs in pairs:
        if args.only and mine.name not in args.only:
            continue
        row = Row(mine.name, Side(), Side())
        for side, url, op, files, run in (
            (row.modelreg, urls.modelreg, mine, download_uri(MODEL, 1), None),
            (row.mlflow, urls.mlflow, theirs, mlflow_files, run_id),
        ):
            side.note = answered(url, token, op)
            if side.note:
                log(f"{op.name} on {url}: {side.note}")
                continue
            script = None
            if op.body:
                script = workdir / f"{op.name.replace(' ', '_')}.lua"
                script.write_text(f"BODY = '{op.body}'\n" + op.lua)
            log(f"wrk: {op.name} on {url} ...")
            side.wrk = run_wrk(
                wrk,
                url + op.path,
                workload=op.name,
                connections=c,
                seconds=s,
                token=token,
                script=script,
                timeout=WRK_TIMEOUT,
            )
            log(f"client: {op.name} on {url} ...")
            call = client_call(url, files, op.name, workdir, run)
            side.client_rate, side.client_p99_ms, side.client_errors = run_client(call, s, c)
        rows.append(row)
    return ceiling, rows


# ---------------------------------------------------------------- output


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _p99(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def verdict(row: Row) -> str:
    mine, theirs = row.modelreg.wrk, row.mlflow.wrk
    if mine is None or theirs is None:
        return row.modelreg.note or row.mlflow.note or "-"
    ratio = mine.requests_per_s / theirs.requests_per_s if theirs.requests_per_s else float("inf")
    met = ratio >= TARGET_SPEEDUP and mine.p99_ms < theirs.p99_ms
    errors = f"; non-2xx {mine.non_2xx}/{theirs.non_2xx}" if mine.non_2xx or theirs.non_2xx else ""
    return f"{ratio:,.1f}x {'met' if met else 'MISSED'}{errors}"


def print_tables(ceiling: Figure, rows: list[Row], connections: int) -> None:
    print(
        f"\nwrk, {connections} connections (hello-world ceiling: "
        f"{ceiling.requests_per_s:,.0f} req/s, p99 {ceiling.p99_ms:.1f} ms)"
    )
    head = f"| {'operation':<22} | {'modelreg ops/s':>14} | {'p99 ms':>8} | {'MLflow ops/s':>12} | {'p99 ms':>8} | {'% ceiling':>9} | target (>=10x, lower p99)"
    print(head)
    print("|" + "|".join("-" * (len(p)) for p in head.split("|")[1:-1]) + "|" + "-" * 28)
    for row in rows:
        mine, theirs = row.modelreg.wrk, row.mlflow.wrk
        share = f"{100 * mine.requests_per_s / ceiling.requests_per_s:.0f}%" if mine else "-"
        print(
            f"| {row.operation:<22} | {_rate(mine.requests_per_s if mine else None):>14} | "
            f"{_p99(mine.p99_ms if mine else None):>8} | "
            f"{_rate(theirs.requests_per_s if theirs else None):>12} | "
            f"{_p99(theirs.p99_ms if theirs else None):>8} | {share:>9} | {verdict(row)}"
        )
    print(f"\nMlflowClient, {connections} threads in one Python process")
    head = f"| {'operation':<22} | {'modelreg ops/s':>14} | {'p99 ms':>8} | {'MLflow ops/s':>12} | {'p99 ms':>8} | errors"
    print(head)
    print("|" + "|".join("-" * (len(p)) for p in head.split("|")[1:-1]) + "|" + "-" * 8)
    for row in rows:
        m, t = row.modelreg, row.mlflow
        print(
            f"| {row.operation:<22} | {_rate(m.client_rate):>14} | {_p99(m.client_p99_ms):>8} | "
            f"{_rate(t.client_rate):>12} | {_p99(t.client_p99_ms):>8} | "
            f"{m.client_errors}/{t.client_errors}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    p.add_argument("--connections", type=int, default=16, help="concurrent callers")
    p.add_argument("--versions", type=int, default=500, help="versions of the one model")
    p.add_argument(
        "--pg-url",
        default=os.environ.get("MODELREG_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="Postgres both systems use (databases modelreg_bench and mlflow_bench are recreated)",
    )
    p.add_argument("--private-postgres", action="store_true", help="an embedded Postgres instead")
    p.add_argument("--mlflow-venv", type=Path, default=MLFLOW_VENV)
    p.add_argument("--json", action="store_true", help="one JSON object per operation")
    p.add_argument(
        "--only", nargs="+", metavar="OPERATION", help='operations to measure ("transition stage")'
    )
    args = p.parse_args()
    known = {op.name for op in operations("")}
    if unknown := set(args.only or ()) - known:
        p.error(f"--only: no operation {sorted(unknown)}; there are {sorted(known)}")
    if args.versions < TRANSITION_FIRST + TRANSITION_SPAN:
        p.error(
            f"--versions: at least {TRANSITION_FIRST + TRANSITION_SPAN} (the transitions' versions)"
        )
    # MLflow's client keeps 10 pooled connections per host unless told otherwise.
    os.environ["MLFLOW_HTTP_POOL_MAXSIZE"] = str(max(10, args.connections))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # an error counts; it is not retried
    # Nothing leaves the machine; and its background thread edits os.environ while the
    # client's threads read it (requests' proxy lookup), which fails calls at random.
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    mlflow_exe = ensure_mlflow(args.mlflow_venv)
    token = "bench-" + secrets.token_urlsafe(24)
    # MLflow's client sends it to both: modelreg checks it, MLflow (no auth) ignores it.
    os.environ["MLFLOW_TRACKING_TOKEN"] = token
    load_before = load_average()
    with postgres(None if args.private_postgres else args.pg_url) as pg_url:
        asyncio.run(recreate_databases(pg_url))
        try:
            with (
                tempfile.TemporaryDirectory(prefix="modelreg-mlflow-compat-") as tmp,
                servers(pg_url, Path(tmp), mlflow_exe, token) as urls,
            ):
                ceiling, rows = measure(args, urls, token, Path(tmp))
        finally:
            asyncio.run(recreate_databases(pg_url, drop_only=True))
    context = {
        "mlflow": MLFLOW_VERSION,
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    if args.json:
        print(json.dumps({"ceiling": asdict(ceiling), **context}))
        for row in rows:
            print(json.dumps(asdict(row)))
        return
    print_tables(ceiling, rows, args.connections)
    print(
        f"\nMLflow {MLFLOW_VERSION} (mlflow server --workers 1); {os.cpu_count()} cores; load average"
        f" before {load_before}, after {context['load_average_after']}; wrk, the client, both"
        " servers and Postgres share the machine."
    )


if __name__ == "__main__":
    main()
