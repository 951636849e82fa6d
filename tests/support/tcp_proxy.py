"""A TCP proxy in front of a real server that can be cut and restored, for outage tests.

    async with CuttableProxy("127.0.0.1", 5432) as proxy:
        pool = await create_pool(proxy.url_for(database_url), ...)
        await proxy.cut()       # every open connection closes, new ones are refused
        ...
        await proxy.restore()   # accepts connections again, on the same port

Unlike a mock, the server behind it sees exactly what a network failure shows it: its
clients' sockets close (so, e.g., Postgres ends their sessions and frees their locks).
It runs in the caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


class CuttableProxy:
    def __init__(self, host: str, port: int) -> None:
        # A host that is a directory means a Unix socket, as libpq and asyncpg read it.
        self.upstream = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def in_front_of(cls, url: str) -> CuttableProxy:
        """A proxy for the server of a Postgres URL (``?host=/dir&port=`` for a socket)."""
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query))
        host = params.get("host") or parts.hostname or "127.0.0.1"
        return cls(host, int(params.get("port") or parts.port or 5432))

    def url_for(self, url: str) -> str:
        """``url`` with its server replaced by this proxy (over TCP)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in {"host", "port"}]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    async def __aenter__(self) -> CuttableProxy:
        await self.restore()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cut(self) -> None:
        """Stop listening (connecting is refused) and close every proxied connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def restore(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        host, port = self.upstream
        try:
            if host.startswith("/"):
                up_in, up_out = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                up_in, up_out = await asyncio.open_connection(host, port)
        except OSError:
            client_out.close()
            return
        self._writers.update((client_out, up_out))
        pumps = [
            asyncio.create_task(_pump(client_in, up_out)),
            asyncio.create_task(_pump(up_in, client_out)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            for writer in (client_out, up_out):
                self._writers.discard(writer)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
