"""A ``modelreg serve`` process as a user runs it: embedded Postgres and NATS under a fresh
data dir, nothing else configured (``tests/support/registry_server.py`` instead runs one on
the test session's servers)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0
SERVING = re.compile(r"serving http://127\.0\.0\.1:(\d+) ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Serve:
    """One ``python -m service serve`` process with a clean MODELREG_* environment.

    The HTTP port is 0 and the embedded NATS picks a free port by default (so parallel test
    runs never collide); the HTTP port is read back from the "serving http://..." log line.
    """

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir = data_dir
        self.log = log
        self.port: int | None = None
        base = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")}
        self.env = base | {
            "MODELREG_DATA_DIR": str(data_dir),
            "MODELREG_PORT": "0",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        self.port = None
        with self.log.open("wb") as out:
            # A session of its own, so interrupt() can signal the group as a terminal's Ctrl-C does.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "serve"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # serve keeps an inherited "ignore SIGINT" on purpose (a shell's background
                # job); pytest itself started as one (nohup, `&`) must not make it deaf.
                preexec_fn=_hear_sigint,
            )
        return self

    @property
    def base_url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port}"

    def run(self, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service", "serve"],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def wait_for(self, path: str, status: int, timeout: float = READY_TIMEOUT) -> httpx.Response:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            if self.port is None and (found := SERVING.search(self.log.read_text())):
                self.port = int(found.group(1))
            response = None
            if self.port is not None:
                with contextlib.suppress(httpx.TransportError):
                    response = httpx.get(f"{self.base_url}{path}", timeout=2.0)
            if response is not None and response.status_code == status:
                return response
            time.sleep(0.05)
        pytest.fail(f"{path} did not answer {status} in {timeout} s:\n{self.log.read_text()}")

    def interrupt(self, timeout: float = 30.0) -> int:
        """Ctrl-C: SIGINT to the whole process group, then the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # What the server was doing when it would not stop is the whole diagnosis.
            tail = self.log.read_text(errors="replace")[-4000:]
            raise AssertionError(
                f"serve did not stop {timeout:.0f} s after SIGINT:\n{tail}"
            ) from None

    def server_pids(self) -> tuple[int, int]:
        postgres = int((self.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        nats = int((self.data_dir / "nats" / "nats-server.pid").read_text().split()[0])
        return postgres, nats


def _hear_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def serve_on_fresh_data_dir() -> Iterator[Serve]:
    """A Serve on a fresh data dir outside pytest's basetemp: as root the embedded Postgres
    runs as another user and needs o+x on every parent, and each new pytest session resets
    /tmp/pytest-of-root to 0700, which would cut off a server that is running."""
    with tempfile.TemporaryDirectory(prefix="modelreg-test-") as path:
        server = Serve(Path(path) / "data", Path(path) / "serve.log")
        yield server
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
