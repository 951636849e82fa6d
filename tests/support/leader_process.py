"""Run one competitor for a role as its own process, for SIGSTOP tests.

    python -m tests.support.leader_process DATABASE_URL SCHEMA APP_ROLE NAME LEASE

While it leads it inserts a row ``(holder = NAME)`` into ``leader_writes`` on the role's
session every 50 ms, as a role writes. Prints ``leading`` when a term starts and ``lost``
when it ends; runs until SIGTERM (or until it is killed).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import asyncpg

from eventlog.db import connect, lock_key
from eventlog.leadership import Leadership, Term
from eventlog.waiting import sleep_or_stop


async def main(database_url: str, schema: str, app_role: str, name: str, lease: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def connect_db() -> asyncpg.Connection:
        return await connect(database_url, schema=schema, app_role=app_role, name=name)

    async def lead(term: Term) -> None:
        print("leading", flush=True)
        try:
            while not term.ended.is_set():
                await term.conn.execute("INSERT INTO leader_writes (holder) VALUES ($1)", name)
                await sleep_or_stop(term.ended, 0.05)
        finally:
            print("lost", flush=True)

    leadership = Leadership(
        connect_db,
        lock_key(schema, "sigstop-role"),
        role=name,
        standby_interval=0.1,
        lease=float(lease),
    )
    await leadership.run(lead, stop)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
