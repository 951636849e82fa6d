"""A real ``modelreg serve`` process attacked with raw sockets: oversized bodies behind an
Idempotency-Key, huge and endless headers, idle and slowloris connections, slow bodies and
more connections than allowed. The server must refuse or close each, and keep answering
``/health/live``. Waits are on conditions (an answer, the peer closing), never sleeps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.raw_http import (
    connect,
    send_until_answered,
)
from tests.support.registry_server import RegistryServer, registry_server

CAP = 8 * 1024 * 1024  # the API's body cap (service.api.router.MAX_BODY_BYTES)
CHUNK = b"x" * 65536
OFFERED = 1024  # chunks of 64 KiB: 64 MiB, eight times the cap


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def keyed_post_head(server: RegistryServer, framing: str) -> bytes:
    return (
        "POST /api/v1/models HTTP/1.1\r\n"
        "Host: modelreg\r\n"
        f"Authorization: Bearer {server.admin_token}\r\n"
        "Content-Type: application/json\r\n"
        "Idempotency-Key: huge-body\r\n"
        f"{framing}\r\n"
        "\r\n"
    ).encode()


def live(server: RegistryServer) -> int:
    return httpx.get(f"{server.url}/health/live", timeout=10).status_code


def test_a_keyed_post_declaring_a_huge_body_is_refused_before_it_is_read(
    server: RegistryServer,
) -> None:
    # Given a keyed POST that declares 300 MB,
    head = keyed_post_head(server, f"Content-Length: {300 * 1024 * 1024}")
    # when its body is sent for as long as the server reads it,
    with contextlib.closing(connect(server.url)) as sock:
        sent = send_until_answered(sock, head, OFFERED, CHUNK)
    # then the server answered 413 before the client could send 64 MiB of it.
    assert sent.status == 413, sent
    assert not sent.finished, f"the server read all {sent.bytes_sent} bytes before answering"
    assert live(server) == 200


def test_a_keyed_chunked_post_is_cut_off_at_the_cap(server: RegistryServer) -> None:
    # Given a keyed POST whose chunked body announces no length,
    head = keyed_post_head(server, "Transfer-Encoding: chunked")
    chunk = b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n"
    # when its body is sent for as long as the server reads it,
    with contextlib.closing(connect(server.url)) as sock:
        sent = send_until_answered(sock, head, OFFERED, chunk)
    # then the server stopped reading past the cap and answered 413.
    assert sent.status == 413, sent
    assert not sent.finished, f"the server read all {sent.bytes_sent} bytes before answering"
    assert live(server) == 200
