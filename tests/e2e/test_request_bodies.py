"""Request bodies as a real ``modelreg serve`` receives them off the wire: in many small
pieces, chunked, and several requests back to back on one connection. The server keeps a
body as the parser's pieces and joins them only when the app asks
(service.runtime.request_body), so these check that every byte reaches the app once, in
order, and within its own request."""

from __future__ import annotations

import hashlib
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest

from tests.support.raw_http import connect
from tests.support.registry_server import RegistryServer, registry_server

M = "/api/v1/models"


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        with client(running) as http:
            assert http.post(M, json={"name": "wire"}).status_code == 201
        yield running


def client(server: RegistryServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=30
    )


def head(server: RegistryServer, line: str, *headers: str) -> bytes:
    host = urlsplit(server.url).netloc
    fields = [f"Host: {host}", f"Authorization: Bearer {server.admin_token}", *headers]
    return (line + "\r\n" + "".join(f"{f}\r\n" for f in fields) + "\r\n").encode()


def pieces(data: bytes, rng: random.Random) -> Iterator[bytes]:
    """``data`` cut at random places, from a byte to a few pages long."""
    at = 0
    while at < len(data):
        size = rng.choice((1, 7, 512, 1500, 4096, 9000, 70_000))
        yield data[at : at + size]
        at += size


def answers(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """The next ``count`` answers on ``sock``: status and body (each has a Content-Length)."""
    buffered = b""
    found: list[tuple[int, bytes]] = []
    sock.settimeout(30)
    while len(found) < count:
        while b"\r\n\r\n" not in buffered:
            buffered += sock.recv(65536)
        raw_head, buffered = buffered.split(b"\r\n\r\n", 1)
        lines = raw_head.decode().split("\r\n")
        length = next(
            int(v)
            for k, _, v in (h.partition(": ") for h in lines[1:])
            if k.lower() == "content-length"
        )
        while len(buffered) < length:
            buffered += sock.recv(65536)
        found.append((int(lines[0].split()[1]), buffered[:length]))
        buffered = buffered[length:]
    return found


def test_an_upload_sent_in_many_small_pieces_is_stored_whole_and_in_order(
    server: RegistryServer,
) -> None:
    # given 3 MiB of random bytes and their digest
    rng = random.Random(17)
    body = rng.randbytes(3 * 1024 * 1024 + 11)
    sha256 = hashlib.sha256(body).hexdigest()
    # when they are sent in thousands of pieces of mixed sizes, each flushed on its own
    with connect(server.url) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(
            head(
                server,
                f"PUT {M}/wire/blobs/sha256:{sha256} HTTP/1.1",
                f"Content-Length: {len(body)}",
            )
        )
        for piece in pieces(body, rng):
            sock.sendall(piece)
        ((status, answer),) = answers(sock, 1)
    # then the server hashed exactly those bytes, and stores them as sent
    assert status == 201, answer
    with client(server) as http:
        entry = {"path": "pieces.bin", "sha256": sha256, "size": len(body)}
        created = http.post(f"{M}/wire/versions", json={"artifacts": [entry]})
        assert created.status_code == 201, created.text
        version = created.json()["version"]
        assert http.get(f"{M}/wire/versions/{version}/files/pieces.bin").content == body


def test_a_chunked_upload_is_stored_whole(server: RegistryServer) -> None:
    # given 1 MiB sent with chunked transfer coding, in chunks of uneven sizes
    rng = random.Random(23)
    body = rng.randbytes(1024 * 1024)
    sha256 = hashlib.sha256(body).hexdigest()
    coded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces(body, rng)) + b"0\r\n\r\n"
    # when it is uploaded
    with connect(server.url) as sock:
        sock.sendall(
            head(
                server, f"PUT {M}/wire/blobs/sha256:{sha256} HTTP/1.1", "Transfer-Encoding: chunked"
            )
            + coded
        )
        ((status, answer),) = answers(sock, 1)
    # then its digest matched: every byte arrived once, in order
    assert status == 201, answer


def test_requests_back_to_back_on_one_connection_keep_their_own_bodies(
    server: RegistryServer,
) -> None:
    # given an upload, a model creation and a second upload, written in one go
    blobs = [random.Random(seed).randbytes(200_000 + seed) for seed in (1, 2)]
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    model = msgspec.json.encode({"name": "wire-pipelined", "description": "between two uploads"})
    wire = b"".join(
        [
            head(
                server,
                f"PUT {M}/wire/blobs/sha256:{digests[0]} HTTP/1.1",
                f"Content-Length: {len(blobs[0])}",
            ),
            blobs[0],
            head(
                server,
                f"POST {M} HTTP/1.1",
                "Content-Type: application/json",
                f"Content-Length: {len(model)}",
            ),
            model,
            head(
                server,
                f"PUT {M}/wire/blobs/sha256:{digests[1]} HTTP/1.1",
                f"Content-Length: {len(blobs[1])}",
            ),
            blobs[1],
        ]
    )
    # when they are sent on one connection
    with connect(server.url) as sock:
        sock.sendall(wire)
        found = answers(sock, 3)
    # then each was answered on its own body: both digests matched, and the model got its
    # own fields, nothing of the bytes around it
    assert [status for status, _ in found] == [201, 201, 201], found
    with client(server) as http:
        created = http.get(f"{M}/wire-pipelined").json()
    assert created["description"] == "between two uploads"
