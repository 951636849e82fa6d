"""Embedded Postgres and NATS: real child processes under a temporary data dir."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest

from service.runtime.embedded import (
    DataDirLock,
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServerError,
)
from service.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def private_dir() -> tempfile.TemporaryDirectory[str]:
    """A temp dir outside pytest's basetemp. As root the embedded Postgres runs as another
    user and needs o+x on every parent, and each new pytest session resets
    /tmp/pytest-of-root to 0700, which would cut off a server that is running."""
    return tempfile.TemporaryDirectory(prefix="modelreg-test-")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with private_dir() as path:
        yield Path(path)


def gone(pid: int, timeout: float = 10.0) -> bool:
    """The process no longer exists (a zombie counts as gone: it runs nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        if "\nState:\tZ" in status:
            return True
        time.sleep(0.05)
    return False


async def test_embedded_postgres_keeps_its_data_across_a_restart(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir)
    try:
        conn = await asyncpg.connect(server.start())
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('survived')")
        await conn.close()
        first = server.pid
        server.stop()
        assert first is not None
        assert gone(first)
        assert not (data_dir / "postgres" / "postmaster.pid").exists()

        conn = await asyncpg.connect(server.start())
        assert await conn.fetchval("SELECT v FROM kept") == "survived"
        assert await conn.fetchval("SELECT current_database()") == "modelreg"
        await conn.close()
    finally:
        server.stop()


def test_embedded_postgres_start_and_stop_are_idempotent(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir)
    try:
        url = server.start()
        pid = server.pid
        assert server.start() == url
        assert server.pid == pid
    finally:
        server.stop()
        server.stop()
    assert server.pid is None


def test_a_second_embedded_postgres_on_the_same_data_dir_is_refused(data_dir: Path) -> None:
    refused = pytest.raises(
        EmbeddedServerError, match=r"embedded Postgres in .* is in use by another modelreg process"
    )
    with EmbeddedPostgres(data_dir), refused:
        EmbeddedPostgres(data_dir).start()


async def test_embedded_nats_serves_jetstream(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path, port=0)
    try:
        url = server.start()
        assert url == f"nats://127.0.0.1:{server.port}"
        client = await nats.connect(server.service_url)
        info = await client.jetstream().account_info()
        await client.close()
        assert info.limits.max_streams == -1
        assert (tmp_path / "nats" / "jetstream").is_dir()
    finally:
        pid = server.pid
        server.stop()
    assert pid is not None
    assert gone(pid)


async def test_embedded_nats_by_default_picks_a_free_port_even_when_4222_is_busy(
    tmp_path: Path,
) -> None:
    # given the standard NATS port busy (held here, or by a NATS the machine already runs)
    with socket.socket() as squatter, socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 4222)) != 0:
            squatter.bind(("127.0.0.1", 4222))
            squatter.listen()

        # when the embedded NATS starts with the default settings
        server = EmbeddedNats(tmp_path, port=load_settings({}).nats_port)
        try:
            url = await asyncio.to_thread(server.start)

            # then it serves JetStream on another loopback port, written down in the data dir
            assert server.port not in (0, 4222)
            assert url == f"nats://127.0.0.1:{server.port}"
            client = await nats.connect(server.service_url)
            await client.jetstream().account_info()
            await client.close()
            ports = list((tmp_path / "nats").glob(f"*_{server.pid}.ports"))
            assert len(ports) == 1 and url in ports[0].read_text()
        finally:
            await asyncio.to_thread(server.stop)


def test_embedded_nats_on_a_busy_port_fails_with_a_clear_message(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "first", port=0) as first:
        second = EmbeddedNats(tmp_path / "second", port=first.port)
        with pytest.raises(EmbeddedServerError) as caught:
            second.start()
        assert str(caught.value).startswith(
            f"NATS port {first.port} on 127.0.0.1 is already in use; "
            f"set MODELREG_NATS_URL=nats://127.0.0.1:{first.port} to use that server"
        )
        assert "MODELREG_NATS_PORT" in str(caught.value)
        assert second.pid is None


def test_the_data_dir_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    other_process = [
        sys.executable,
        "-c",
        "import sys, pathlib; from service.runtime.embedded import DataDirLock; "
        "DataDirLock(pathlib.Path(sys.argv[1])).acquire()",
        str(tmp_path),
    ]
    with DataDirLock(tmp_path):
        with pytest.raises(
            EmbeddedServerError, match=rf"in use by another modelreg process \(pid {os.getpid()}\)"
        ):
            DataDirLock(tmp_path).acquire()
        refused = subprocess.run(
            other_process, cwd=REPO, capture_output=True, text=True, check=False
        )
        assert refused.returncode != 0
        assert "EmbeddedServerError" in refused.stderr
    # Released: the next holder gets it.
    assert subprocess.run(other_process, cwd=REPO, check=False).returncode == 0


def test_a_data_dir_that_cannot_be_created_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(
        EmbeddedServerError, match=r"^cannot create data dir .*a-file/data: Not a directory$"
    ):
        DataDirLock(blocker / "data").acquire()


def test_servers_stop_when_their_parent_is_killed(data_dir: Path) -> None:
    """kill -9 of modelreg must not leave Postgres or NATS running."""
    script = (
        "import sys, time, pathlib; from service.runtime.embedded import EmbeddedNats, EmbeddedPostgres\n"
        "d = pathlib.Path(sys.argv[1]); pg = EmbeddedPostgres(d); pg.start(); n = EmbeddedNats(d, port=0); n.start()\n"
        "print(pg.pid, n.pid, flush=True); time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    parent.stdout.close()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert len(pids) == 2
    assert all(gone(pid) for pid in pids)
    # The next run finds a clean data dir.
    with EmbeddedPostgres(data_dir) as again:
        assert again.pid is not None
