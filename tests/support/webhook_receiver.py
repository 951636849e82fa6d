"""A real HTTP receiver for webhook tests: a small HTTP/1.1 server on a loopback port that
records each request and answers what the test says (fail, hang until released, or be down).

It verifies each delivery's Standard Webhooks signature with the ``standardwebhooks``
library, as a receiver would, and records whether it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def message_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """``answer(request) -> status`` decides each response (default 204); status 0 drops
    the connection without answering."""

    secret: str = ""
    answer: Callable[[Received], int] = lambda _: 204
    received: list[Received] = field(default_factory=list)
    port: int = 0
    # While cleared, every request waits (a slow receiver); set by default.
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def delivered(self) -> list[Received]:
        """The requests answered 2xx, in arrival order."""
        return [r for r in self.received if getattr(r, "status", 0) // 100 == 2]

    async def start(self) -> Receiver:
        self.flowing.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Go down: stop listening and drop open connections (the port stays ours to reuse)."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            # Connection handlers end here, not at the loop's teardown (which logs them).
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, _, value = line.partition(":")
                        headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Received(headers, body, self._verify(headers, body))
                await self.flowing.wait()
                status = self.answer(request)
                request.status = status  # type: ignore[attr-defined]
                self.received.append(request)
                if status == 0:
                    return  # the finally below closes the connection unanswered
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n".encode()
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    def _verify(self, headers: dict[str, str], body: bytes) -> bool:
        if not self.secret:
            return False
        try:
            Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            return False
        return True
