"""``modelreg serve`` as a user runs it: a real process with embedded Postgres and NATS."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.runtime.serve import Worker, supervise
from tests.integration.test_embedded import gone
from tests.support.serve_process import Serve, free_port, serve_on_fresh_data_dir


@pytest.fixture
def serve() -> Iterator[Serve]:
    with serve_on_fresh_data_dir() as server:
        yield server


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("modelreg: ")
    return lines[0]


def test_serve_on_a_fresh_data_dir_gets_ready_and_stops_cleanly_on_sigint(serve: Serve) -> None:
    started = time.monotonic()
    serve.start().wait_for("/health/ready", 200)
    print(f"ready {time.monotonic() - started:.2f} s after launch, fresh data dir")
    live = httpx.get(f"{serve.base_url}/health/live")
    assert live.json() == {"status": "ok"}
    # HEAD through the real server: the GET's head, no body, the refusal of a GET without
    # a token (uvicorn, not the tests' in-process transport, frames these answers)
    headed = httpx.head(f"{serve.base_url}/health/live")
    assert (headed.status_code, headed.content) == (200, b"")
    assert headed.headers["content-length"] == live.headers["content-length"]
    refused = httpx.head(f"{serve.base_url}/api/v1/me")
    assert (refused.status_code, refused.content) == (401, b"")
    postgres, nats = serve.server_pids()

    assert serve.interrupt() == 0
    assert gone(postgres)
    assert gone(nats)
    assert not (serve.data_dir / "postgres" / "postmaster.pid").exists()

    started = time.monotonic()
    serve.start().wait_for("/health/ready", 200)
    print(f"ready {time.monotonic() - started:.2f} s after launch, existing data dir")
    assert serve.interrupt() == 0


def test_a_second_serve_on_the_same_data_dir_exits_2_with_one_line(
    serve: Serve, tmp_path: Path
) -> None:
    serve.start().wait_for("/health/ready", 200)
    second = Serve(serve.data_dir, tmp_path / "second.log").run()
    assert second.returncode == 2
    assert serve.proc is not None
    line = one_line(second.stderr)
    assert (
        f"data dir {serve.data_dir} is in use by another modelreg process (pid {serve.proc.pid})"
        in line
    )
    assert serve.interrupt() == 0


def test_a_malformed_setting_exits_2_naming_the_variable(serve: Serve) -> None:
    serve.env["MODELREG_PORT"] = "abc"
    result = serve.run()
    assert result.returncode == 2
    assert one_line(result.stderr).startswith("modelreg: MODELREG_PORT: ")


def test_a_busy_http_port_exits_2_with_one_line(serve: Serve) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        serve.env["MODELREG_PORT"] = str(port)
        result = serve.run()
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"modelreg: HTTP port {port} on 127.0.0.1 is already in use; stop what uses it or set MODELREG_PORT"
    )
    assert not (serve.data_dir / "postgres").exists()  # failed before starting anything


def test_serve_without_nats_still_serves_and_reports_not_ready(serve: Serve) -> None:
    serve.env["MODELREG_NATS_URL"] = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    serve.start().wait_for("/health/live", 200)
    response = serve.wait_for("/health/ready", 503)
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 503
    assert body["type"] == "urn:modelreg:not_ready"
    assert body["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "nats": "disconnected",
        "nats_required": True,
        "publisher": "ok",
    }
    assert "NATS disconnected" in body["detail"]
    assert serve.interrupt() == 0


def test_an_api_replica_without_nats_is_ready_because_it_still_accepts_writes(serve: Serve) -> None:
    serve.env["MODELREG_NATS_URL"] = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    serve.env["MODELREG_ROLE"] = "api"
    serve.start().wait_for("/health/live", 200)
    body = serve.wait_for("/health/ready", 200).json()
    assert body["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "nats": "disconnected",
        "nats_required": False,
        "publisher": "ok",
    }
    assert serve.interrupt() == 0


async def test_a_crashing_worker_is_restarted_with_growing_delays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    runs: list[float] = []
    five_runs = asyncio.Event()

    async def crash() -> None:
        runs.append(loop.time())
        if len(runs) == 5:
            five_runs.set()
        raise RuntimeError("boom")

    task = asyncio.create_task(supervise(Worker("boom", crash), first_delay=0.01, max_delay=0.04))
    await asyncio.wait_for(five_runs.wait(), timeout=60)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
    gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
    for gap, delay in zip(gaps[:4], [0.01, 0.02, 0.04, 0.04], strict=True):
        assert gap >= delay - 0.002  # doubles, then stays at the ceiling
    assert "worker boom crashed; restarting in 0.0 s" in caplog.text
    assert "RuntimeError: boom" in caplog.text
