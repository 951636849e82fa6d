"""A real ``modelreg serve`` process attacked with raw sockets: oversized bodies behind an
Idempotency-Key, huge and endless headers, idle and slowloris connections, slow bodies and
more connections than allowed. The server must refuse or close each, and keep answering
``/health/live``. Waits are on conditions (an answer, the peer closing), never sleeps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.raw_http import (
    Sent,
    closed_by_peer,
    connect,
    read_answer,
    send_until_answered,
    status_of,
)
from tests.support.registry_server import RegistryServer, registry_server

CAP = 8 * 1024 * 1024  # the API's body cap (service.api.router.MAX_BODY_BYTES)
CHUNK = b"x" * 65536
OFFERED = 1024  # chunks of 64 KiB: 64 MiB, eight times the cap


BOUND = 20  # connections the bounded server allows


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    """Default limits but a small connection bound; its timeouts are far beyond any test."""
    with registry_server(
        database_url, nats_url, workdir, http_max_connections=str(BOUND), http_header_timeout="300"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def quick(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    """Timeouts of one second, so a test sees them fire."""
    with registry_server(
        database_url,
        nats_url,
        workdir,
        http_header_timeout="1",
        http_body_timeout="1",
        http_keep_alive_timeout="1",
    ) as running:
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


def test_huge_headers_are_refused_and_the_server_keeps_answering(quick: RegistryServer) -> None:
    # Given 8 connections each sending a header of up to 100 MB at once,
    head = b"GET /health/live HTTP/1.1\r\nHost: modelreg\r\nX-Big: "
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda _: _send_on_new_connection(quick, head, 1600, CHUNK), range(8))
        )
    # then each got 431 long before its header was sent, and the server still answers.
    assert [r.status for r in results] == [431] * 8, results
    assert not any(r.finished for r in results), results
    assert live(quick) == 200


def test_too_many_headers_are_refused(quick: RegistryServer) -> None:
    # Given a request with 101 small headers (the limit is 100),
    many = "".join(f"X-{i}: {i}\r\n" for i in range(101))
    with contextlib.closing(connect(quick.url)) as sock:
        sock.sendall(f"GET /health/live HTTP/1.1\r\nHost: m\r\n{many}\r\n".encode())
        # then it is refused with 431 and the connection closed.
        assert status_of(read_answer(sock, timeout=30)) == 431
        assert closed_by_peer(sock, within=30)
    assert live(quick) == 200


def test_idle_connections_are_closed(quick: RegistryServer) -> None:
    # Given 100 connections that never send a byte,
    sockets = [connect(quick.url) for _ in range(100)]
    try:
        # then the server still answers probes, and closes every one of them.
        assert live(quick) == 200
        assert all(closed_by_peer(sock, within=60) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


def test_a_kept_alive_connection_is_closed_when_idle(quick: RegistryServer) -> None:
    # Given a connection that made one request and keeps the connection alive,
    with contextlib.closing(connect(quick.url)) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: m\r\n\r\n")
        assert status_of(read_answer(sock, timeout=30)) == 200
        # then the server closes it once it idles.
        assert closed_by_peer(sock, within=60)


def test_a_slowloris_head_is_cut_off(quick: RegistryServer) -> None:
    # Given a connection that sends its head one byte at a time, a byte per 0.2 s at most,
    head = b"GET /health/live HTTP/1.1\r\nHost: m\r\n" + b"X-Slow: " + b"a" * 300
    with contextlib.closing(connect(quick.url)) as sock:
        closed = False
        for byte in head:
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_peer(sock, within=0.2):
                closed = True
                break
        # then the server closed it before the head was complete (a minute at this pace).
        assert closed
    assert live(quick) == 200


def test_a_stalled_body_is_cut_off(quick: RegistryServer) -> None:
    # Given a POST that declares 1,000 bytes of body and sends 10,
    with contextlib.closing(connect(quick.url)) as sock:
        sock.sendall(
            b"POST /api/v1/models HTTP/1.1\r\nHost: m\r\n"
            + f"Authorization: Bearer {quick.admin_token}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            + b'{"name": "'
        )
        # then the server closes the connection.
        assert closed_by_peer(sock, within=60)
    assert live(quick) == 200


def test_connections_beyond_the_bound_get_503_but_probes_pass(server: RegistryServer) -> None:
    # Given more idle connections than the server allows, from another address,
    hogs = [connect(server.url, source="127.0.0.2") for _ in range(BOUND + 10)]
    try:
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        # when a client calls the API and a probe checks the process,
        api = httpx.get(f"{server.url}/api/v1/models", headers=headers, timeout=10)
        # then the API call is refused with 503 and the probe still answers.
        assert api.status_code == 503, api.text
        assert live(server) == 200
    finally:
        for sock in hogs:
            sock.close()


def _send_on_new_connection(server: RegistryServer, head: bytes, chunks: int, chunk: bytes) -> Sent:
    with contextlib.closing(connect(server.url)) as sock:
        return send_until_answered(sock, head, chunks, chunk)
