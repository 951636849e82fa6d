"""The Python client's resumable upload against a real ``modelreg serve``, through a proxy
that cuts a chunk's connection at 80%: the client resumes from the server's offset and
sends only the rest, never the file from zero."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.client._transport import AsyncTransport, RetryPolicy
from service.client.resumable import upload_resumable
from tests.support.flaky_proxy import FlakyProxy
from tests.support.registry_server import RegistryServer, registry_server

M = "/api/v1/models"
CHUNK = 4 * 1024 * 1024
SIZE = CHUNK + CHUNK // 2  # two chunks: 4 MiB and 2 MiB


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def upload_through(
    proxy: FlakyProxy, server: RegistryServer, model: str, file: Path, progress: list[int]
) -> bool:
    sha256, size = hashlib.sha256(file.read_bytes()).hexdigest(), file.stat().st_size

    async def run() -> bool:
        transport = AsyncTransport(
            proxy.url, server.admin_token, timeout=30, retry=RetryPolicy(backoff=0.05)
        )
        try:
            return await upload_resumable(
                transport,
                model,
                file,
                sha256,
                size,
                advance=progress.append,
                chunk_bytes=CHUNK,
            )
        finally:
            await transport.aclose()

    return asyncio.run(run())


def start_of(content_range: str | None) -> int:
    assert content_range is not None
    return int(content_range.split("-")[0])


def test_a_chunk_cut_at_80_percent_resumes_from_the_servers_offset(
    server: RegistryServer, tmp_path: Path
) -> None:
    # given a 6 MiB file, and a proxy that cuts the first chunk's connection at 80%
    body = os.urandom(SIZE)
    file = tmp_path / "model.bin"
    file.write_bytes(body)
    sha256 = hashlib.sha256(body).hexdigest()
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin_token}"}
    ) as http:
        assert http.post(M, json={"name": "resumed"}).status_code == 201
    progress: list[int] = []

    with FlakyProxy(server.url) as proxy:
        proxy.cut_requests(1, after=0.8, match=b"PATCH ")

        # when the client uploads the file resumably
        created = upload_through(proxy, server, "resumed", file, progress)

        chunks = proxy.seen("PATCH ")

    # then the blob is new and whole
    assert created is True
    # the first chunk was cut (no answer); the server took the rest from where it said it
    # stood: past zero (the bytes before the cut were kept), no further than forwarded
    assert (start_of(chunks[0].header("Content-Range")), chunks[0].status) == (0, None)
    accepted = [chunk for chunk in chunks if chunk.status == 202]
    resumed_at = start_of(accepted[0].header("Content-Range"))
    assert 0 < resumed_at <= CHUNK * 8 // 10
    # and only the rest of the file was taken after the cut, each byte once
    assert sum(len(chunk.body) for chunk in accepted) == SIZE - resumed_at
    assert sum(progress) == SIZE
    # and a version may name the blob, whose bytes are the file's
    entry = {"path": "model.bin", "sha256": sha256, "size": SIZE}
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin_token}"}
    ) as http:
        assert http.post(f"{M}/resumed/versions", json={"artifacts": [entry]}).status_code == 201
        assert http.get(f"{M}/resumed/versions/1/files/model.bin").content == body
