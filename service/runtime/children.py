"""Child server processes we own: start, stop, clean up after a killed run. I/O: processes.

A child runs in its own session, so a terminal's Ctrl-C reaches only us and we stop our
children in order. On Linux it is also told (parent-death signal) to shut down when we
die without stopping it, so even ``kill -9`` leaks no server.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def spawn(
    args: list[str], *, log_path: Path, death_signal: signal.Signals, **popen: Any
) -> subprocess.Popen[bytes]:
    """Start ``args`` with stdout and stderr appended to ``log_path``; ``popen`` adds
    ``subprocess.Popen`` options (e.g. ``user=``)."""
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - callers pass our own binaries
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,
            preexec_fn=death_signal_setter(death_signal),  # noqa: PLW1509 - one prctl call
            **popen,
        )


def death_signal_setter(sig: signal.Signals) -> Callable[[], None] | None:
    # The kernel ties the parent-death signal to the *thread* that forked, so set it only
    # from the main thread, which lives as long as the process.
    if (
        not sys.platform.startswith("linux")
        or threading.current_thread() is not threading.main_thread()
    ):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))

    return set_death_signal


def terminate(proc: subprocess.Popen[bytes], sig: signal.Signals, *, timeout: float) -> None:
    """Send ``sig`` and wait; kill after ``timeout``, or at once on a second Ctrl-C."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()


def stop_orphan(pid_file: Path, marker: Path, sig: signal.Signals) -> None:
    """Stop the server named in ``pid_file`` if its command line mentions ``marker``.

    Only for a caller that holds the lock of that data: the server is then a leftover of
    a killed run (e.g. on a platform without the parent-death signal), never a live peer's.
    """
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return
    if str(marker).encode() not in cmdline:
        return  # the pid now belongs to something else; the server copes with a stale file
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        deadline = time.monotonic() + 30.0
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def log_tail(path: Path, size: int = 4096) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def last_error_line(text: str) -> str:
    """The line of a server log most likely to say why it failed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if any(mark in line for mark in ("FATAL", "ERROR", "[FTL]", "[ERR]")):
            return line
    return lines[-1] if lines else "no output"
