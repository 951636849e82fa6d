"""Raw-socket HTTP/1.1 for attacking a real server: what no well-behaved client sends
(huge or endless headers, bodies that stop half-way), and waits on what the server does
(answers, closes) rather than on fixed sleeps."""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Sent:
    bytes_sent: int
    status: int | None  # None: the server closed without answering
    finished: bool  # every byte offered was sent before the server answered


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(address(url), timeout=10, source_address=(source, 0))


def status_of(head: bytes) -> int | None:
    if not head.startswith(b"HTTP/1."):
        return None
    return int(head.split(b" ", 2)[1])


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes or ``timeout`` passes (b"" if it closed at once)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received:
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within ``within`` seconds;
    any bytes it sends first (an error answer) are read and dropped."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            return False
        try:
            if sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def send_until_answered(
    sock: socket.socket, head: bytes, chunks: int, chunk: bytes, timeout: float = 60.0
) -> Sent:
    """Send ``head``, then up to ``chunks`` copies of ``chunk``, stopping as soon as the
    server answers. The server's reading is what lets the sending go on, so a server that
    answers early proves it did not read the rest."""
    sock.setblocking(False)
    pending = head
    sent = 0
    left = chunks
    answer = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        want_write = [sock] if (pending or left) else []
        readable, writable, _ = select.select([sock], want_write, [], 1.0)
        if readable:
            try:
                answer = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                answer = b""
            break
        if writable:
            if not pending:
                pending, left = chunk, left - 1
            try:
                n = sock.send(pending)
            except (ConnectionResetError, BrokenPipeError):
                break
            sent += n
            pending = pending[n:]
    sock.setblocking(True)
    return Sent(sent, status_of(answer), finished=not pending and left == 0)
