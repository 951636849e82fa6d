"""The NATS commands name the server's refusal even when a connection is reset on the way.

A NATS server that refuses a client sends its reason (-ERR) and closes; with the client's
bytes still unread the close becomes a reset, and on a loaded machine the reason can be
lost. A stub server plays both in a fixed order, so no timing decides the outcome.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from service.cli.nats_connection import CannotStartError, connect_nats

INFO = {"server_id": "stub", "version": "2.10.0", "proto": 1, "max_payload": 1048576}
REFUSE = b"-ERR 'Authorization Violation'\r\n"

Answer = Callable[[asyncio.StreamWriter], None]


def refuse(writer: asyncio.StreamWriter) -> None:
    writer.write(REFUSE)
    writer.close()


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # linger 0: an RST, no reason sent


@asynccontextmanager
async def stub_nats(*answers: Answer) -> AsyncIterator[str]:
    """A server that greets each connection, reads its CONNECT and PING, then answers it
    with the next of ``answers`` (the last one repeats)."""
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        answer = answers[min(served, len(answers) - 1)]
        served += 1
        writer.write(b"INFO " + json.dumps(INFO).encode() + b"\r\n")
        await writer.drain()
        while not (await reader.readline()).startswith(b"PING"):
            pass
        answer(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"nats://auditor:a-wrong-one@127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_reset_after_the_refusal_does_not_hide_the_reason() -> None:
    # given a server that refuses the first attempt and resets the retry
    async with stub_nats(refuse, reset) as url:
        # when a command connects, then it reports the refusal, not the reset
        with pytest.raises(CannotStartError, match="Authorization Violation"):
            await connect_nats(url)


async def test_a_connect_that_heard_only_resets_asks_again_and_names_the_refusal() -> None:
    # given a server whose first two answers are resets, then a refusal
    async with stub_nats(reset, reset, refuse) as url:
        # when a command connects, then it tried again and reports the refusal
        with pytest.raises(CannotStartError, match="Authorization Violation"):
            await connect_nats(url)
