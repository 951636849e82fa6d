"""Our own nats-server processes and a fault-injecting TCP proxy, for publication tests.

The session NATS (``tests.support.servers``) is shared and must never be stopped; tests
that stop NATS, kill a stream leader or lose an ack start their own servers here:

- ``NatsNode``: one JetStream server on a free loopback port with its own store dir. It can
  be stopped (SIGTERM), killed (SIGKILL) and started again on the same port and store, so
  clients reconnect to "the same" server.
- ``NatsCluster``: three nodes routed together on loopback (``--cluster``/``--routes``),
  each with its own ``server_name`` and store, for replicated (R3) streams.
- ``TcpProxy``: an asyncio proxy in front of a server that can black-hole the server->client
  direction (a published message reaches the server; its ack never comes back) and reset
  every connection, forcing clients to reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient

from service.runtime.embedded import nats_server_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsNode:
    def __init__(
        self,
        workdir: Path,
        name: str = "n1",
        *,
        port: int | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
        config: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.config = config  # a config file read first; the flags below override it
        self.env = env
        self.store_dir = workdir / f"nats-{name}"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.store_dir / "server.log"
        self.port = port or free_port()
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, wait: bool = True) -> NatsNode:
        if self.running:
            return self
        args = [nats_server_binary(), *(["--config", str(self.config)] if self.config else [])]
        args += [
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--server_name",
            self.name,
            "--log",
            str(self.log_path),
        ]
        if self.cluster_name is not None:
            assert self.cluster_port is not None
            args += [
                "--cluster_name",
                self.cluster_name,
                "--cluster",
                f"nats://127.0.0.1:{self.cluster_port}",
            ]
            if self.routes:
                args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # our own binary, fixed arguments
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if self.env is None else {**os.environ, **self.env},
            )
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server {self.name} exited: {self.log_path.read_text()[-2000:]}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                line = s.makefile("rb").readline(65536)
                if line.startswith(b"INFO ") and json.loads(line[5:]).get("jetstream"):
                    return
            time.sleep(0.02)
        raise RuntimeError(f"nats-server {self.name} not listening after {timeout} s")

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


class NatsCluster:
    """Three routed JetStream nodes on loopback; ``urls`` lists every client URL."""

    def __init__(self, workdir: Path, size: int = 3, name: str = "modelreg-test") -> None:
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsNode(
                workdir,
                f"c{i + 1}",
                cluster_name=name,
                cluster_port=cluster_ports[i],
                routes=[p for j, p in enumerate(cluster_ports) if j != i],
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    def start(self) -> NatsCluster:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_listening()
        return self

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until JetStream has a meta leader, so stream creation can succeed."""
        nc = await nats.connect(servers=[n.url for n in self.nodes if n.running])
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await nc.jetstream().account_info()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


async def connect(servers: str | list[str], **kwargs: object) -> NatsClient:
    """A client that reconnects quickly: tests restart servers and expect prompt recovery."""

    async def quiet(exc: Exception) -> None:
        return None  # servers are stopped on purpose here; tracebacks would only be noise

    options: dict[str, object] = {
        "connect_timeout": 1,
        "reconnect_time_wait": 0.1,
        "max_reconnect_attempts": -1,
        "allow_reconnect": True,
        "error_cb": quiet,
    }
    options.update(kwargs)
    return await nats.connect(servers=servers, **options)


class TcpProxy:
    """Forwards loopback TCP to ``target_port``; can black-hole replies and reset clients."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.blackhole_replies = False
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        pair = (client_w, server_w)
        self._pairs.add(pair)
        for task in (
            asyncio.create_task(self._pipe(client_r, server_w, replies=False)),
            asyncio.create_task(self._pipe(server_r, client_w, replies=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if replies and self.blackhole_replies:
                    continue  # the server answered; the client never hears it
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def reset_connections(self) -> None:
        """Close every proxied connection (both ends), as a network failure would."""
        for client_w, server_w in list(self._pairs):
            for w in (client_w, server_w):
                with contextlib.suppress(Exception):
                    transport = w.transport
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        # RST rather than FIN, so no in-flight reply sneaks through.
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                    transport.abort()
        self._pairs.clear()

    async def close(self) -> None:
        self.reset_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
