"""A real S3-compatible server for the tests: moto's server as a child process on
127.0.0.1 at a free port. Requests go over HTTP like to any S3 endpoint, and its memory is
its own (a test that measures the registry's memory does not count the server's)."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

REGION = "us-east-1"
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        """The AWS_* variables a client reads to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "modelreg-test",
            "AWS_SECRET_ACCESS_KEY": "modelreg-test-secret",
            "AWS_REGION": REGION,
        }

    def new_bucket(self) -> str:
        bucket = f"modelreg-{secrets.token_hex(6)}"
        # moto does not check signatures: a plain PUT creates the bucket.
        httpx.put(f"{self.endpoint}/{bucket}").raise_for_status()
        return bucket


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def s3_server(log: Path) -> Iterator[S3Server]:
    port = _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, f"moto exited {proc.returncode}: {log.read_text()}"
            with suppress(httpx.TransportError):
                httpx.get(f"{endpoint}/moto-api/", timeout=2.0)
                break
            assert time.monotonic() < deadline, f"moto did not answer: {log.read_text()}"
            time.sleep(0.05)
        yield S3Server(endpoint=endpoint)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
