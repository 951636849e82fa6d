"""Singleton roles (sealer, relay, projection leaders): lead while holding the role, stand
by otherwise. I/O: Postgres.

``Leadership.run`` is the one loop every singleton role runs: connect, try to take the
role, and while it is held call the role's ``lead(term)``; when it is not, wait and try
again; on a lost connection, reconnect and compete again. The role only says what to do
while leading, and stops when ``term.ended`` is set.

How a role is held lives here and nowhere else (``try_hold``, ``give_up``, ``_hold_as_lease``
and the termination watch in ``Leadership._lead``). It is a session advisory lock on
``hashtextextended(key, 0)``, made a lease: the leader's session carries
``idle_session_timeout`` and ``idle_in_transaction_session_timeout`` of ``lease`` seconds
and TCP keepalive and user timeouts of the same order, so Postgres itself ends the session
of a leader that stops talking to it (frozen by SIGSTOP, stuck, or cut off by a network
partition) and the lock goes with it; a standby takes the role within ``lease`` plus its
``standby_interval``. A healthy leader talks to its session far more often than that (every
role polls in well under a second, and the relay waits at most a few seconds for NATS); one
that stays silent longer only loses the role and competes again.

Fencing: the session is the fencing token. A role writes only on ``term.conn``, the session
that holds the lock, so each write transaction runs under the lock or not at all. A stale
leader that wakes up finds its session gone: its first statement fails and its term ends,
before anything it meant to write reaches the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from eventlog.connections import CONNECTION_ERRORS, close_quietly
from eventlog.waiting import sleep_or_stop

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


@dataclass(frozen=True, slots=True)
class Term:
    """One stretch of leadership: the session the role is held on, and when it ends.

    ``ended`` is set when the owner stops the loop or the role is lost (its session
    closed); a role leads until then and returns.
    """

    conn: asyncpg.Connection
    ended: asyncio.Event


Lead = Callable[[Term], Awaitable[None]]

# How long a leader may stay silent on its session before Postgres ends it (and the role).
DEFAULT_LEASE = 15.0


async def try_hold(conn: asyncpg.Connection, key: str) -> bool:
    """Take the role named ``key`` on this session if nobody holds it; never waits.

    Also for one-off holders (the CLI's rebuild, which takes a projection's role), so a
    change of how roles are held reaches them too.
    """
    held: bool = await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key)
    return held


async def give_up(conn: asyncpg.Connection, key: str) -> None:
    """Release a role taken by ``try_hold`` while keeping the session (closing it also does)."""
    await conn.fetchval("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)


class Leadership:
    """Competes for one role (``key``) for as long as ``run`` runs.

    ``is_leader`` is true exactly while ``lead`` runs. Errors in ``CONNECTION_ERRORS`` and
    ``stand_down_on`` (a role's own "someone else leads" signals, such as a checkpoint
    moved by another instance) end the term: the session is closed, so the role is free,
    and after ``standby_interval`` this instance competes again. Any other error ends
    ``run``.
    """

    def __init__(
        self,
        connect: Connect,
        key: str,
        *,
        role: str,
        standby_interval: float = 1.0,
        stand_down_on: tuple[type[BaseException], ...] = (),
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self._connect = connect
        self.key = key
        self.role = role
        self.standby_interval = standby_interval
        self.lease = lease
        self._stand_down_on = stand_down_on
        self.is_leader = False

    async def run(self, lead: Lead, stop: asyncio.Event) -> None:
        """Lead when the role is free, stand by otherwise; return when ``stop`` is set."""
        while not stop.is_set():
            try:
                await self._term(lead, stop)
            except self._stand_down_on as exc:
                log.warning("%s: %s; standing by", self.role, exc)
                await sleep_or_stop(stop, self.standby_interval)
            except CONNECTION_ERRORS as exc:
                log.warning("%s: %s; reconnecting", self.role, str(exc) or type(exc).__name__)
                await sleep_or_stop(stop, self.standby_interval)

    async def _term(self, lead: Lead, stop: asyncio.Event) -> None:
        conn = await self._connect()
        try:
            if await try_hold(conn, self.key):
                await _hold_as_lease(conn, self.lease)
                await self._lead(conn, lead, stop)
        finally:
            await close_quietly(conn)
        # Led or not, wait before competing again: a leader that just lost its role leaves
        # the standbys time to take it, and a standby does not hammer the database.
        await sleep_or_stop(stop, self.standby_interval)

    async def _lead(self, conn: asyncpg.Connection, lead: Lead, stop: asyncio.Event) -> None:
        ended = asyncio.Event()
        # The role dies with its session: end the term at once rather than when the role's
        # next statement fails, which may be a poll interval away.
        conn.add_termination_listener(lambda _: ended.set())
        forward = asyncio.create_task(_set_when(stop, ended), name=f"{self.role}: stop")
        self.is_leader = True
        log.info("%s: leading (%s)", self.role, self.key)
        try:
            await lead(Term(conn, ended))
        finally:
            self.is_leader = False
            forward.cancel()
        if not stop.is_set():
            log.warning("%s: lost the role; standing by", self.role)


async def _hold_as_lease(conn: asyncpg.Connection, lease: float) -> None:
    """Let Postgres end this session, and so release the role, when its holder goes silent
    for ``lease`` seconds: idle between statements, idle inside a transaction, or gone from
    the network (keepalive probes, and unacknowledged data, time out)."""
    ms = max(1, int(lease * 1000))
    probe = max(1, int(lease / 3))
    await conn.execute(
        f"SET idle_session_timeout = {ms};"
        f" SET idle_in_transaction_session_timeout = {ms};"
        f" SET tcp_keepalives_idle = {probe}; SET tcp_keepalives_interval = {probe};"
        " SET tcp_keepalives_count = 3;"
        f" SET tcp_user_timeout = {ms}"
    )


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
