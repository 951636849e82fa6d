"""Several real ``modelreg serve`` processes sharing one Postgres and a NATS cluster, for
multi-instance tests; and which of them holds an advisory lock.

- ``ServeProcess``: one ``python -m service serve --role ...`` with a clean ``MODELREG_*``
  environment, its log in a file, its HTTP port chosen by the kernel (``MODELREG_PORT=0``,
  read back from the "serving http://..." line). It can be stopped (SIGTERM) or killed (-9).
- ``run_cli``: a one-shot command (``modelreg migrate``) as the deploy files run it.
- ``lock_holders`` and ``client_pid``: the Postgres backend holding each advisory lock, and
  the local process at the other end of that backend's connection (through the Unix
  socket's peer, or the TCP client port), so a test can kill exactly the leader.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

REPO = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"serving http://127\.0\.0\.1:(\d+) ")


def clean_environ(**settings: str) -> dict[str, str]:
    """This process's environment without any MODELREG_* variable, plus ``settings``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")}
    return base | settings


def run_cli(
    args: list[str], env: Mapping[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # our own CLI, fixed arguments
        [sys.executable, "-m", "service", *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class ServeProcess:
    name: str
    role: str
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base_url(self) -> str:
        assert self.port is not None, f"{self.name} has not reported its port yet"
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ServeProcess:
        self.port = None
        env = self.env | {"MODELREG_PORT": "0", "MODELREG_HOST": "127.0.0.1"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # our own CLI, fixed arguments
                [sys.executable, "-m", "service", "serve", "--role", self.role],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> ServeProcess:
        """Until ``/health/ready`` answers 200 (database, migrations and, for workers, NATS)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    raise AssertionError(
                        f"{self.name} exited {self.proc and self.proc.returncode}:\n{self.log()[-4000:]}"
                    )
                if self.port is None and (found := SERVING.search(self.log())):
                    self.port = int(found.group(1))
                if self.port is not None:
                    with contextlib.suppress(httpx.TransportError):
                        if client.get(f"{self.base_url}/health/ready").status_code == 200:
                            return self
                time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready in {timeout} s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        """kill -9: no shutdown code runs; the kernel closes its sockets."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM without waiting (see ``stop``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait (the runtime's graceful stop); -9 if it does not end in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


# ---------------------------------------------------------------- who holds a lock


@dataclass(frozen=True)
class Holder:
    backend_pid: int
    application_name: str
    client_port: int | None  # None: a Unix-socket connection


async def lock_holders(conn: asyncpg.Connection, names: Iterable[str]) -> dict[str, Holder]:
    """The backend holding each session advisory lock ``pg_try_advisory_lock(hashtextextended(name, 0))``.

    A bigint advisory lock shows in ``pg_locks`` as classid = high 32 bits, objid = low
    32 bits, objsubid = 1. Locks nobody holds are absent from the answer.
    """
    held: dict[str, Holder] = {}
    for name in names:
        key: int = await conn.fetchval("SELECT hashtextextended($1, 0)", name)
        row = await conn.fetchrow(
            "SELECT l.pid, a.application_name, a.client_port FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
            " AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.database = ("
            "   SELECT oid FROM pg_database WHERE datname = current_database())",
            (key >> 32) & 0xFFFFFFFF,
            key & 0xFFFFFFFF,
        )
        if row is not None:
            port = row["client_port"]
            held[name] = Holder(
                row["pid"], row["application_name"], port if port and port > 0 else None
            )
    return held


def client_pid(holder: Holder, candidates: Iterable[int]) -> int | None:
    """Which of ``candidates`` (local pids) is the client of ``holder``'s connection."""
    candidates = list(candidates)
    if holder.client_port is not None:
        inodes = _tcp_inodes_for_local_port(holder.client_port)
    else:
        peers = _unix_peers()
        inodes = {peers[i] for i in _socket_inodes(holder.backend_pid) if i in peers}
    for pid in candidates:
        if _socket_inodes(pid) & inodes:
            return pid
    return None


def _socket_inodes(pid: int) -> set[int]:
    found: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = str(fd.readlink())
                if target.startswith("socket:["):
                    found.add(int(target[8:-1]))
    return found


def _unix_peers() -> dict[int, int]:
    """inode -> peer inode of every connected Unix stream socket (``ss`` reads sock_diag)."""
    out = subprocess.run(
        ["ss", "-xnH"], capture_output=True, text=True, check=True
    ).stdout  # fixed arguments
    peers: dict[int, int] = {}
    for line in out.splitlines():
        fields = line.split()
        if (
            len(fields) >= 8
            and fields[0] == "u_str"
            and fields[5].isdigit()
            and fields[7].isdigit()
        ):
            peers[int(fields[5])] = int(fields[7])
    return peers


def _tcp_inodes_for_local_port(port: int) -> set[int]:
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(int(fields[9]))
    return inodes
