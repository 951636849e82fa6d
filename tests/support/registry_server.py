"""A real ``modelreg serve`` process on the test session's Postgres and NATS, in a schema
(and a JetStream stream) of its own, for the HTTP client and the CLI to talk to."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.publication.jetstream import delete_stream_if_exists
from tests.support.database import APP_ROLE, drop_schema
from tests.support.nats_servers import connect

REPO = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"serving http://127\.0\.0\.1:(\d+) ")
READY_TIMEOUT = 90.0


@dataclass
class RegistryServer:
    url: str
    admin_token: str
    schema: str
    log: Path
    # Unique per server, down to the dead-letter subjects a consumer derives from the prefix
    # (its root without the last token): nothing collides with what another run on a shared
    # NATS created or left behind.
    stream: str = ""
    subject_prefix: str = ""
    # The running process and how it was started, so a test can kill -9 it and start it
    # again on the same schema and data dir (``kill`` / ``start_again``).
    proc: subprocess.Popen[bytes] | None = None
    serve_env: dict[str, str] | None = None

    def kill(self) -> None:
        """SIGKILL the server's process group: no shutdown code runs."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def start_again(self) -> None:
        """Start a new process on the same schema, stream and data dir (a new port)."""
        assert self.serve_env is not None
        self.proc = _spawn(self.serve_env, self.log)
        self.url = _wait_until_serving(self.proc, self.log, skip=self.log.read_text())

    def crash_and_restart(self) -> None:
        """SIGKILL the process and start a new one on the same schema, data dir and port (a
        client's URL stays valid across the restart); return when it serves again."""
        self.kill()
        assert self.serve_env is not None
        self.serve_env["MODELREG_PORT"] = self.url.rsplit(":", 1)[1]
        self.start_again()

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment pointing the client and the CLI at this server."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")}
        return base | {"MODELREG_URL": self.url, "MODELREG_TOKEN": self.admin_token} | extra


def _drop(database_url: str, schema: str) -> None:
    _in_own_loop(drop_schema(database_url, schema))


def _in_own_loop(work: Coroutine[Any, Any, None]) -> None:
    # Its own thread and loop: the caller may be a sync fixture inside pytest-asyncio's session.
    worker = threading.Thread(target=lambda: asyncio.run(work))
    worker.start()
    worker.join(60)


async def _delete_streams(nats_url: str, streams: list[str]) -> None:
    """A shared, long-lived NATS keeps no stream of this server after the run."""
    nc = await connect(nats_url)
    try:
        for name in streams:
            await delete_stream_if_exists(nc, name)
    finally:
        await nc.close()


@contextmanager
def registry_server(
    database_url: str, nats_url: str, workdir: Path, **settings: str
) -> Iterator[RegistryServer]:
    """``settings`` are extra ``MODELREG_*`` variables, named without the prefix."""
    schema = f"t_{secrets.token_hex(6)}"
    stream, subject_prefix = f"T_{schema.upper()}", f"test.{schema}.events"
    token = "admin-" + secrets.token_urlsafe(24)
    data_dir = workdir / f"serve-{schema}"
    data_dir.mkdir(parents=True)
    log = data_dir / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")} | {
        "MODELREG_DATABASE_URL": database_url,
        "MODELREG_NATS_URL": nats_url,
        "MODELREG_DB_SCHEMA": schema,
        "MODELREG_DB_APP_ROLE": APP_ROLE,
        "MODELREG_DB_POOL_SIZE": "4",
        "MODELREG_NATS_STREAM": stream,
        "MODELREG_NATS_SUBJECT_PREFIX": subject_prefix,
        "MODELREG_DATA_DIR": str(data_dir),
        "MODELREG_PORT": "0",
        "MODELREG_BOOTSTRAP_TOKEN": token,
        "MODELREG_WORKER_POLL_INTERVAL": "0.1",
        "MODELREG_READ_WAIT_TIMEOUT": "10",
    }
    env |= {f"MODELREG_{name.upper()}": value for name, value in settings.items()}
    proc = _spawn(env, log, mode="wb")
    running = RegistryServer("", token, schema, log, stream, subject_prefix, proc, env)
    try:
        running.url = _wait_until_serving(proc, log)
        yield running
    finally:
        proc = running.proc or proc
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        _drop(database_url, schema)
        _in_own_loop(_delete_streams(nats_url, [stream, f"{stream}_DLQ"]))


def _spawn(env: dict[str, str], log: Path, mode: str = "ab") -> subprocess.Popen[bytes]:
    with log.open(mode) as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_until_serving(proc: subprocess.Popen[bytes], log: Path, skip: str = "") -> str:
    """The URL the process serves on, read from its log past ``skip`` (an earlier run's)."""
    deadline = time.monotonic() + READY_TIMEOUT
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"modelreg serve exited {proc.returncode}:\n{log.read_text()}")
        if url is None and (found := SERVING.search(log.read_text()[len(skip) :])):
            url = f"http://127.0.0.1:{found.group(1)}"
        if url is not None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health/ready", timeout=2.0).status_code == 200:
                    return url
        time.sleep(0.05)
    raise RuntimeError(f"modelreg serve was not ready in {READY_TIMEOUT} s:\n{log.read_text()}")
