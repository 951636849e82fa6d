"""The commands that work on this machine's registry (``projections``, ``audit``) find it
through the data dir: the embedded Postgres and NATS of a running ``modelreg serve``; or
they say in one line that there is none, create nothing and exit 2."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from projections.registry_state import all_projections
from tests.support.nats_servers import NatsNode
from tests.support.serve_process import REPO, Serve, serve_on_fresh_data_dir

NO_REGISTRY = "modelreg: no registry in {}; start `modelreg serve` or set MODELREG_DATABASE_URL\n"
NO_NATS = "modelreg audit: no NATS: start `modelreg serve` or set MODELREG_NATS_URL\n"


def environment(**settings: str) -> dict[str, str]:
    """A user's shell: no MODELREG_* setting but those given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")}
    return base | settings


def modelreg(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def serve() -> Iterator[Serve]:
    with serve_on_fresh_data_dir() as server:
        yield server


@pytest.mark.parametrize(
    "args",
    [
        ["projections", "status"],
        ["projections", "rebuild", "--all"],
        ["audit", "verify"],
        ["audit", "replay", "--as-of", "1"],
    ],
)
def test_database_commands_on_a_data_dir_without_a_registry_create_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    data_dir = tmp_path / "data"

    result = modelreg(environment(MODELREG_DATA_DIR=str(data_dir)), *args)

    assert (result.returncode, result.stderr) == (2, NO_REGISTRY.format(data_dir))
    assert not data_dir.exists()


def test_nats_commands_without_a_running_serve_say_there_is_no_nats(tmp_path: Path) -> None:
    env = environment(MODELREG_DATA_DIR=str(tmp_path / "data"))

    follow = modelreg(env, "audit", "follow")
    mirror = modelreg(env, "audit", "mirror", str(tmp_path / "audit.jsonl"), "--once")

    assert (follow.returncode, follow.stderr) == (2, NO_NATS)
    assert (mirror.returncode, mirror.stderr) == (2, NO_NATS)
    assert not (tmp_path / "audit.jsonl").exists()


def test_nats_commands_on_a_nats_without_the_stream_exit_2_in_one_line(
    nats_url: str, tmp_path: Path
) -> None:
    env = environment(MODELREG_NATS_URL=nats_url, MODELREG_NATS_STREAM="NO_SUCH_STREAM")

    for args in (["audit", "follow"], ["audit", "mirror", str(tmp_path / "a.jsonl"), "--once"]):
        result = modelreg(env, *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            f"modelreg audit: NATS at {nats_url} has no stream NO_SUCH_STREAM: is it the "
            "registry's NATS? (`modelreg serve` creates the stream; MODELREG_NATS_STREAM "
            "names another)\n"
        )


def test_a_nats_that_refuses_the_credentials_exits_2_in_one_line(tmp_path: Path) -> None:
    # given a NATS that wants a password, and a URL with the wrong one
    config = tmp_path / "auth.conf"
    config.write_text('authorization: {user: "auditor", password: "the-right-one"}\n')
    node = NatsNode(tmp_path, "guarded", config=config).start()
    try:
        url = node.url.replace("nats://", "nats://auditor:a-wrong-one@")

        result = modelreg(environment(MODELREG_NATS_URL=url), "audit", "follow")
    finally:
        node.stop()

    # then one line names the server, never the password, and says it was refused
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"modelreg audit: cannot connect to NATS at nats://auditor:***@127.0.0.1:{node.port}: "
    )
    assert "uthorization" in result.stderr and "a-wrong-one" not in result.stderr


def test_with_serve_running_the_commands_use_its_postgres_and_nats(serve: Serve) -> None:
    # given `modelreg serve` on a fresh data dir, with the embedded NATS on a port it picked
    serve.start().wait_for("/health/ready", 200)
    env = environment(MODELREG_DATA_DIR=str(serve.data_dir))

    # when the audit follows from the start: it finds that NATS and prints the first event,
    # the admin token issued at first start, once the relay published it
    follower = subprocess.Popen(
        [sys.executable, "-m", "service", "audit", "follow", "--from-start", "--json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        ready, _, _ = select.select([follower.stdout], [], [], 60)
        assert ready, "audit follow printed nothing in 60 s"
        first = json.loads(follower.stdout.readline())
    finally:
        follower.send_signal(signal.SIGTERM)
        _, stderr = follower.communicate(timeout=30)
    assert follower.returncode == 0, stderr
    assert first["log_position"] == 1
    assert first["event"]["event_type"] == "token.issued"

    # and a mirror, the store's verification and the views' status all reach the registry
    mirror = modelreg(env, "audit", "mirror", str(serve.data_dir.parent / "a.jsonl"), "--once")
    assert mirror.returncode == 0, mirror.stderr
    assert "verified through log position" in mirror.stderr
    verified = modelreg(env, "audit", "verify", "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["ok"] is True
    status = modelreg(env, "projections", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert {row["projection"] for row in json.loads(status.stdout)} == {
        p.name for p in all_projections()
    }

    assert serve.interrupt() == 0
