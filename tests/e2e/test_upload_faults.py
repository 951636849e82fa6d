"""Faults around resumable uploads on a real ``modelreg serve`` (uvicorn, file store under
its data dir): a connection dropped at 80% resumes from what the server committed, and a
server killed with SIGKILL mid-upload leaves no blob and resumes after a restart."""

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
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.waiting import eventually_sync

M = "/api/v1/models"
PART = 256 * 1024  # MODELREG_UPLOADS_PART_SIZE: the file store fsyncs its offset this often
SIZE = 8 * 1024 * 1024
WAIT = 60.0


@pytest.fixture
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir, uploads_part_size=str(PART)) as running:
        yield running


def client(server: RegistryServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=30
    )


def open_session(server: RegistryServer, model: str, body: bytes) -> str:
    with client(server) as http:
        assert http.post(M, json={"name": model}).status_code == 201
        opened = http.post(
            f"{M}/{model}/uploads",
            json={"digest": f"sha256:{hashlib.sha256(body).hexdigest()}", "size": len(body)},
        )
    assert opened.status_code == 201, opened.text
    location: str = opened.json()["location"]
    return location


def offset_of(server: RegistryServer, location: str) -> int:
    with client(server) as http:
        answer = http.get(location)
    assert answer.status_code == 200, answer.text
    offset: int = answer.json()["offset"]
    return offset


def start_sending(
    server: RegistryServer, location: str, body: bytes, share: float
) -> socket.socket:
    """A PATCH of the whole body whose connection has sent only ``share`` of it so far."""
    url = urlsplit(server.url)
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {server.admin_token}\r\nContent-Range: 0-{len(body) - 1}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    connection = socket.create_connection((url.hostname, url.port))
    connection.sendall(head.encode() + body[: int(len(body) * share)])
    return connection


def resume(server: RegistryServer, location: str, body: bytes) -> int:
    """Send the rest from the offset the server reports, as a client would; retried while
    the server is still closing the dropped request (409 busy). The offset resumed at: the
    server accepted the rest there, so it held every byte before it (a server that had
    started over would refuse a chunk past its offset with 416)."""
    done: list[int] = []

    def attempt() -> bool:
        offset = offset_of(server, location)
        rest = body[offset:]
        with client(server) as http:
            answer = http.patch(
                location, content=rest, headers={"Content-Range": f"{offset}-{len(body) - 1}"}
            )
        if answer.status_code == 202:
            assert answer.json()["offset"] == len(body)
            done.append(offset)
            return True
        assert answer.status_code in (409, 416), answer.text
        return False

    eventually_sync(attempt, what="the upload resumed", timeout=WAIT)
    return done[0]


def test_a_connection_dropped_at_80_percent_resumes_from_what_the_server_kept(
    server: RegistryServer,
) -> None:
    # given a session, and a PATCH of the whole blob that has sent 80% when it is cut
    body = os.urandom(SIZE)
    location = open_session(server, "drop", body)
    with start_sending(server, location, body, 0.8):
        eventually_sync(
            lambda: offset_of(server, location) >= SIZE // 2,
            what="the server committed half",
            timeout=WAIT,
        )

    # when the client resumes from the offset the server reports
    resumed_at = resume(server, location, body)

    # then it sent only the rest: from at least the half the server had committed
    assert SIZE // 2 <= resumed_at <= SIZE * 8 // 10
    # and the committed blob is exactly the original bytes
    with client(server) as http:
        committed = http.put(location)
    assert committed.status_code == 201, committed.text
    sha256 = hashlib.sha256(body).hexdigest()
    assert (server.log.parent / blob_key(sha256)).read_bytes() == body


def test_a_server_killed_mid_upload_leaves_no_blob_and_the_upload_resumes_after_restart(
    server: RegistryServer,
) -> None:
    # given a session whose upload is under way (over half committed, 80% sent)
    body = os.urandom(SIZE)
    sha256 = hashlib.sha256(body).hexdigest()
    location = open_session(server, "killed", body)
    connection = start_sending(server, location, body, 0.8)
    eventually_sync(
        lambda: offset_of(server, location) >= SIZE // 2,
        what="the server committed half",
        timeout=WAIT,
    )

    # when the server is killed with SIGKILL, then started again on the same data
    server.kill()
    connection.close()
    server.start_again()

    # then no blob, half or whole, exists or can be named by a version
    blob = server.log.parent / blob_key(sha256)
    assert not blob.exists()
    entry = {"path": "model.bin", "sha256": sha256, "size": SIZE}
    with client(server) as http:
        refused = http.post(f"{M}/killed/versions", json={"artifacts": [entry]})
    assert (refused.status_code, refused.json()["rule"]) == (422, "blob_not_stored")
    # and the session resumes from what was committed before the kill, not from zero
    resumed_at = resume(server, location, body)
    assert SIZE // 2 <= resumed_at <= SIZE * 8 // 10
    with client(server) as http:
        committed = http.put(location)
        assert committed.status_code == 201, committed.text
        registered = http.post(f"{M}/killed/versions", json={"artifacts": [entry]})
        assert registered.status_code == 201, registered.text
        assert http.get(f"{M}/killed/versions/1/files/model.bin").content == body
    assert blob.read_bytes() == body
