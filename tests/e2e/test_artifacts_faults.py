"""Faults around model files on a real ``modelreg serve`` (uvicorn, file store under its
data dir): a client that drops mid-upload, a blob corrupted on disk after it was stored."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from service.artifacts.blobstore import blob_key
from service.artifacts.local import INCOMING
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.waiting import eventually_sync

M = "/api/v1/models"
WAIT = 30.0


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def client(server: RegistryServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=30
    )


def read_into(received: bytearray, response: httpx.Response) -> None:
    for chunk in response.iter_bytes():
        received += chunk


def test_a_client_cut_mid_upload_leaves_no_blob_and_no_temporary_file(
    server: RegistryServer,
) -> None:
    # given a model, and 8 MiB whose upload the client will abandon at 80%
    data_dir = server.log.parent
    incoming = data_dir / INCOMING
    body = os.urandom(8 * 1024 * 1024)
    sha256 = hashlib.sha256(body).hexdigest()
    with client(server) as http:
        assert http.post(M, json={"name": "cut"}).status_code == 201
    url = urlsplit(server.url)
    head = (
        f"PUT {M}/cut/blobs/sha256:{sha256} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {server.admin_token}\r\nContent-Length: {len(body)}\r\n\r\n"
    )

    # when the connection drops while the body streams in
    with socket.create_connection((url.hostname, url.port)) as connection:
        connection.sendall(head.encode() + body[: len(body) * 8 // 10])
        eventually_sync(
            lambda: incoming.is_dir() and any(incoming.iterdir()),
            what="the upload started",
            timeout=WAIT,
        )

    # then the temporary file goes, and no blob appears
    eventually_sync(
        lambda: not any(incoming.iterdir()), what="the temporary file was removed", timeout=WAIT
    )
    assert not (data_dir / blob_key(sha256)).exists()
    # and nothing was recorded: the whole upload, retried, is new to the model
    with client(server) as http:
        retried = http.put(f"{M}/cut/blobs/sha256:{sha256}", content=body)
    assert retried.status_code == 201, retried.text
    assert (data_dir / blob_key(sha256)).read_bytes() == body


def test_a_blob_corrupted_on_disk_cuts_the_download_short_instead_of_serving_it(
    server: RegistryServer,
) -> None:
    # given a version whose file is stored, then one byte of it flipped on disk
    body = os.urandom(3 * 1024 * 1024 + 5)
    sha256 = hashlib.sha256(body).hexdigest()
    with client(server) as http:
        assert http.post(M, json={"name": "rot"}).status_code == 201
        assert http.put(f"{M}/rot/blobs/sha256:{sha256}", content=body).status_code == 201
        entry = {"path": "model.bin", "sha256": sha256, "size": len(body)}
        assert http.post(f"{M}/rot/versions", json={"artifacts": [entry]}).status_code == 201
        intact = http.get(f"{M}/rot/versions/1/files/model.bin")
        assert intact.content == body
    blob = server.log.parent / blob_key(sha256)
    blob.chmod(0o644)
    with blob.open("r+b") as handle:
        handle.seek(len(body) // 2)
        handle.write(bytes([body[len(body) // 2] ^ 0xFF]))

    # when it is downloaded, whole or a range of it
    for headers in ({}, {"Range": "bytes=10-20"}):
        received = bytearray()
        with (
            client(server) as http,
            http.stream("GET", f"{M}/rot/versions/1/files/model.bin", headers=headers) as response,
        ):
            declared = int(response.headers["Content-Length"])
            # then the body ends before its declared length: an error, never bad bytes
            with pytest.raises(httpx.RemoteProtocolError):
                read_into(received, response)
        assert len(received) < declared
