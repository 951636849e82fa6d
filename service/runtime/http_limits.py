"""HTTP resource limits that uvicorn's httptools protocol lacks. I/O: the connection.

uvicorn bounds nothing of a request's head with httptools (it concatenates a 100 MB header
in Python, stalling the event loop), never times out a connection that has not sent a
request yet, a head sent a byte at a time (slowloris) or a body that stops half-way, and
its ``limit_concurrency`` also refuses health probes. This protocol adds, like nginx's
``large_client_header_buffers``, ``client_header_timeout`` and ``client_body_timeout``:

    request line + headers over max_header_bytes, or over max_headers   -> 431, closed
    head not complete header_timeout seconds after it began (or after
    the connection opened)                                             -> closed
    no body bytes for body_timeout seconds while a body is expected    -> closed
    idle kept-alive connection after keep_alive_timeout seconds        -> closed (uvicorn)
    more than max_connections connections                              -> 503 (uvicorn),
                                                                          except /health/*
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.runtime import request_body
from service.settings import Settings

log = logging.getLogger("modelreg.http")

HEALTH_PREFIX = b"/health/"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 1000

    @classmethod
    def of(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.http_max_header_bytes,
            max_headers=settings.http_max_headers,
            header_timeout=settings.http_header_timeout,
            body_timeout=settings.http_body_timeout,
            keep_alive_timeout=settings.http_keep_alive_timeout,
            max_connections=settings.http_max_connections,
        )


class _TooManyHeadersError(Exception):
    pass


LINGER_SECONDS = 2.0  # after a refusal: how long the client's remaining bytes are drained
LINGER_BYTES = 16 * 1024 * 1024  # ... and at most how many, then the connection is closed


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; ``protocol_for`` binds them."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keep_alive_timeout  # type: ignore[assignment]  # uvicorn types it int; call_later takes a float
        self._in_head = True  # the next bytes belong to a request's head
        self._head_bytes = 0
        self._head_headers = 0
        self._refusing = False
        self._discarded = 0
        self._deadline: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, "no complete request head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusing:
            self._discard(len(data))
            return
        # Feed a head no further than the cap, so an endless header is never buffered.
        while data and self._in_head and not self.transport.is_closing():
            room = self.limits.max_header_bytes - self._head_bytes
            if room <= 0:
                self._refuse("the request line and headers are too large")
                return
            part, data = data[:room], data[room:]
            self._head_bytes += len(part)
            super().data_received(part)
        if data and not self.transport.is_closing():
            super().data_received(data)

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the first request's clock started with the connection
            self._arm(self.limits.header_timeout, "no complete request head")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_headers += 1
        if self._head_headers > self.limits.max_headers:
            raise _TooManyHeadersError  # httptools stops parsing; send_400_response answers
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.limits.body_timeout, "the request body stalled")
        existing = self.cycle
        if not self.url.startswith(HEALTH_PREFIX):
            super().on_headers_complete()
        else:
            # Probes pass the connection limit: a full server is not a dead one.
            limit, self.limit_concurrency = self.limit_concurrency, None
            try:
                super().on_headers_complete()
            finally:
                self.limit_concurrency = limit
        if self.cycle is not existing and self.cycle is not None:
            request_body.adopt(self.cycle)  # no upgrade: a new request's cycle

    def on_body(self, body: bytes) -> None:
        self._arm(self.limits.body_timeout, "the request body stalled")
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes, self._head_headers = True, 0, 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._head_headers > self.limits.max_headers:
            self._refuse("the request has too many headers")
        else:
            super().send_400_response(msg)

    # ------------------------------------------------------------------ helpers

    def _refuse(self, reason: str) -> None:
        if self._refusing:
            return
        self._refusing = True
        self._disarm()
        log.info("refused a request from %s: %s", _peer(self.client), reason)
        body = reason.encode()
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[431],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        # A lingering close, as nginx does: closing with the client's bytes unread would
        # send a reset that can destroy the 431 before the client reads it. So stop
        # writing, throw away what still arrives for a short, bounded while, then close.
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._deadline = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def _discard(self, size: int) -> None:
        self._discarded += size
        if self._discarded > LINGER_BYTES and not self.transport.is_closing():
            self.transport.close()

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, reason: str) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("closed a connection from %s: %s in time", _peer(self.client), reason)
            self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"


def protocol_for(limits: HttpLimits) -> type[LimitedHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to ``limits``."""
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})
