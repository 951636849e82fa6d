"""A real S3-compatible server for the tests: moto's server in a thread of this process,
listening on 127.0.0.1 at a free port. Requests go over HTTP like to any S3 endpoint."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


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


@contextmanager
def s3_server() -> Iterator[S3Server]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(endpoint=f"http://{host}:{port}")
    finally:
        server.stop()
