"""Role ``all`` runs its background workers in a child process (service.runtime.worker_process):
the child's settings equal the parent's, writes are projected and published from it, a
child that dies is started again, and a parent that dies takes its child with it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from service.runtime.worker_process import child_environment
from service.settings import load_settings
from tests.support.registry_server import RegistryServer, registry_server

DEADLINE = 60.0  # seconds a process gets to appear or go; a bound, not a measurement


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue  # gone meanwhile
        if f"\nPPid:\t{pid}\n" in status:
            found.append(int(entry.name))
    return found


def _worker_children(pid: int) -> list[int]:
    workers = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"service.runtime.worker_process" in cmdline:
            workers.append(child)
    return workers


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited; its parent has not reaped it


def _wait_until(predicate: object, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"not within {DEADLINE:.0f} s: {what}")


def _one_worker_child(server: RegistryServer) -> int:
    assert server.proc is not None
    parent = server.proc.pid
    _wait_until(lambda: len(_worker_children(parent)) == 1, "one worker child")
    (child,) = _worker_children(parent)
    return child


def _register_and_read(server: RegistryServer, model: str) -> None:
    """A write, then a read of the projected views that must show it."""
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30.0) as http:
        created = http.post("/api/v1/models", json={"name": model})
        assert created.status_code == 201, created.text
        position = created.json()["position"]
        # Answered from the model_catalogue view, which only the worker child folds.
        listed = http.get("/api/v1/models", params={"q": model, "min_position": str(position)})
        assert listed.status_code == 200, listed.text
        assert [m["name"] for m in listed.json()["items"]] == [model]


def test_the_child_environment_carries_every_setting_of_the_parent() -> None:
    # Given settings from the environment and from command-line options on top
    parent = load_settings(
        {"MODELREG_DB_SCHEMA": "reg", "MODELREG_ERASABLE_COMMENTS": "true", "MODELREG_ROLE": "api"},
        role="all",
        port=9001,
        data_dir="/srv/modelreg",
    )
    stale = {"MODELREG_DB_SCHEMA": "other", "MODELREG_ROLE": "api", "PATH": "/usr/bin"}

    # When the child's environment is built and read back as the child reads it
    env = child_environment(parent, "postgresql://db/x", "nats://n:4222", stale)
    child = load_settings(env)

    # Then the child has the parent's settings, the servers the parent reached, no sealer
    expected = msgspec.structs.replace(
        parent,
        database_url="postgresql://db/x",
        nats_url="nats://n:4222",
        role="worker",
        sealer=False,
        worker_process=False,
    )
    assert child == expected
    assert env["PATH"] == "/usr/bin"


def test_writes_are_projected_by_the_worker_child_which_is_restarted_when_it_dies(
    database_url: str, nats_url: str, workdir: Path
) -> None:
    # Given a serve process in role all (the default)
    with registry_server(database_url, nats_url, workdir) as server:
        first = _one_worker_child(server)
        _register_and_read(server, "before-kill")

        # When its worker child is killed with SIGKILL
        os.kill(first, signal.SIGKILL)

        # Then a new child takes its place and the views keep following the log
        assert server.proc is not None
        parent = server.proc.pid
        _wait_until(
            lambda: [c for c in _worker_children(parent) if c != first], "a new worker child"
        )
        _register_and_read(server, "after-kill")
        assert server.proc.poll() is None


def test_a_parent_killed_with_sigkill_takes_its_worker_child_with_it(
    database_url: str, nats_url: str, workdir: Path
) -> None:
    # Given a serve process and its worker child
    with registry_server(database_url, nats_url, workdir) as server:
        child = _one_worker_child(server)

        # When the parent (its process group: the child has a session of its own) is killed
        server.kill()

        # Then the child stops too (parent-death signal), and a restart starts a new one
        _wait_until(lambda: not _alive(child), f"worker child {child} to exit")
        server.start_again()
        assert _one_worker_child(server) != child
        _register_and_read(server, "after-restart")


def test_worker_process_false_keeps_every_worker_in_one_process(
    database_url: str, nats_url: str, workdir: Path
) -> None:
    # Given a serve process told to keep its workers in process
    with registry_server(database_url, nats_url, workdir, worker_process="false") as server:
        # When a write is made and read back from the views
        _register_and_read(server, "in-process")

        # Then the views followed with no worker child
        assert server.proc is not None
        assert _worker_children(server.proc.pid) == []
