"""Leadership is a lease: a leader frozen with SIGSTOP loses the role to a standby within a
bounded time, and when it wakes up it is fenced: nothing it writes reaches the database.
Real processes (tests.support.leader_process) and a real Postgres."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.database import Database
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
LEASE = 1.0


class Competitor:
    """One leader_process child and the lines it printed."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode().strip())

    def said(self, word: str) -> int:
        return self.lines.count(word)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


@pytest.fixture
async def start(db: Database) -> AsyncIterator[Callable[[str], Awaitable[Competitor]]]:
    admin = await db.admin()
    await admin.execute(
        "CREATE TABLE leader_writes (n bigint GENERATED ALWAYS AS IDENTITY, holder text NOT NULL)"
    )
    await admin.execute(f"GRANT SELECT, INSERT ON leader_writes TO {db.app_role}")
    started: list[Competitor] = []

    async def launch(name: str) -> Competitor:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.leader_process",
            db.url,
            db.schema,
            db.app_role,
            f"{name}-{db.schema}",
            str(LEASE),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        competitor = Competitor(f"{name}-{db.schema}", proc)
        started.append(competitor)
        return competitor

    try:
        yield launch
    finally:
        for competitor in started:
            await competitor.stop()


async def writes_by(db: Database, holder: str) -> list[int]:
    rows = await db.pool.fetch("SELECT n FROM leader_writes WHERE holder = $1 ORDER BY n", holder)
    return [r["n"] for r in rows]


def more_writes_by(db: Database, holder: str, than: int = 0) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(await writes_by(db, holder)) > than

    return check


def printed(competitor: Competitor, word: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return competitor.said(word) > 0

    return check


async def test_a_frozen_leader_loses_the_role_and_is_fenced_when_it_wakes(
    db: Database, start: Callable[[str], Awaitable[Competitor]]
) -> None:
    # given a leader writing under the role, and a standby
    first = await start("first")
    await eventually(more_writes_by(db, first.name), what="first writes", timeout=30.0)
    second = await start("second")

    # when the leader is frozen
    first.proc.send_signal(signal.SIGSTOP)

    # then the standby takes the role and writes: the lease ran out on Postgres' side
    await eventually(more_writes_by(db, second.name), what="second takes over", timeout=30.0)
    taken_over_at = (await writes_by(db, second.name))[0]

    # when the frozen leader wakes up
    first.proc.send_signal(signal.SIGCONT)
    await eventually(printed(first, "lost"), what="first notices it lost the role", timeout=30.0)

    # then nothing it did after waking reached the database
    assert max(await writes_by(db, first.name)) < taken_over_at
    # and the standby still leads and writes
    written = len(await writes_by(db, second.name))
    await eventually(
        more_writes_by(db, second.name, written), what="second keeps writing", timeout=30.0
    )
    assert second.said("lost") == 0
    assert max(await writes_by(db, first.name)) < taken_over_at
