"""Answers as they leave a real uvicorn server with modelreg's protocol, byte for byte the
same as plain uvicorn's, now that a response's head waits for its first body bytes and
goes out with them (service.runtime.response_head): JSON with a length, chunked streams,
no body at all (204, HEAD), several answers on one connection, and an app that fails
after it started answering."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.runtime.http_limits import HttpLimits, protocol_for
from tests.support.waiting import eventually

BIG = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes in one write


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """One answer per path, each a way an ASGI app sends its head and body."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/json":
        body = b'{"answer": 42}'
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":  # no length: uvicorn frames it chunked
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"first,", b"", b"second,", b"third"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(BIG)).encode())],
            }
        )
        half = len(BIG) // 2
        await send({"type": "http.response.body", "body": BIG[:half], "more_body": True})
        await send({"type": "http.response.body", "body": BIG[half:]})
    elif path == "/nothing":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/fails":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]}
        )
        raise RuntimeError("the app failed after starting its answer")


@asynccontextmanager
async def serving(protocol: type[Any]) -> AsyncIterator[int]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=protocol, lifespan="off", log_level="critical"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), what="uvicorn serving")
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def exchange(port: int, raw: bytes) -> bytes:
    """Everything the server sends back for ``raw`` until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    received = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    return re.sub(rb"date: [^\r]*\r\n", b"", received)


def request(method: str, path: str, *, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{connection}\r\n".encode()


CASES = {
    "json": request("GET", "/json", close=True),
    "chunked": request("GET", "/stream", close=True),
    "large, in two parts": request("GET", "/big", close=True),
    "no content": request("GET", "/nothing", close=True),
    "head": request("HEAD", "/json", close=True),
    "head, then another on the connection": request("HEAD", "/json")
    + request("GET", "/json", close=True),
    "three on one connection": request("GET", "/json")
    + request("GET", "/stream")
    + request("GET", "/nothing", close=True),
    "failing after the start": request("GET", "/fails"),
}


@pytest.mark.parametrize("raw", CASES.values(), ids=CASES.keys())
async def test_every_answer_is_byte_for_byte_what_plain_uvicorn_sends(raw: bytes) -> None:
    # given the same app behind uvicorn's own protocol and behind modelreg's
    async with serving(HttpToolsProtocol) as plain, serving(protocol_for(HttpLimits())) as ours:
        # when the same request bytes are sent to each
        expected = await exchange(plain, raw)
        got = await exchange(ours, raw)

    # then the same bytes come back (the date header aside)
    assert got == expected
    assert expected  # each case answers something, even the failing one (nothing: closed)
