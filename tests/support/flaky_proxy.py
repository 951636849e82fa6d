"""A TCP proxy in front of a real server that loses answers on request, for retry tests.

    with FlakyProxy(server_url) as proxy:
        proxy.drop_responses(1, match=b"POST /api/v1/models/churn/versions ")
        client = Client(proxy.url, token)
        ...
        proxy.dropped   # the responses the server sent and the client never saw

It understands just enough HTTP/1.1 (Content-Length and chunked bodies, keep-alive) to
act per request: forward it and relay the answer (the default), forward it and then
close the client's connection without relaying the answer (``drop_responses``: the
server did the work, the client saw a dropped connection), or answer with an error
itself without forwarding (``fail_requests``: 429/503 with ``Retry-After``). It runs on
its own thread and event loop, so sync and async clients can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit


@dataclass
class _Rule:
    action: str  # "drop" | "fail" | "cut"
    remaining: int
    match: bytes
    status: int = 503
    retry_after: str | None = "0"
    share: float = 1.0  # "cut": the part of the body forwarded before both ends close


@dataclass
class Seen:
    head: bytes
    body: bytes
    status: int | None = None  # the upstream's answer, when there was one

    @property
    def request_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


@dataclass
class FlakyProxy:
    upstream: str
    requests: list[Seen] = field(default_factory=list)
    dropped: list[bytes] = field(default_factory=list)
    _rules: list[_Rule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.port = 0

    # ---------------------------------------------------------------- control

    def drop_responses(self, count: int, *, match: bytes = b"") -> None:
        """Forward the next ``count`` requests whose head contains ``match``, then close the
        client's connection instead of relaying the answer."""
        with self._lock:
            self._rules.append(_Rule("drop", count, match))

    def fail_requests(
        self, count: int, *, status: int = 503, retry_after: str | None = "0", match: bytes = b""
    ) -> None:
        """Answer the next ``count`` matching requests with ``status`` without forwarding them."""
        with self._lock:
            self._rules.append(_Rule("fail", count, match, status, retry_after))

    def cut_requests(self, count: int, *, after: float, match: bytes = b"") -> None:
        """Forward the head and the first ``after`` share of the body of the next ``count``
        matching requests, then close both connections: the server sees its client go away
        mid-body, the client a connection dropped before any answer."""
        with self._lock:
            self._rules.append(_Rule("cut", count, match, share=after))

    def seen(self, match: str = "") -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if match in r.request_line]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _rule_for(self, head: bytes) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.match in head:
                    rule.remaining -= 1
                    return rule
        return None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Connections a client keeps alive in its pool (MLflow's cached requests session
            # does) end here: closing their streams ends each connection's task through its
            # own ``finally``. Cancelling the tasks instead could catch one before its first
            # step, and its streams would then be torn down with the loop ("loop is closed").
            for writer in list(self._open):
                writer.close()
            serving = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*serving, return_exceptions=True), 5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # ---------------------------------------------------------------- proxying

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._open.add(client_out)
        try:
            while True:
                try:
                    head, body = await _read_message(client_in)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                seen = Seen(head, body)
                with self._lock:
                    self.requests.append(seen)
                rule = self._rule_for(head)
                if rule is not None and rule.action == "fail":
                    client_out.write(_error_response(rule.status, rule.retry_after))
                    await client_out.drain()
                    continue
                if upstream is None:
                    upstream = await asyncio.open_connection(self._host, self._port)
                up_in, up_out = upstream
                if rule is not None and rule.action == "cut":
                    up_out.write(head + body[: int(len(body) * rule.share)])
                    await up_out.drain()
                    return  # both connections close: the rest of the body never arrives
                up_out.write(head + body)
                await up_out.drain()
                # The answer to a HEAD has no body, whatever its Content-Length says.
                response_head, response_body = await _read_message(
                    up_in, bodiless=head.startswith(b"HEAD ")
                )
                seen.status = int(response_head.split(b" ", 2)[1])
                if rule is not None and rule.action == "drop":
                    with self._lock:
                        self.dropped.append(response_head + response_body)
                    return  # close the client's connection: the answer is lost
                client_out.write(response_head + response_body)
                await client_out.drain()
        finally:
            self._open.discard(client_out)
            for writer in (client_out, upstream[1] if upstream else None):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()


async def _read_message(
    reader: asyncio.StreamReader, *, bodiless: bool = False
) -> tuple[bytes, bytes]:
    """One HTTP/1.1 message: its head (through the blank line) and its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    if bodiless:
        return head, b""
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        headers[key.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            chunks.append(size_line + data)
            if size == 0:
                return head, b"".join(chunks)
    length = int(headers.get(b"content-length", b"0"))
    return head, await reader.readexactly(length) if length else b""


def body_of(message: bytes) -> bytes:
    """The body of a message with a Content-Length (what a dropped response carried)."""
    return message.split(b"\r\n\r\n", 1)[1]


def _error_response(status: int, retry_after: str | None) -> bytes:
    body = (
        b'{"type":"urn:modelreg:unavailable","title":"Try again","status":%d,"code":"unavailable"}'
        % status
    )
    lines = [
        f"HTTP/1.1 {status} Try Again",
        "Content-Type: application/problem+json",
        f"Content-Length: {len(body)}",
    ]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
