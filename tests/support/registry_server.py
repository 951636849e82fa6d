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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.database import APP_ROLE, drop_schema

REPO = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"serving http://127\.0\.0\.1:(\d+) ")
READY_TIMEOUT = 90.0


@dataclass
class RegistryServer:
    url: str
    admin_token: str
    schema: str
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment pointing the client and the CLI at this server."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")}
        return base | {"MODELREG_URL": self.url, "MODELREG_TOKEN": self.admin_token} | extra


def _drop(database_url: str, schema: str) -> None:
    # Its own thread and loop: the caller may be a sync fixture inside pytest-asyncio's session.
    worker = threading.Thread(target=lambda: asyncio.run(drop_schema(database_url, schema)))
    worker.start()
    worker.join(60)


@contextmanager
def registry_server(
    database_url: str, nats_url: str, workdir: Path, **settings: str
) -> Iterator[RegistryServer]:
    """``settings`` are extra ``MODELREG_*`` variables, named without the prefix."""
    schema = f"t_{secrets.token_hex(6)}"
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
        "MODELREG_NATS_STREAM": f"T_{schema.upper()}",
        "MODELREG_NATS_SUBJECT_PREFIX": f"test.{schema}",
        "MODELREG_DATA_DIR": str(data_dir),
        "MODELREG_PORT": "0",
        "MODELREG_BOOTSTRAP_TOKEN": token,
        "MODELREG_WORKER_POLL_INTERVAL": "0.1",
        "MODELREG_READ_WAIT_TIMEOUT": "10",
    }
    env |= {f"MODELREG_{name.upper()}": value for name, value in settings.items()}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = _wait_until_serving(proc, log)
        yield RegistryServer(url=url, admin_token=token, schema=schema, log=log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        _drop(database_url, schema)


def _wait_until_serving(proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"modelreg serve exited {proc.returncode}:\n{log.read_text()}")
        if url is None and (found := SERVING.search(log.read_text())):
            url = f"http://127.0.0.1:{found.group(1)}"
        if url is not None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health/ready", timeout=2.0).status_code == 200:
                    return url
        time.sleep(0.05)
    raise RuntimeError(f"modelreg serve was not ready in {READY_TIMEOUT} s:\n{log.read_text()}")
